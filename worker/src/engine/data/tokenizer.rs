//! The tokenizer interface the data pipeline needs, a byte-level stand-in, and the real
//! HF tokenizer (`tokenizer.json` through the `tokenizers` crate) with its chat template.
//!
//! Pick one for a model folder with [`load_for_model`]: it uses `tokenizer.json` when the
//! folder has one and falls back to [`ByteTokenizer`] otherwise.

use std::path::{Path, PathBuf};

use super::template::ChatTemplate;

/// Text → token ids, plus the special ids the pipeline inserts.
pub trait Tokenizer: Send + Sync {
    /// Plain text → ids, without special tokens added by a post-processor (the pipeline
    /// adds BOS/EOS itself). Special-token *text* in the input (`<|im_end|>`) is still
    /// recognised as that token, as HF does.
    fn encode(&self, text: &str) -> Vec<u32>;
    fn vocab_size(&self) -> usize;
    fn bos_id(&self) -> Option<u32> {
        None
    }
    fn eos_id(&self) -> Option<u32> {
        None
    }
    /// Id used to fill padded positions (they are never attended to by real tokens nor
    /// counted in the loss, so its value only has to be a valid id).
    fn pad_id(&self) -> u32 {
        0
    }
    /// Ids with the tokenizer's own special-token template applied (`[CLS] … [SEP]` for
    /// BERT); what encoder models expect. Defaults to [`Self::encode`].
    fn encode_with_special(&self, text: &str) -> Vec<u32> {
        self.encode(text)
    }
    /// The model's chat template, when its tokenizer files ship one (else ChatML is used).
    fn chat_template(&self) -> Option<&ChatTemplate> {
        None
    }
}

/// Byte-level tokenizer: token id = UTF-8 byte value (vocab 256, no special tokens). For
/// tests and tiny generated models only; it is not the tokenizer of any real checkpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteTokenizer;

impl Tokenizer for ByteTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    fn vocab_size(&self) -> usize {
        256
    }
}

/// A tokenizer file that cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read tokenizer file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("malformed tokenizer file {path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("chat template of {path}: {reason}")]
    Template { path: PathBuf, reason: String },
    #[error("building tokenizer: {0}")]
    Build(String),
}

/// An HF tokenizer (`tokenizer.json`), with special tokens and chat template taken from
/// `tokenizer_config.json` / `chat_template.jinja` when present.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: u32,
    chat: Option<ChatTemplate>,
}

impl HfTokenizer {
    /// Loads `dir/tokenizer.json` plus the optional `tokenizer_config.json` and
    /// `chat_template.jinja` next to it.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
            if path.is_file() {
                TokenizerError::Format {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            } else {
                TokenizerError::Read {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            }
        })?;
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path).map_err(|e| TokenizerError::Read {
                path: config_path.clone(),
                reason: e.to_string(),
            })?;
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                TokenizerError::Format {
                    path: config_path.clone(),
                    reason: e.to_string(),
                }
            })?
        } else {
            serde_json::Value::Null
        };
        let token = |key: &str| -> Option<String> {
            match config.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                v => v.get("content")?.as_str().map(String::from),
            }
        };
        let jinja = dir.join("chat_template.jinja");
        let template_src = if jinja.is_file() {
            Some(
                std::fs::read_to_string(&jinja).map_err(|e| TokenizerError::Read {
                    path: jinja.clone(),
                    reason: e.to_string(),
                })?,
            )
        } else {
            template_from_config(&config)
        };
        Self::from_parts(
            inner,
            token("bos_token").as_deref(),
            token("eos_token").as_deref(),
            token("pad_token").as_deref(),
            template_src,
        )
        .map_err(|e| match e {
            TokenizerError::Build(reason) => TokenizerError::Template {
                path: config_path,
                reason,
            },
            other => other,
        })
    }

    /// Wraps an in-memory tokenizer (e.g. one built from GGUF metadata). Special tokens
    /// are given as text and looked up in the vocabulary; a chat template that does not
    /// compile or render is an error now rather than on the first record.
    pub fn from_parts(
        mut inner: tokenizers::Tokenizer,
        bos: Option<&str>,
        eos: Option<&str>,
        pad: Option<&str>,
        chat_template: Option<String>,
    ) -> Result<Self, TokenizerError> {
        // Batching pads and truncates itself; a tokenizer.json that pads every text to 128
        // (sentence-transformers ship such files) would hide the real length.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let id = |t: Option<&str>| t.and_then(|t| inner.token_to_id(t));
        let (bos_id, eos_id) = (id(bos), id(eos));
        // Prepend BOS only where the tokenizer's own post-processor does (Llama-2/3 do,
        // SmolLM2/Qwen do not even though they name a bos_token).
        let adds_bos = match (bos_id, inner.encode("a", true), inner.encode("a", false)) {
            (Some(b), Ok(with), Ok(without)) => {
                with.get_ids().first() == Some(&b) && without.get_ids().first() != Some(&b)
            }
            _ => false,
        };
        let chat = match chat_template {
            Some(src) => Some(
                ChatTemplate::new(&src, bos.unwrap_or_default(), eos.unwrap_or_default())
                    .map_err(TokenizerError::Build)?,
            ),
            None => None,
        };
        let vocab_size = inner.get_vocab_size(true);
        let pad = id(pad).or(eos_id).unwrap_or(0);
        Ok(Self {
            inner,
            vocab_size,
            bos: bos_id.filter(|_| adds_bos),
            eos: eos_id,
            pad,
            chat,
        })
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Id of a token given as text, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids → text (special tokens kept), for debugging and tests.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }
}

