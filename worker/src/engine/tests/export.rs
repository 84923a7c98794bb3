//! PEFT export format, re-loading, and merged-model export.

use candle_core::{DType, Device};

use super::util::{max_abs_diff, perturb_b, random_ids, tiny_model};
use crate::engine::adapters::set::unmerge_all;
use crate::engine::adapters::{AdapterConfig, AdapterSet, Mode, TargetModules};
use crate::engine::export::{
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, CAUSAL_LM, load_adapter, save_adapter, save_merged,
};
use crate::engine::model::Llama;
use crate::engine::model::tiny::TinySpec;

fn trained_like(spec: &TinySpec, cfg: &AdapterConfig) -> (Llama, AdapterSet) {
    let mut model = tiny_model(spec, 31, DType::F32);
    let set = AdapterSet::attach(&mut model, cfg).unwrap();
    perturb_b(&set, 4); // stands in for training: B ≠ 0 so the adapter matters
    for (k, v) in set.vars() {
        if k.ends_with("lora_magnitude_vector") {
            v.set(&(v.as_tensor() * 0.9).unwrap()).unwrap();
        }
    }
    (model, set)
}

#[test]
fn exported_adapter_follows_peft_format() {
    let spec = TinySpec::default();
    let cfg = AdapterConfig {
        use_dora: true,
        use_rslora: true,
        ..AdapterConfig::lora(4, 16.0, TargetModules::all_linear())
    };
    let (_model, set) = trained_like(&spec, &cfg);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(dir.path(), &set, "tiny/llama", CAUSAL_LM).unwrap();

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG)).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 16);
    assert_eq!(config["use_rslora"], true);
    assert_eq!(config["use_dora"], true);
    assert_eq!(config["base_model_name_or_path"], "tiny/llama");
    assert_eq!(
        config["target_modules"],
        serde_json::json!([
            "down_proj",
            "gate_proj",
            "k_proj",
            "o_proj",
            "q_proj",
            "up_proj",
            "v_proj"
        ])
    );

    let bytes = std::fs::read(dir.path().join(ADAPTER_WEIGHTS)).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shape = |k: &str| st.tensor(k).unwrap().shape().to_vec();
    let p = "base_model.model.model.layers.1";
    assert_eq!(
        shape(&format!("{p}.self_attn.k_proj.lora_A.weight")),
        vec![4, 32]
    );
    assert_eq!(
        shape(&format!("{p}.self_attn.k_proj.lora_B.weight")),
        vec![16, 4]
    );
    assert_eq!(
        shape(&format!("{p}.self_attn.k_proj.lora_magnitude_vector")),
        vec![16]
    );
    assert_eq!(
        shape(&format!("{p}.mlp.down_proj.lora_A.weight")),
        vec![4, 64]
    );
    assert_eq!(st.names().len(), 2 * 7 * 3);
    assert!(
        st.names()
            .iter()
            .all(|n| n.starts_with("base_model.model.model.layers.") && !n.contains(".default."))
    );
}

