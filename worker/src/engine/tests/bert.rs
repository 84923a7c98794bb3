//! BERT: oracle against candle-transformers, gradients through LoRA on every projection,
//! and a classification learning test.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert as ct;

use super::util::{max_abs_diff, perturb_b, random_ids};
use crate::engine::adapters::{AdapterConfig, AdapterSet, Mode, TargetModules};
use crate::engine::data::Loader;
use crate::engine::data::classify::class_examples;
use crate::engine::data::{ByteTokenizer, Format, Labels, jsonl};
use crate::engine::model::bert::{Bert, BertConfig, ClassifierHead, TinyBertSpec};
use crate::engine::model::{ConfigError, ModelError};
use crate::engine::optim::{Grads, OptimizerConfig, Schedule, ScheduleKind};
use crate::engine::trainer::{TrainConfig, Trainer};

fn mask(rows: &[usize], t: usize) -> Tensor {
    let m: Vec<f32> = rows
        .iter()
        .flat_map(|&n| (0..t).map(move |j| if j < n { 1.0 } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (rows.len(), t), &Device::Cpu).unwrap()
}

#[test]
fn bert_matches_candle_transformers_with_padding() {
    let spec = TinyBertSpec::default();
    let dir = tempfile::tempdir().unwrap();
    spec.write(dir.path(), 7).unwrap();
    let dev = Device::Cpu;
    let ours = Bert::from_dir(dir.path(), DType::F32, &dev).unwrap();
    let cfg: ct::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let vb = candle_nn::VarBuilder::from_buffered_safetensors(bytes, DType::F32, &dev).unwrap();
    let theirs = ct::BertModel::load(vb, &cfg).unwrap();

    let ids = random_ids(3, 9, spec.vocab, 8);
    let m = mask(&[9, 5, 1], 9);
    let tt = ids.zeros_like().unwrap();
    let expected = theirs.forward(&ids, &tt, Some(&m)).unwrap();
    let got = ours.forward(&ids, &m, &Mode::Eval).unwrap();
    assert_eq!(got.dims(), &[3, 9, spec.hidden]);
    let diff = max_abs_diff(&got, &expected);
    assert!(diff < 1e-4, "max abs diff {diff}");
    // Padding cannot influence real tokens: the 5-token row alone gives the same states.
    let alone = ours
        .forward(
            &ids.narrow(0, 1, 1).unwrap().narrow(1, 0, 5).unwrap(),
            &mask(&[5], 5),
            &Mode::Eval,
        )
        .unwrap();
    let padded = got.narrow(0, 1, 1).unwrap().narrow(1, 0, 5).unwrap();
    assert!(max_abs_diff(&alone, &padded) < 1e-5);
}

#[test]
fn lora_on_every_bert_projection_and_the_head_get_gradients() {
    let spec = TinyBertSpec::default();
    let tensors = spec.weights(3).unwrap().into_iter().collect();
    let w = crate::engine::model::Weights::from_tensors(tensors, DType::F32, &Device::Cpu);
    let mut model = Bert::load(spec.config(), &w).unwrap();
    let cfg = AdapterConfig {
        seed: 2,
        ..AdapterConfig::lora(
            4,
            8.0,
            TargetModules::names(["query", "key", "value", "dense"]),
        )
    };
    let set = AdapterSet::attach(&mut model, &cfg).unwrap();
    assert_eq!(set.modules().len(), 6 * spec.layers);
    perturb_b(&set, 4);
    let head = ClassifierHead::new(spec.hidden, 3, 1, &Device::Cpu).unwrap();
    let ids = random_ids(2, 6, spec.vocab, 5);
    let m = mask(&[6, 3], 6);
    let logits = model.classify(&ids, &m, &head, &Mode::Eval).unwrap();
    let loss = logits.sqr().unwrap().sum_all().unwrap();
    let store = loss.backward().unwrap();
    let mut vars = set.vars().clone();
    vars.extend(head.vars());
    let grads = Grads::collect(&store, &vars).unwrap();
    for (name, var) in &vars {
        let g = store.get(var).unwrap();
        let n = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0, "zero gradient for {name}");
    }
    assert!(grads.global_norm().unwrap() > 0.0);
}

const CLASSES: &str = r#"{"text":"good day","label":"pos"}
{"text":"great fun","label":"pos"}
{"text":"nice work","label":"pos"}
{"text":"happy cat","label":"pos"}
{"text":"bad day","label":"neg"}
{"text":"awful mess","label":"neg"}
{"text":"sad dog","label":"neg"}
{"text":"poor work","label":"neg"}
"#;