/// `chat_template` from `tokenizer_config.json`: a string, or a list of named templates
/// of which `default` is used.
fn template_from_config(config: &serde_json::Value) -> Option<String> {
    match config.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template")?.as_str().map(String::from)),
        _ => None,
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        // Encoding only fails on internal tokenizer errors (e.g. a broken model); an empty
        // result then surfaces as an example without targets rather than a panic.
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    fn encode_with_special(&self, text: &str) -> Vec<u32> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    fn pad_id(&self) -> u32 {
        self.pad
    }

    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }
}

/// The tokenizer for a model folder: [`HfTokenizer`] from `dir/tokenizer.json` when that
/// file exists, otherwise the [`ByteTokenizer`] stand-in (tiny test models written before
/// tokenizers existed). A `tokenizer.json` that exists but is broken is an error, never a
/// silent fallback.
pub fn load_for_model(dir: &Path) -> Result<Box<dyn Tokenizer>, TokenizerError> {
    if dir.join("tokenizer.json").is_file() {
        Ok(Box::new(HfTokenizer::from_dir(dir)?))
    } else {
        Ok(Box::new(ByteTokenizer))
    }
}

/// GPT-2's byte → printable-char map used by byte-level BPE vocabularies.
pub fn byte_level_alphabet() -> Vec<char> {
    let printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut out = vec!['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        out[b as usize] = char::from_u32(c).unwrap_or('?');
    }
    out
}

/// Special tokens of the generated tiny tokenizer, in id order after the 256 bytes.
pub const TINY_SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Merges of the generated tiny tokenizer (byte-level strings, `Ġ` = space).
const TINY_MERGES: [(&str, &str); 12] = [
    ("h", "e"),
    ("t", "he"),
    ("Ġ", "t"),
    ("Ġt", "he"),
    ("i", "n"),
    ("a", "n"),
    ("e", "r"),
    ("o", "n"),
    ("Ġ", "a"),
    ("r", "e"),
    ("i", "s"),
    ("Ġ", "s"),
];

/// The minimum vocabulary size a tiny model needs for [`tiny_tokenizer_json`].
pub const TINY_TOKENIZER_VOCAB: usize = 256 + TINY_SPECIAL_TOKENS.len() + TINY_MERGES.len();

/// A deterministic byte-level BPE `tokenizer.json` (GPT-2 style: 256 byte tokens, the
/// specials of [`TINY_SPECIAL_TOKENS`], a dozen fixed merges) built in code, so tiny test
/// models go through the real `tokenizers` pipeline. Ids: bytes 0–255 in byte order,
/// specials 256–258, merges after.
pub fn tiny_tokenizer_json() -> serde_json::Value {
    let alphabet = byte_level_alphabet();
    let mut vocab = serde_json::Map::new();
    for (b, c) in alphabet.iter().enumerate() {
        vocab.insert(c.to_string(), serde_json::json!(b));
    }
    let mut next = 256;
    let mut added = Vec::new();
    for s in TINY_SPECIAL_TOKENS {
        vocab.insert(s.to_string(), serde_json::json!(next));
        added.push(serde_json::json!({
            "id": next, "content": s, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
        next += 1;
    }
    let mut merges = Vec::new();
    for (a, b) in TINY_MERGES {
        vocab.insert(format!("{a}{b}"), serde_json::json!(next));
        merges.push(format!("{a} {b}"));
        next += 1;
    }
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    })
}

/// `tokenizer_config.json` for the tiny tokenizer: ChatML special tokens and template.
pub fn tiny_tokenizer_config() -> serde_json::Value {
    serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": null,
        "model_max_length": 2048,
        "chat_template": super::template::CHATML_TEMPLATE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer.json"),
            serde_json::to_string(&tiny_tokenizer_json()).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            serde_json::to_string(&tiny_tokenizer_config()).unwrap(),
        )
        .unwrap();
        dir
    }

    #[test]
    fn tiny_tokenizer_round_trips_and_merges() {
        let dir = tiny_dir();
        let tok = HfTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.vocab_size(), TINY_TOKENIZER_VOCAB);
        let ids = tok.encode("the cat");
        // "the" is one merged token, " " + "c" ... bytes.
        assert_eq!(tok.decode(&ids), "the cat");
        assert!(ids.len() < "the cat".len(), "{ids:?}");
        assert!(ids.iter().all(|&i| (i as usize) < TINY_TOKENIZER_VOCAB));
        // Special-token text maps to the special id.
        let im = tok.encode("<|im_end|>");
        assert_eq!(im, vec![258]);
        assert_eq!(tok.eos_id(), Some(258));
        assert_eq!(tok.bos_id(), None, "byte-level post-processor adds no BOS");
        assert_eq!(tok.pad_id(), 256);
        assert!(tok.chat_template().is_some());
        // Non-ASCII goes through the byte alphabet.
        assert_eq!(tok.decode(&tok.encode("é→")), "é→");
    }

    #[test]
    fn load_for_model_picks_the_file_or_the_byte_fallback() {
        let dir = tiny_dir();
        assert_eq!(
            load_for_model(dir.path()).unwrap().vocab_size(),
            TINY_TOKENIZER_VOCAB
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(load_for_model(empty.path()).unwrap().vocab_size(), 256);
        std::fs::write(empty.path().join("tokenizer.json"), "{not json").unwrap();
        let err = load_for_model(empty.path()).err().unwrap().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }
}
