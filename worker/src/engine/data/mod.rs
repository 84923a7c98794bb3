//! Training data: JSONL records, tokenization with loss masks, deterministic shuffling and
//! padding-aware batching.

pub mod batch;
pub mod chat;
pub mod classify;
pub mod jsonl;
pub mod loader;
pub mod preference;
pub mod template;
pub mod tokenizer;

pub use batch::Batch;
pub use classify::{ClassBatch, ClassExample, Labels};
pub use jsonl::{Format, Record};
pub use loader::{Cursor, Loader};
pub use preference::{PairBatch, PairExample, pairs_from_records};
pub use template::{ChatTemplate, Message};
pub use tokenizer::{ByteTokenizer, HfTokenizer, Tokenizer, TokenizerError, load_for_model};

/// Examples that a [`Loader`] can collate into a padded batch.
pub trait Batchable: Sized {
    type Batch;
    /// `prompt_weight`: the loss weight of tokens that are not targets (see
    /// [`Batch::weighted`]); examples without such tokens ignore it.
    fn collate(
        examples: &[&Self],
        pad_id: u32,
        prompt_weight: f32,
        device: &candle_core::Device,
    ) -> Result<Self::Batch, DataError>;
}

impl Batchable for Example {
    type Batch = Batch;

    fn collate(
        examples: &[&Self],
        pad_id: u32,
        prompt_weight: f32,
        device: &candle_core::Device,
    ) -> Result<Batch, DataError> {
        Batch::weighted(examples, pad_id, prompt_weight, device)
    }
}

/// A tokenized training example. `targets[i]` says whether token `i` is predicted (counts
/// in the loss); the first token is never a target since nothing precedes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub targets: Vec<bool>,
}

impl Example {
    /// Tokenizes a record: every token of `{"text"}` is a target; for
    /// `{"prompt","completion"}` only completion tokens (and EOS) are; for chats only the
    /// assistant turns (see [`chat::encode_chat`]). Truncates to `max_len` tokens, keeping
    /// the start.
    ///
    /// A chat that cannot be encoded (no assistant turn, a template that is not
    /// incremental) yields an example without targets; use [`Self::try_from_record`] or
    /// [`examples_from_records`] to get that as an error instead. A classification record
    /// is treated as prompt = text, completion = label.
    pub fn from_record(record: &Record, tok: &dyn Tokenizer, max_len: usize) -> Self {
        match Self::try_from_record(record, tok, max_len) {
            Ok(e) => e,
            Err(_) => Self {
                ids: tok.encode("").into_iter().take(max_len).collect(),
                targets: Vec::new(),
            }
            .fix_lengths(),
        }
    }

    /// Pads `targets` with `false` to the length of `ids` (keeps the invariant).
    fn fix_lengths(mut self) -> Self {
        self.targets.resize(self.ids.len(), false);
        self
    }

    /// [`Self::from_record`], reporting records that cannot be encoded.
    pub fn try_from_record(
        record: &Record,
        tok: &dyn Tokenizer,
        max_len: usize,
    ) -> Result<Self, String> {
        if let Record::Chat { messages } = record {
            let (mut ids, mut targets) = chat::encode_chat(messages, tok)?;
            ids.truncate(max_len);
            targets.truncate(max_len);
            if let Some(first) = targets.first_mut() {
                *first = false;
            }
            return Ok(Self { ids, targets });
        }
        let (mut ids, mut targets) = match record {
            Record::Text { text } => {
                let ids = tok.encode(text);
                let targets = vec![true; ids.len()];
                (ids, targets)
            }
            Record::PromptCompletion { prompt, completion }
            | Record::Classification {
                text: prompt,
                label: completion,
            } => {
                let p = tok.encode(prompt);
                let c = tok.encode(completion);
                let mut targets = vec![false; p.len()];
                targets.extend(std::iter::repeat_n(true, c.len()));
                let mut ids = p;
                ids.extend(c);
                (ids, targets)
            }
            Record::Chat { .. } => (Vec::new(), Vec::new()),
            Record::Preference { .. } => {
                return Err("a preference line is a pair of examples (task = preference)".into());
            }
        };
        if let Some(eos) = tok.eos_id() {
            ids.push(eos);
            targets.push(true);
        }
        if let Some(bos) = tok.bos_id() {
            ids.insert(0, bos);
            targets.insert(0, false);
        }
        ids.truncate(max_len);
        targets.truncate(max_len);
        if let Some(first) = targets.first_mut() {
            *first = false;
        }
        Ok(Self { ids, targets })
    }

    pub fn num_targets(&self) -> usize {
        self.targets.iter().filter(|t| **t).count()
    }
}

/// Tokenizes numbered records (from [`jsonl::parse_numbered`]/[`jsonl::read_numbered`]);
/// a record that cannot be encoded or has no target token left after truncation is an
/// error naming its line.
pub fn examples_from_records(
    records: &[(usize, Record)],
    tok: &dyn Tokenizer,
    max_len: usize,
) -> Result<Vec<Example>, DataError> {
    records
        .iter()
        .map(|(line, r)| {
            let e =
                Example::try_from_record(r, tok, max_len).map_err(|reason| DataError::Line {
                    line: *line,
                    reason,
                })?;
            if e.num_targets() == 0 {
                return Err(DataError::Line {
                    line: *line,
                    reason: format!(
                        "no token left to train on after truncation to {max_len} tokens"
                    ),
                });
            }
            Ok(e)
        })
        .collect()
}

/// Bad training data, always with the 1-based line number of the offending record.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("cannot read dataset {path}: {reason}")]
    Io {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("dataset has no records")]
    Empty,
    #[error("building batch tensors: {0}")]
    Candle(#[from] candle_core::Error),
}
