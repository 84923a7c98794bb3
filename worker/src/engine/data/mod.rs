//! Training data: JSONL records, tokenization with loss masks, deterministic shuffling and
//! padding-aware batching.

pub mod batch;
pub mod jsonl;
pub mod loader;
pub mod tokenizer;

pub use batch::Batch;
pub use jsonl::{Format, Record};
pub use loader::{Cursor, Loader};
pub use tokenizer::{ByteTokenizer, Tokenizer};

/// A tokenized training example. `targets[i]` says whether token `i` is predicted (counts
/// in the loss); the first token is never a target since nothing precedes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub targets: Vec<bool>,
}

impl Example {
    /// Tokenizes a record: every token of `{"text"}` is a target; for
    /// `{"prompt","completion"}` only completion tokens (and EOS) are. Truncates to
    /// `max_len` tokens, keeping the start.
    pub fn from_record(record: &Record, tok: &dyn Tokenizer, max_len: usize) -> Self {
        let (mut ids, mut targets) = match record {
            Record::Text { text } => {
                let ids = tok.encode(text);
                let targets = vec![true; ids.len()];
                (ids, targets)
            }
            Record::PromptCompletion { prompt, completion } => {
                let p = tok.encode(prompt);
                let c = tok.encode(completion);
                let mut targets = vec![false; p.len()];
                targets.extend(std::iter::repeat_n(true, c.len()));
                let mut ids = p;
                ids.extend(c);
                (ids, targets)
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
        Self { ids, targets }
    }

    pub fn num_targets(&self) -> usize {
        self.targets.iter().filter(|t| **t).count()
    }
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
