//! GGUF import: a tiny model written as GGUF (Q/K permuted like llama.cpp) loads back to
//! the same logits as the safetensors folder, with the same tokenizer.

use candle_core::{DType, Device};

use super::util::{max_abs_diff, random_ids};
use crate::engine::adapters::Mode;
use crate::engine::data::{HfTokenizer, Tokenizer};
use crate::engine::model::tiny::TinySpec;
use crate::engine::model::{Llama, ModelError, gguf};

#[test]
fn tiny_gguf_loads_to_the_same_logits_and_tokenizer() {
    for spec in [
        TinySpec::default(),
        TinySpec {
            tie_embeddings: true,
            kv_heads: 4,
            rope_theta: 100_000.0,
            ..TinySpec::default()
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        spec.write(dir.path(), 31).unwrap();
        let path = dir.path().join("model.gguf");
        gguf::write_tiny(&spec, 31, &path).unwrap();
        let hf = Llama::from_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
        let loaded = gguf::read(&path, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(loaded.config.tie_word_embeddings, spec.tie_embeddings);
        assert_eq!(loaded.config.rms_norm_eps, 1e-5);
        let tok = loaded.tokenizer.expect("tokenizer from GGUF metadata");
        let ours = Llama::load(loaded.config, &loaded.weights).unwrap();
        let ids = random_ids(2, 9, spec.vocab, 5);
        let a = hf.forward(&ids, &Mode::Eval).unwrap();
        let b = ours.forward(&ids, &Mode::Eval).unwrap();
        let diff = max_abs_diff(&a, &b);
        assert!(diff < 1e-5, "logits differ by {diff}");

        let file_tok = HfTokenizer::from_dir(dir.path()).unwrap();
        for text in [
            "the cat is on the mat",
            "<|im_start|>user\nhi 123<|im_end|>",
            "é→ x",
        ] {
            assert_eq!(tok.encode(text), file_tok.encode(text), "{text:?}");
        }
        assert_eq!(tok.eos_id(), file_tok.eos_id());
        assert!(tok.chat_template().is_some());
        assert!(Llama::from_gguf(&path, DType::F32, &Device::Cpu).is_ok());
    }
}

#[test]
fn bad_gguf_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, b"not a gguf").unwrap();
    let err = Llama::from_gguf(&path, DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelError::Gguf(_)));
    assert!(err.to_string().contains("broken.gguf"), "{err}");
    let missing = Llama::from_gguf(&dir.path().join("nope.gguf"), DType::F32, &Device::Cpu);
    assert!(missing.unwrap_err().to_string().contains("nope.gguf"));
}
