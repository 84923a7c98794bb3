//! Learning and exact-resume tests of the trainer on a tiny random model.

use std::sync::atomic::AtomicBool;

use candle_core::DType;

use super::util::tiny_model;
use crate::engine::adapters::{AdapterConfig, AdapterSet, TargetModules};
use crate::engine::data::{ByteTokenizer, Example, Format, Loader, jsonl};
use crate::engine::model::tiny::TinySpec;
use crate::engine::optim::{AdamWConfig, OptimizerConfig, Schedule, ScheduleKind};
use crate::engine::trainer::{Event, Outcome, TrainConfig, Trainer};

const DATA: &str = r#"{"prompt":"2+2=","completion":"4"}
{"prompt":"3+3=","completion":"6"}
{"prompt":"cat says ","completion":"meow"}
{"prompt":"dog says ","completion":"woof"}
{"prompt":"red and ","completion":"blue"}
{"prompt":"up and ","completion":"down"}
"#;

fn loader(batch: usize, seed: u64) -> Loader {
    let records = jsonl::parse(DATA, Format::PromptCompletion).unwrap();
    let examples = records
        .iter()
        .map(|r| Example::from_record(r, &ByteTokenizer, 32))
        .collect();
    Loader::new(examples, batch, seed, 0).unwrap()
}

fn config(max_steps: u64, lr: f64) -> TrainConfig {
    TrainConfig {
        max_steps,
        grad_accum: 2,
        schedule: Schedule {
            peak_lr: lr,
            warmup_steps: 2,
            total_steps: max_steps,
            kind: ScheduleKind::Cosine { min_lr_ratio: 0.1 },
        },
        optimizer: OptimizerConfig::AdamW(AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        }),
        max_grad_norm: Some(1.0),
        loraplus_ratio: None,
        eval_every: Some(10),
        checkpoint_every: None,
        lisa: None,
        seed: 3,
    }
}

fn adapter_config(dropout: f32) -> AdapterConfig {
    AdapterConfig {
        lora_dropout: dropout,
        seed: 5,
        ..AdapterConfig::lora(8, 16.0, TargetModules::all_linear())
    }
}

#[test]
fn lora_drives_loss_down_by_half() {
    let mut model = tiny_model(&TinySpec::default(), 21, DType::F32);
    let set = AdapterSet::attach(&mut model, &adapter_config(0.0)).unwrap();
    let mut trainer = Trainer::new(
        &model,
        &set,
        loader(3, 1),
        Some(loader(6, 1)),
        config(16, 2e-2),
    )
    .unwrap();
    let mut losses = Vec::new();
    let mut evals = Vec::new();
    let outcome = trainer
        .run(&AtomicBool::new(false), None, &mut |e| match e {
            Event::Step(m) => {
                assert!(m.grad_norm.is_finite() && m.lr >= 0.0 && m.tokens_per_sec > 0.0);
                losses.push(m.loss)
            }
            Event::Eval(m) => evals.push(m.loss),
            Event::Checkpoint { .. } => {}
        })
        .unwrap();
    assert_eq!(outcome, Outcome::Completed { steps: 16 });
    assert_eq!(evals.len(), 2, "eval at step 10 and after the last step");
    let first = trainer_initial_eval(&set);
    let last = *evals.last().unwrap();
    eprintln!("eval loss {first} -> {last}");
    assert!(
        last <= 0.5 * first,
        "eval loss {first} -> {last}; train losses {losses:?}"
    );
}

/// Eval loss of the untrained model (B = 0 means the adapters are a no-op).
fn trainer_initial_eval(set: &AdapterSet) -> f64 {
    let mut model = tiny_model(&TinySpec::default(), 21, DType::F32);
    let fresh = AdapterSet::attach(&mut model, set.config()).unwrap();
    let t = Trainer::new(
        &model,
        &fresh,
        loader(3, 1),
        Some(loader(6, 1)),
        config(1, 1e-2),
    )
    .unwrap();
    t.evaluate().unwrap().loss
}

/// With dropout (candle's autograd) and without it (the hand-written LoRA backward).
#[test]
fn checkpoint_and_resume_reproduce_the_loss_curve() {
    for dropout in [0.1, 0.0] {
        resume_reproduces_the_loss_curve(dropout);
    }
}

