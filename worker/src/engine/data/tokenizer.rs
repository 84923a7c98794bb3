//! The tokenizer interface the data pipeline needs, and a byte-level stand-in used until a
//! real `tokenizer.json` tokenizer is wired in.

/// Text → token ids, plus the special ids the pipeline inserts.
pub trait Tokenizer: Send + Sync {
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