#[test]
fn lora_bert_classifier_learns_a_tiny_set() {
    let spec = TinyBertSpec::default();
    let tensors = spec.weights(9).unwrap().into_iter().collect();
    let w = crate::engine::model::Weights::from_tensors(tensors, DType::F32, &Device::Cpu);
    let mut model = Bert::load(spec.config(), &w).unwrap();
    let set = AdapterSet::attach(
        &mut model,
        &AdapterConfig {
            seed: 3,
            ..AdapterConfig::lora(4, 8.0, TargetModules::all_linear())
        },
    )
    .unwrap();
    let records = jsonl::parse_numbered(CLASSES, Format::Classification).unwrap();
    let labels = Labels::from_records(records.iter().map(|(_, r)| r));
    let examples = class_examples(&records, &ByteTokenizer, &labels, 32).unwrap();
    let head = ClassifierHead::new(spec.hidden, labels.len(), 4, &Device::Cpu).unwrap();
    let steps = 30;
    let schedule = Schedule {
        peak_lr: 1e-2,
        warmup_steps: 2,
        total_steps: steps,
        kind: ScheduleKind::Cosine { min_lr_ratio: 0.1 },
    };
    let mut trainer = Trainer::classifier(
        &model,
        &set,
        &head,
        Loader::new(examples.clone(), 4, 5, 0).unwrap(),
        Some(Loader::new(examples, 4, 5, 0).unwrap()),
        class_config(schedule, OptimizerConfig::default(), Some(1.0)),
    )
    .unwrap();
    let before = trainer.evaluate().unwrap();
    for _ in 0..steps {
        trainer.train_step().unwrap();
    }
    let after = trainer.evaluate().unwrap();
    assert!(after.loss < 0.5 * before.loss, "{before:?} -> {after:?}");
    assert_eq!(after.accuracy, Some(1.0), "{after:?}");
}

#[test]
fn bad_bert_configs_are_named() {
    let err = BertConfig::from_json("{\"hidden_size\": 32}").unwrap_err();
    assert!(err.to_string().contains("missing field"), "{err}");
    let mut cfg = TinyBertSpec::default().config();
    cfg.num_attention_heads = 5;
    assert!(matches!(
        cfg.validate(),
        Err(ConfigError::Invalid {
            field: "num_attention_heads",
            ..
        })
    ));
    let mut w: std::collections::HashMap<_, _> = TinyBertSpec::default()
        .weights(1)
        .unwrap()
        .into_iter()
        .collect();
    w.remove("encoder.layer.1.output.dense.bias");
    let w = crate::engine::model::Weights::from_tensors(w, DType::F32, &Device::Cpu);
    let err = Bert::load(TinyBertSpec::default().config(), &w).unwrap_err();
    assert!(matches!(err, ModelError::Weights(_)));
    assert!(
        err.to_string()
            .contains("encoder.layer.1.output.dense.bias"),
        "{err}"
    );
}

#[test]
fn classifier_adapter_exports_head_and_reloads_to_the_same_logits() {
    let spec = TinyBertSpec::default();
    let load = || {
        let w = crate::engine::model::Weights::from_tensors(
            spec.weights(4).unwrap().into_iter().collect(),
            DType::F32,
            &Device::Cpu,
        );
        Bert::load(spec.config(), &w).unwrap()
    };
    let mut model = load();
    let set = AdapterSet::attach(
        &mut model,
        &AdapterConfig::lora(4, 8.0, TargetModules::names(["query", "value"])),
    )
    .unwrap();
    perturb_b(&set, 1);
    let head = ClassifierHead::new(spec.hidden, 3, 2, &Device::Cpu).unwrap();
    let ids = random_ids(2, 5, spec.vocab, 6);
    let m = mask(&[5, 2], 5);
    let before = model.classify(&ids, &m, &head, &Mode::Eval).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let labels = vec!["a".to_string(), "b".into(), "c".into()];
    crate::engine::classifier::save_adapter(dir.path(), &set, &head, &labels, "tiny-bert").unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["classifier"]));
    let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let head2 = ClassifierHead::from_tensors(&tensors).unwrap();
    let mut fresh = load();
    let set2 = AdapterSet::attach(
        &mut fresh,
        &AdapterConfig::lora(4, 8.0, TargetModules::names(["query", "value"])),
    )
    .unwrap();
    let lora_only: std::collections::HashMap<_, _> = tensors
        .into_iter()
        .filter(|(k, _)| k.contains("lora_"))
        .collect();
    set2.load_tensors(&lora_only).unwrap();
    let after = fresh.classify(&ids, &m, &head2, &Mode::Eval).unwrap();
    assert!(max_abs_diff(&before, &after) < 1e-6);
}

/// The loop's settings for the classifier tests: one example batch per step, no eval or
/// checkpoints on their own.
pub(super) fn class_config(
    schedule: Schedule,
    optimizer: OptimizerConfig,
    max_grad_norm: Option<f64>,
) -> TrainConfig {
    TrainConfig {
        max_steps: schedule.total_steps,
        grad_accum: 1,
        schedule,
        optimizer,
        max_grad_norm,
        loraplus_ratio: None,
        eval_every: None,
        checkpoint_every: None,
        lisa: None,
        seed: 5,
    }
}