fn resume_reproduces_the_loss_curve(dropout: f32) {
    let total = 8;
    let k = 3;
    let cfg = TrainConfig {
        checkpoint_every: Some(k),
        loraplus_ratio: Some(4.0),
        ..config(total, 1e-2)
    };
    let run =
        |resume_from: Option<&std::path::Path>, stop_after: Option<u64>, root: &std::path::Path| {
            let mut model = tiny_model(&TinySpec::default(), 22, DType::F32);
            // A different adapter seed on resume proves the checkpoint overrides the init.
            let seed = if resume_from.is_some() { 99 } else { 5 };
            let acfg = AdapterConfig {
                seed,
                ..adapter_config(dropout)
            };
            let set = AdapterSet::attach(&mut model, &acfg).unwrap();
            let mut trainer = Trainer::new(&model, &set, loader(2, 7), None, cfg.clone()).unwrap();
            if let Some(dir) = resume_from {
                trainer.resume(dir).unwrap();
                assert_eq!(trainer.step(), k);
            }
            let cancel = AtomicBool::new(false);
            let mut losses = Vec::new();
            trainer
                .run(&cancel, Some(root), &mut |e| {
                    if let Event::Step(m) = e {
                        losses.push((m.step, m.loss));
                        if Some(m.step) == stop_after {
                            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
                .unwrap();
            losses
        };
    let full_dir = tempfile::tempdir().unwrap();
    let full = run(None, None, full_dir.path());
    assert_eq!(full.len(), total as usize);

    let part_dir = tempfile::tempdir().unwrap();
    let first = run(None, Some(k), part_dir.path());
    assert_eq!(
        first.len(),
        k as usize,
        "cancellation stops right after step {k}"
    );
    let resumed = run(
        Some(&part_dir.path().join(format!("step-{k}"))),
        None,
        part_dir.path(),
    );
    assert_eq!(resumed.first().map(|s| s.0), Some(k + 1));
    for ((s1, a), (s2, b)) in full[k as usize..].iter().zip(&resumed) {
        assert_eq!(s1, s2);
        assert!(
            (a - b).abs() <= 1e-6,
            "dropout {dropout}, step {s1}: {a} vs {b}"
        );
    }
    assert_eq!(full[..k as usize], first[..]);
}

/// One step with 2 examples in one micro-batch equals one step with 2 micro-batches of 1:
/// the loss is normalised over the whole window and right padding changes nothing.
#[test]
fn gradient_accumulation_matches_a_single_big_batch() {
    let run = |batch: usize, accum: usize| {
        let mut model = tiny_model(&TinySpec::default(), 23, DType::F32);
        let set = AdapterSet::attach(&mut model, &adapter_config(0.0)).unwrap();
        let cfg = TrainConfig {
            grad_accum: accum,
            max_grad_norm: None,
            ..config(2, 1e-2)
        };
        let mut trainer = Trainer::new(&model, &set, loader(batch, 9), None, cfg).unwrap();
        let m1 = trainer.train_step().unwrap();
        let m2 = trainer.train_step().unwrap();
        let a =
            set.tensors()["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].clone();
        (m1.loss, m2.loss, m2.grad_norm, a)
    };
    let (l1, l2, g, a) = run(2, 1);
    let (k1, k2, h, b) = run(1, 2);
    assert!(
        (l1 - k1).abs() < 1e-6 && (l2 - k2).abs() < 1e-5,
        "{l1} {k1} / {l2} {k2}"
    );
    assert!((g - h).abs() < 1e-4 * g.max(1.0), "{g} vs {h}");
    assert!(super::util::max_abs_diff(&a, &b) < 1e-5);
}

#[test]
fn cancellation_is_checked_before_every_step() {
    let mut model = tiny_model(&TinySpec::default(), 24, DType::F32);
    let set = AdapterSet::attach(&mut model, &adapter_config(0.0)).unwrap();
    let mut trainer = Trainer::new(&model, &set, loader(2, 1), None, config(5, 1e-2)).unwrap();
    let cancel = AtomicBool::new(true);
    let outcome = trainer
        .run(&cancel, None, &mut |_| panic!("no step may run"))
        .unwrap();
    assert_eq!(outcome, Outcome::Cancelled { step: 0 });
}
