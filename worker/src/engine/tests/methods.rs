//! IA3, prompt tuning, prefix tuning, BitFit and full fine-tuning: gradients reach every var,
//! training lowers the loss, IA3 merges exactly, and export writes the method's config and
//! keys and loads back.

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};

use super::util::{lm_loss, max_abs_diff, random_ids, tiny_model};
use crate::engine::adapters::methods::{Method, attach};
use crate::engine::adapters::set::{merge_all, unmerge_all};
use crate::engine::adapters::{AdapterSet, Mode};
use crate::engine::data::{ByteTokenizer, Example, Format, Loader, jsonl};
use crate::engine::export;
use crate::engine::model::bert::{Bert, ClassifierHead, TinyBertSpec};
use crate::engine::model::tiny::TinySpec;
use crate::engine::trainer::{Event, Trainer};

fn ia3() -> Method {
    Method::Ia3 {
        target_modules: None,
        feedforward_modules: None,
    }
}

fn all_llama_methods() -> Vec<Method> {
    vec![
        ia3(),
        Method::PromptTuning {
            num_virtual_tokens: 4,
        },
        prefix(3),
        Method::Full,
    ]
}

fn prefix(n: usize) -> Method {
    Method::PrefixTuning {
        num_virtual_tokens: n,
        layout: None,
    }
}

/// Sets every var to a seeded random perturbation of itself, so IA3 vectors are not all
/// ones (where some gradients vanish by symmetry) and merges are non-trivial.
fn perturb(set: &AdapterSet) {
    use rand::Rng;
    for (name, v) in set.vars() {
        let mut g = crate::engine::rng::stream(11, name);
        let noise: Vec<f32> = (0..v.elem_count())
            .map(|_| g.random_range(-0.1..0.1))
            .collect();
        let noise = Tensor::from_vec(noise, v.shape(), v.device()).unwrap();
        v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
    }
}

#[test]
fn every_var_of_every_method_gets_a_gradient() {
    let spec = TinySpec {
        tie_embeddings: true,
        ..TinySpec::default()
    };
    for method in all_llama_methods() {
        let mut model = tiny_model(&spec, 3, DType::F32);
        let set = attach(&mut model, &method, 1).unwrap();
        assert!(!set.vars().is_empty());
        let ids = random_ids(2, 7, spec.vocab, 2);
        let loss = lm_loss(&model, &ids, &Mode::Eval);
        let store = loss.backward().unwrap();
        for (name, var) in set.vars() {
            let g = store
                .get(var)
                .unwrap_or_else(|| panic!("{}: no gradient for {name}", method.kind()));
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "{}: zero gradient for {name}", method.kind());
        }
        if method == Method::Full {
            // Tied head and embedding share one var.
            assert!(set.vars().contains_key("model.embed_tokens.weight"));
            assert!(!set.vars().contains_key("lm_head.weight"));
        }
    }
    // BitFit needs biases: BERT has them on every linear and norm.
    let bspec = TinyBertSpec::default();
    let w = crate::engine::model::Weights::from_tensors(
        bspec.weights(1).unwrap().into_iter().collect(),
        DType::F32,
        &Device::Cpu,
    );
    let mut bert = Bert::load(bspec.config(), &w).unwrap();
    let set = attach(&mut bert, &Method::BitFit, 0).unwrap();
    assert_eq!(set.vars().len(), bspec.layers * (6 + 2) + 1);
    let head = ClassifierHead::new(bspec.hidden, 2, 0, &Device::Cpu).unwrap();
    let ids = random_ids(2, 5, bspec.vocab, 3);
    let mask = Tensor::ones((2, 5), DType::F32, &Device::Cpu).unwrap();
    let logits = bert.classify(&ids, &mask, &head, &Mode::Eval).unwrap();
    let store = logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for (name, var) in set.vars() {
        assert!(store.get(var).is_some(), "BitFit: no gradient for {name}");
    }
    // A Llama without biases cannot do BitFit, and says so.
    let mut llama = tiny_model(&spec, 3, DType::F32);
    let err = attach(&mut llama, &Method::BitFit, 0).unwrap_err();
    assert!(err.to_string().contains("no bias"), "{err}");
}

