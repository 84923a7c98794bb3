//! Our Llama forward against candle-transformers' inference implementation on the same
//! weights, plus loader error reporting.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::llama as ct;

use super::util::{max_abs_diff, random_ids};
use crate::engine::adapters::Mode;
use crate::engine::model::tiny::TinySpec;
use crate::engine::model::{Llama, ModelError, WeightError};

fn check_against_candle(spec: &TinySpec, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    spec.write(dir.path(), seed).unwrap();
    let dev = Device::Cpu;
    let ours = Llama::from_dir(dir.path(), DType::F32, &dev).unwrap();

    let cfg_text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let ct_cfg: ct::LlamaConfig = serde_json::from_str(&cfg_text).unwrap();
    let ct_cfg = ct_cfg.into_config(false);
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let vb = candle_nn::VarBuilder::from_buffered_safetensors(bytes, DType::F32, &dev).unwrap();
    let theirs = ct::Llama::load(vb, &ct_cfg).unwrap();

    let ids = random_ids(2, 11, spec.vocab, seed + 1);
    let all = ours.forward(&ids, &Mode::Eval).unwrap();
    assert_eq!(all.dims(), &[2, 11, spec.vocab]);
    for row in 0..2 {
        let mut cache = ct::Cache::new(false, DType::F32, &ct_cfg, &dev).unwrap();
        let row_ids = ids.i(row..row + 1).unwrap();
        let expected = theirs.forward(&row_ids, 0, &mut cache).unwrap(); // [1, vocab]
        let got = all.i((row..row + 1, 10)).unwrap();
        let diff = max_abs_diff(&got, &expected);
        assert!(diff < 1e-4, "row {row}: max abs diff {diff}");
    }
}

#[test]
fn llama_matches_candle_transformers_untied_gqa() {
    check_against_candle(&TinySpec::default(), 11);
}

#[test]
fn llama_matches_candle_transformers_tied_mha_theta() {
    let spec = TinySpec {
        tie_embeddings: true,
        kv_heads: 4,
        rope_theta: 100_000.0,
        hidden: 48,
        ..TinySpec::default()
    };
    check_against_candle(&spec, 12);
}

#[test]
fn missing_tensor_is_named() {
    let spec = TinySpec::default();
    let mut tensors: std::collections::HashMap<String, Tensor> =
        spec.weights(1).unwrap().into_iter().collect();
    tensors.remove("model.layers.1.mlp.up_proj.weight");
    let w = crate::engine::model::Weights::from_tensors(tensors, DType::F32, &Device::Cpu);
    let err = Llama::load(spec.config(), &w).unwrap_err();
    assert!(
        matches!(&err, ModelError::Weights(WeightError::Missing(n)) if n == "model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    spec.write(dir.path(), 1).unwrap();
    // Same files, but a config that claims a bigger MLP.
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let cfg = cfg.replace("\"intermediate_size\": 64", "\"intermediate_size\": 72");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let err = Llama::from_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("model.layers.0.mlp.gate_proj.weight") && msg.contains("[64, 32]"),
        "{msg}"
    );
}

#[test]
fn malformed_config_and_missing_weights_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 32,").unwrap();
    let err = Llama::from_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");

    TinySpec::default().write(dir.path(), 1).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = Llama::from_dir(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, ModelError::Weights(WeightError::NoWeights(_))),
        "{err}"
    );
}
