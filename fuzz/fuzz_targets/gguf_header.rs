//! The worker's GGUF reader (`tuna_worker::engine::model::gguf::read`: header, metadata,
//! tensor infos, tensors, config and tokenizer) on arbitrary bytes as a `.gguf` file.
//!
//! Checks: no panic, no unbounded allocation (libFuzzer's `-rss_limit_mb` /
//! `-malloc_limit_mb`) and no hang on any file: a bad file is an error.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;
use tuna_worker::engine::model::gguf;

fn path() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("model.gguf");
        (d, p)
    });
    p
}

fuzz_target!(|data: &[u8]| {
    let p = path();
    std::fs::write(p, data).expect("write gguf");
    let _ = gguf::read(p, DType::F32, &Device::Cpu);
});