#[test]
fn reloaded_adapter_and_merged_model_reproduce_logits() {
    let spec = TinySpec {
        tie_embeddings: true,
        ..TinySpec::default()
    };
    let ids = random_ids(2, 9, spec.vocab, 12);
    for use_dora in [false, true] {
        let cfg = AdapterConfig {
            use_dora,
            ..AdapterConfig::lora(
                4,
                8.0,
                TargetModules::names(["q_proj", "v_proj", "up_proj", "lm_head"]),
            )
        };
        let (mut model, set) = trained_like(&spec, &cfg);
        let expected = model.forward(&ids, &Mode::Eval).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_adapter(dir.path(), &set, "tiny", CAUSAL_LM).unwrap();

        let mut fresh = tiny_model(&spec, 31, DType::F32);
        let loaded = load_adapter(dir.path(), &mut fresh).unwrap();
        assert_eq!(loaded.vars().len(), set.vars().len());
        let got = fresh.forward(&ids, &Mode::Eval).unwrap();
        assert_eq!(max_abs_diff(&expected, &got), 0.0, "dora={use_dora}");

        let merged_dir = tempfile::tempdir().unwrap();
        // Shards of at most 64 KiB: several files and their index, as a large model gets.
        save_merged(merged_dir.path(), &mut model, DType::F32, 64 << 10).unwrap();
        let index: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(merged_dir.path().join("model.safetensors.index.json"))
                .unwrap(),
        )
        .unwrap();
        let files: std::collections::BTreeSet<&str> = index["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(files.len() > 1, "{files:?}");
        for f in &files {
            let tensors = index["weight_map"]
                .as_object()
                .unwrap()
                .values()
                .filter(|v| v.as_str() == Some(f))
                .count();
            let bytes = std::fs::metadata(merged_dir.path().join(f)).unwrap().len();
            // A shard passes the limit only when one tensor alone does (plus its header).
            assert!(
                tensors == 1 || bytes <= (64 << 10) + 8192,
                "{f}: {bytes} bytes"
            );
        }
        let merged = Llama::from_dir(merged_dir.path(), DType::F32, &Device::Cpu).unwrap();
        assert!(
            !merged.config().tie_word_embeddings,
            "adapted lm_head unties the head"
        );
        let d = max_abs_diff(&expected, &merged.forward(&ids, &Mode::Eval).unwrap());
        assert!(d < 1e-4, "dora={use_dora}: merged model differs by {d}");
        unmerge_all(&mut model);
        assert_eq!(
            max_abs_diff(&expected, &model.forward(&ids, &Mode::Eval).unwrap()),
            0.0
        );
    }
}

#[test]
fn bad_adapter_folders_fail_clearly() {
    let spec = TinySpec::default();
    let (_m, set) = trained_like(
        &spec,
        &AdapterConfig::lora(4, 8.0, TargetModules::names(["q_proj"])),
    );
    let dir = tempfile::tempdir().unwrap();
    save_adapter(dir.path(), &set, "tiny", CAUSAL_LM).unwrap();
    // Config claims a rank the tensors do not have.
    let path = dir.path().join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"r\": 4", "\"r\": 8");
    std::fs::write(&path, text).unwrap();
    let mut model = tiny_model(&spec, 31, DType::F32);
    let err = load_adapter(dir.path(), &mut model).unwrap_err();
    assert!(
        err.to_string().contains("lora_A.weight") && err.to_string().contains("[8, 32]"),
        "{err}"
    );
    // A target module the model does not have.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"q_proj\"", "\"query\"");
    std::fs::write(&path, text).unwrap();
    let mut model = tiny_model(&spec, 31, DType::F32);
    let err = load_adapter(dir.path(), &mut model).unwrap_err();
    assert!(err.to_string().contains("`query`"), "{err}");
}

#[test]
fn pissa_exports_as_rank_2r_lora_on_the_original_weights() {
    let spec = TinySpec::default();
    let ids = random_ids(2, 8, spec.vocab, 15);
    for use_rslora in [false, true] {
        let cfg = AdapterConfig {
            init: crate::engine::adapters::LoraInit::Pissa,
            use_rslora,
            ..AdapterConfig::lora(4, 8.0, TargetModules::names(["k_proj", "up_proj"]))
        };
        let (model, set) = trained_like(&spec, &cfg);
        let expected = model.forward(&ids, &Mode::Eval).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_adapter(dir.path(), &set, "tiny", CAUSAL_LM).unwrap();
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG)).unwrap(),
        )
        .unwrap();
        assert_eq!(config["r"], 8);
        assert_eq!(config["init_lora_weights"], true);
        let mut original = tiny_model(&spec, 31, DType::F32);
        let loaded = load_adapter(dir.path(), &mut original).unwrap();
        assert!(loaded.initial().is_empty());
        let d = max_abs_diff(&expected, &original.forward(&ids, &Mode::Eval).unwrap());
        assert!(
            d < 1e-4,
            "rslora={use_rslora}: converted PiSSA differs by {d}"
        );
    }
}