#[test]
fn ia3_merge_matches_and_exports_peft_keys() {
    let spec = TinySpec::default();
    let mut model = tiny_model(&spec, 5, DType::F32);
    let set = attach(&mut model, &ia3(), 0).unwrap();
    perturb(&set);
    let ids = random_ids(2, 6, spec.vocab, 6);
    let before = model.forward(&ids, &Mode::Eval).unwrap();
    merge_all(&mut model).unwrap();
    let merged = model.forward(&ids, &Mode::Eval).unwrap();
    assert!(max_abs_diff(&before, &merged) < 1e-4);
    unmerge_all(&mut model);
    assert_eq!(
        max_abs_diff(&before, &model.forward(&ids, &Mode::Eval).unwrap()),
        0.0
    );

    let dir = tempfile::tempdir().unwrap();
    export::save_adapter(dir.path(), &set, "tiny", export::CAUSAL_LM).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(export::ADAPTER_CONFIG)).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "IA3");
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["down_proj", "k_proj", "v_proj"])
    );
    assert_eq!(cfg["feedforward_modules"], serde_json::json!(["down_proj"]));
    let bytes = std::fs::read(dir.path().join(export::ADAPTER_WEIGHTS)).unwrap();
    let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let k = &t["base_model.model.model.layers.0.self_attn.k_proj.ia3_l"];
    assert_eq!(k.dims(), &[spec.kv_heads * spec.hidden / spec.heads, 1]);
    let d = &t["base_model.model.model.layers.1.mlp.down_proj.ia3_l"];
    assert_eq!(d.dims(), &[1, spec.intermediate]);
}

const DATA: &str = r#"{"prompt":"2+2=","completion":"4"}
{"prompt":"cat says ","completion":"meow"}
{"prompt":"dog says ","completion":"woof"}
{"prompt":"up and ","completion":"down"}
"#;

fn train(method: &Method, steps: u64, lr: f64) -> (f64, f64) {
    let mut model = tiny_model(&TinySpec::default(), 21, DType::F32);
    let set = attach(&mut model, method, 7).unwrap();
    let records = jsonl::parse(DATA, Format::PromptCompletion).unwrap();
    let examples = records
        .iter()
        .map(|r| Example::from_record(r, &ByteTokenizer, 32))
        .collect();
    let loader = Loader::new(examples, 4, 1, 0).unwrap();
    let config = super::util::constant_lr(steps, lr);
    let mut trainer = Trainer::new(&model, &set, loader, None, config).unwrap();
    let mut losses = Vec::new();
    trainer
        .run(&AtomicBool::new(false), None, &mut |e| {
            if let Event::Step(m) = e {
                losses.push(m.loss)
            }
        })
        .unwrap();
    (losses[0], losses[losses.len() - 1])
}

#[test]
fn every_method_lowers_the_training_loss() {
    let (first, last) = train(&Method::Full, 12, 1e-2);
    assert!(last < 0.5 * first, "full: {first} -> {last}");
    let (first, last) = train(&ia3(), 12, 5e-2);
    assert!(last < 0.9 * first, "ia3: {first} -> {last}");
    let (first, last) = train(
        &Method::PromptTuning {
            num_virtual_tokens: 4,
        },
        12,
        5e-2,
    );
    assert!(last < 0.9 * first, "prompt tuning: {first} -> {last}");
    let (first, last) = train(&prefix(4), 12, 1e-1);
    assert!(last < 0.7 * first, "prefix tuning: {first} -> {last}");
}

#[test]
fn prefix_tuning_reaches_every_layer_exports_peft_layout_and_loads_back() {
    // Grouped-query attention, so the PEFT layout's kv-head adjustment is exercised.
    let spec = TinySpec {
        heads: 4,
        kv_heads: 2,
        ..TinySpec::default()
    };
    let mut model = tiny_model(&spec, 8, DType::F32);
    let ids = random_ids(2, 5, spec.vocab, 9);
    let plain = model.forward(&ids, &Mode::Eval).unwrap();
    let set = attach(&mut model, &prefix(3), 1).unwrap();
    perturb(&set);
    let tuned = model.forward(&ids, &Mode::Eval).unwrap();
    assert_eq!(tuned.dims(), plain.dims());
    assert!(max_abs_diff(&plain, &tuned) > 1e-4);
    // Switched off (a preference reference), the model is the base again.
    let reference = model.forward(&ids, &Mode::Reference).unwrap();
    assert_eq!(max_abs_diff(&plain, &reference), 0.0);

    // Every layer's keys and values receive a gradient.
    let loss = lm_loss(&model, &ids, &Mode::Eval);
    let store = loss.backward().unwrap();
    let var = &set.vars()["prompt_embeddings"];
    let head_dim = spec.hidden / spec.heads;
    let row = spec.kv_heads * head_dim;
    assert_eq!(var.dims(), &[3, spec.layers * 2 * row]);
    let g = store.get(var).unwrap();
    for block in 0..spec.layers * 2 {
        let part = g.narrow(1, block * row, row).unwrap();
        let n = part
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            n > 0.0,
            "no gradient for layer {} {}",
            block / 2,
            ["keys", "values"][block % 2]
        );
    }

    let dir = tempfile::tempdir().unwrap();
    export::save_adapter(dir.path(), &set, "tiny", export::CAUSAL_LM).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(export::ADAPTER_CONFIG)).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "PREFIX_TUNING");
    assert_eq!(cfg["num_virtual_tokens"], 3);
    assert_eq!(cfg["num_layers"], spec.layers);
    assert_eq!(cfg["num_attention_heads"], spec.kv_heads);
    assert_eq!(cfg["token_dim"], row);
    assert_eq!(cfg["prefix_projection"], false);
    let mut again = tiny_model(&spec, 8, DType::F32);
    export::load_adapter(dir.path(), &mut again).unwrap();
    let reloaded = again.forward(&ids, &Mode::Eval).unwrap();
    assert_eq!(max_abs_diff(&tuned, &reloaded), 0.0);
}

