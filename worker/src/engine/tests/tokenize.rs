//! The real tokenizer end to end: a tiny model folder written with its `tokenizer.json`,
//! chat data masked to assistant tokens, and LoRA training through it.

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};

use crate::engine::adapters::{AdapterConfig, AdapterSet, TargetModules};
use crate::engine::data::{
    Format, HfTokenizer, Loader, Tokenizer, examples_from_records, jsonl, load_for_model,
};
use crate::engine::model::Llama;
use crate::engine::model::tiny::TinySpec;
use crate::engine::optim::{OptimizerConfig, Schedule, ScheduleKind};
use crate::engine::trainer::{Event, TrainConfig, Trainer};

const CHATS: &str = r#"{"messages":[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]}
{"messages":[{"role":"system","content":"be kind"},{"role":"user","content":"cat?"},{"role":"assistant","content":"meow"}]}
{"messages":[{"role":"user","content":"dog?"},{"role":"assistant","content":"woof"},{"role":"user","content":"again?"},{"role":"assistant","content":"woof woof"}]}
{"messages":[{"role":"user","content":"the sky?"},{"role":"assistant","content":"the sky is blue"}]}
"#;

#[test]
fn tiny_model_folder_has_a_real_tokenizer_and_chat_masks_assistant_tokens() {
    let dir = tempfile::tempdir().unwrap();
    TinySpec::default().write(dir.path(), 1).unwrap();
    let tok = load_for_model(dir.path()).unwrap();
    let hf = HfTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.vocab_size(), hf.vocab_size());
    let records = jsonl::parse_numbered(CHATS, Format::Chat).unwrap();
    let examples = examples_from_records(&records, tok.as_ref(), 128).unwrap();
    let targets = |i: usize| {
        let e = &examples[i];
        let ids: Vec<u32> = e
            .ids
            .iter()
            .zip(&e.targets)
            .filter(|(_, t)| **t)
            .map(|(i, _)| *i)
            .collect();
        hf.decode(&ids)
    };
    assert_eq!(targets(0), "4<|im_end|>\n");
    assert_eq!(targets(2), "woof<|im_end|>\nwoof woof<|im_end|>\n");
    assert_eq!(
        hf.decode(&examples[0].ids),
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    );
    // A chat without an assistant turn is rejected with its line number.
    let bad = jsonl::parse_numbered(
        "\n{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        Format::Chat,
    )
    .unwrap();
    let err = examples_from_records(&bad, tok.as_ref(), 64).unwrap_err();
    assert!(err.to_string().starts_with("line 2: no assistant"), "{err}");
}

#[test]
fn lora_learns_chat_data_through_the_real_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    TinySpec::default().write(dir.path(), 2).unwrap();
    let tok = load_for_model(dir.path()).unwrap();
    let mut model = Llama::from_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let records = jsonl::parse_numbered(CHATS, Format::Chat).unwrap();
    let examples = examples_from_records(&records, tok.as_ref(), 128).unwrap();
    let loader = Loader::new(examples, 4, 0, tok.pad_id()).unwrap();
    let cfg = AdapterConfig {
        seed: 1,
        ..AdapterConfig::lora(8, 16.0, TargetModules::all_linear())
    };
    let set = AdapterSet::attach(&mut model, &cfg).unwrap();
    let steps = 20;
    let config = TrainConfig {
        max_steps: steps,
        grad_accum: 1,
        schedule: Schedule {
            peak_lr: 2e-2,
            warmup_steps: 2,
            total_steps: steps,
            kind: ScheduleKind::Cosine { min_lr_ratio: 0.1 },
        },
        optimizer: OptimizerConfig::default(),
        max_grad_norm: Some(1.0),
        loraplus_ratio: None,
        eval_every: None,
        checkpoint_every: None,
        lisa: None,
        seed: 0,
    };
    let mut trainer = Trainer::new(&model, &set, loader, None, config).unwrap();
    let mut losses = Vec::new();
    trainer
        .run(&AtomicBool::new(false), None, &mut |e| {
            if let Event::Step(m) = e {
                losses.push(m.loss)
            }
        })
        .unwrap();
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}
