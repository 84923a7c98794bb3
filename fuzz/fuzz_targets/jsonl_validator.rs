//! The streaming JSONL validator (`tuna_server::dataset::JsonlValidator`) on arbitrary bytes,
//! for every declared format and for auto-detection.
//!
//! Checks: no panic; the verdict does not depend on how the upload was split into chunks
//! (the whole body in one `feed` and the same body in arbitrary splits, empty chunks
//! included, agree exactly, error line numbers too); an accepted dataset has exactly one
//! record per line and the format that was asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuna_server::dataset::{DatasetError, JsonlValidator};
use tuna_server::domain::DatasetFormat;

fn validate(
    format: Option<DatasetFormat>,
    chunks: &[&[u8]],
) -> Result<(DatasetFormat, u64), DatasetError> {
    let mut v = JsonlValidator::new(format);
    for c in chunks {
        v.feed(c)?;
    }
    v.finish()
}

/// Splits `body` into chunks whose sizes (0 to 64 bytes, so empty chunks too) come from a
/// small xorshift seeded by `seed`.
fn split(body: &[u8], seed: u32) -> Vec<&[u8]> {
    let mut x = seed | 1;
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (x % 65) as usize;
        let (head, tail) = rest.split_at(n.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (seed, body) = data.split_at(2);
    let seed = u32::from(u16::from_le_bytes([seed[0], seed[1]]));
    let chunks = split(body, seed);
    let mut formats = vec![None];
    formats.extend(DatasetFormat::ALL.iter().copied().map(Some));
    for format in formats {
        let whole = validate(format, &[body]);
        let chunked = validate(format, &chunks);
        assert_eq!(whole, chunked, "the verdict depends on the chunking ({format:?})");
        if let Ok((found, records)) = whole {
            if let Some(asked) = format {
                assert_eq!(found, asked, "accepted in another format than asked");
            }
            let lines = body.strip_suffix(b"\n").unwrap_or(body).split(|&b| b == b'\n').count();
            assert_eq!(records, lines as u64, "an accepted dataset has one record per line");
        }
    }
});