#[test]
fn prompt_tuning_keeps_logit_positions_and_exports_its_config() {
    let spec = TinySpec::default();
    let mut model = tiny_model(&spec, 8, DType::F32);
    let ids = random_ids(2, 5, spec.vocab, 9);
    let plain = model.forward(&ids, &Mode::Eval).unwrap();
    let set = attach(
        &mut model,
        &Method::PromptTuning {
            num_virtual_tokens: 3,
        },
        1,
    )
    .unwrap();
    let prompted = model.forward(&ids, &Mode::Eval).unwrap();
    assert_eq!(prompted.dims(), plain.dims());
    assert!(max_abs_diff(&plain, &prompted) > 1e-4);
    let dir = tempfile::tempdir().unwrap();
    export::save_adapter(dir.path(), &set, "tiny", export::CAUSAL_LM).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(export::ADAPTER_CONFIG)).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "PROMPT_TUNING");
    assert_eq!(cfg["num_virtual_tokens"], 3);
    assert_eq!(cfg["token_dim"], spec.hidden);
}

#[test]
fn lora_ga_starts_at_the_base_model_and_exports_like_pissa() {
    use crate::engine::adapters::{AdapterConfig, LoraInit, TargetModules};
    use crate::engine::lora_ga;
    let spec = TinySpec::default();
    let records = jsonl::parse(DATA, Format::PromptCompletion).unwrap();
    let examples: Vec<Example> = records
        .iter()
        .map(|r| Example::from_record(r, &ByteTokenizer, 32))
        .collect();
    let batch =
        crate::engine::data::Batch::new(&examples.iter().collect::<Vec<_>>(), 0, &Device::Cpu)
            .unwrap();
    let cfg = AdapterConfig {
        seed: 2,
        init: LoraInit::LoraGa,
        ..AdapterConfig::lora(4, 8.0, TargetModules::all_linear())
    };
    let mut plain_model = tiny_model(&spec, 13, DType::F32);
    assert!(AdapterSet::attach(&mut plain_model, &cfg).is_err());
    let base = plain_model.forward(&batch.input_ids, &Mode::Eval).unwrap();
    let mut model = tiny_model(&spec, 13, DType::F32);
    let set = lora_ga::attach(
        &mut model,
        &cfg,
        std::slice::from_ref(&batch),
        lora_ga::DEFAULT_GAMMA,
    )
    .unwrap();
    let start = model.forward(&batch.input_ids, &Mode::Eval).unwrap();
    assert!(max_abs_diff(&base, &start) < 1e-4);
    // Unlike B = 0 init, both factors get gradients from the first step.
    let ids = random_ids(2, 7, spec.vocab, 2);
    let store = lm_loss(&model, &ids, &Mode::Eval).backward().unwrap();
    for (name, var) in set.vars() {
        let n = store.get(var).unwrap().abs().unwrap().sum_all().unwrap();
        assert!(n.to_scalar::<f32>().unwrap() > 0.0, "{name}");
    }
    assert_eq!(set.initial().len(), set.vars().len());
    // Export converts to a rank-2r LoRA on the original weights.
    let dir = tempfile::tempdir().unwrap();
    export::save_adapter(dir.path(), &set, "tiny", export::CAUSAL_LM).unwrap();
    let cfg_out: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(export::ADAPTER_CONFIG)).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg_out["r"], 8);
    let mut fresh = tiny_model(&spec, 13, DType::F32);
    export::load_adapter(dir.path(), &mut fresh).unwrap();
    let reloaded = fresh.forward(&batch.input_ids, &Mode::Eval).unwrap();
    assert!(max_abs_diff(&reloaded, &start) < 1e-4);
}
