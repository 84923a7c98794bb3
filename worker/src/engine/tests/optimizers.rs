//! Every optimizer and schedule through the one training loop on the tiny model: each
//! halves the eval loss, WSD's stable-phase checkpoint continues a longer run exactly, and
//! the prompt-loss weight gives the weighted mean it promises.

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};

use super::util::{run_steps, tiny_model};
use crate::engine::adapters::{AdapterConfig, AdapterSet, TargetModules};
use crate::engine::data::{Batch, ByteTokenizer, Example, Format, Loader, jsonl};
use crate::engine::model::tiny::TinySpec;
use crate::engine::optim::{
    AdafactorConfig, AdamWConfig, DAdaptConfig, DecayShape, DogConfig, LionConfig, OptimizerConfig,
    Schedule, ScheduleKind,
};
use crate::engine::trainer::{Event, TrainConfig, Trainer};

const DATA: &str = r#"{"prompt":"2+2=","completion":"4"}
{"prompt":"3+3=","completion":"6"}
{"prompt":"cat says ","completion":"meow"}
{"prompt":"dog says ","completion":"woof"}
{"prompt":"red and ","completion":"blue"}
{"prompt":"up and ","completion":"down"}
"#;

fn examples() -> Vec<Example> {
    jsonl::parse(DATA, Format::PromptCompletion)
        .unwrap()
        .iter()
        .map(|r| Example::from_record(r, &ByteTokenizer, 32))
        .collect()
}

fn loader(batch: usize, seed: u64) -> Loader {
    Loader::new(examples(), batch, seed, 0).unwrap()
}

fn adapters() -> AdapterConfig {
    AdapterConfig {
        seed: 5,
        ..AdapterConfig::lora(8, 16.0, TargetModules::all_linear())
    }
}

fn config(steps: u64, lr: f64, kind: ScheduleKind, optimizer: OptimizerConfig) -> TrainConfig {
    TrainConfig {
        max_steps: steps,
        grad_accum: 2,
        schedule: Schedule {
            peak_lr: lr,
            warmup_steps: 2,
            total_steps: steps,
            kind,
        },
        optimizer,
        max_grad_norm: Some(1.0),
        loraplus_ratio: None,
        eval_every: None,
        checkpoint_every: None,
        lisa: None,
        seed: 3,
    }
}

fn eval_loss(
    trainer: &Trainer<
        crate::engine::trainer::CausalLmObjective<'_, crate::engine::model::llama::Llama>,
    >,
) -> f64 {
    trainer.evaluate().unwrap().loss
}

/// (name, optimizer, learning rate, steps): the learning-rate-free ones run at 1 (their
/// default). DoG starts from a step of `1e-6·(1 + ‖x₀‖)` and grows it geometrically while
/// the iterates move (the paper's ramp-up), which takes ~100 steps here.
fn optimizers() -> Vec<(&'static str, OptimizerConfig, f64, u64)> {
    vec![
        (
            "adamw",
            OptimizerConfig::AdamW(AdamWConfig::default()),
            2e-2,
            30,
        ),
        (
            "lion",
            OptimizerConfig::Lion(LionConfig::default()),
            3e-3,
            30,
        ),
        (
            "adafactor",
            OptimizerConfig::Adafactor(AdafactorConfig::default()),
            2e-2,
            30,
        ),
        ("dog", OptimizerConfig::Dog(DogConfig::default()), 1.0, 200),
        (
            "dadapt_adam",
            OptimizerConfig::DAdaptAdam(DAdaptConfig::default()),
            1.0,
            60,
        ),
    ]
}

#[test]
fn every_optimizer_halves_the_tiny_models_eval_loss() {
    for (name, optimizer, lr, steps) in optimizers() {
        let mut model = tiny_model(&TinySpec::default(), 21, DType::F32);
        let set = AdapterSet::attach(&mut model, &adapters()).unwrap();
        let kind = ScheduleKind::Cosine { min_lr_ratio: 0.1 };
        let mut trainer = Trainer::new(
            &model,
            &set,
            loader(3, 1),
            Some(loader(6, 1)),
            config(steps, lr, kind, optimizer),
        )
        .unwrap();
        let before = eval_loss(&trainer);
        let mut sizes = Vec::new();
        trainer
            .run(&AtomicBool::new(false), None, &mut |e| {
                if let Event::Step(m) = e {
                    sizes.push(m.lr);
                }
            })
            .unwrap();
        let after = eval_loss(&trainer);
        eprintln!(
            "{name}: eval loss {before:.4} -> {after:.4} ({:.1}% drop); step sizes {:.2e} .. {:.2e}",
            100.0 * (1.0 - after / before),
            sizes[2],
            sizes[steps as usize - 1]
        );
        assert!(
            after <= 0.5 * before,
            "{name}: eval loss {before} -> {after}"
        );
        assert!(sizes.iter().all(|s| s.is_finite() && *s >= 0.0), "{name}");
        if optimizer_is_free(&optimizer) {
            // The step the optimizer chose, reported each step, is not the schedule's.
            let schedule = config(steps, lr, kind, optimizer).schedule;
            assert!(
                sizes
                    .iter()
                    .enumerate()
                    .any(|(i, s)| (s - schedule.lr_at(i as u64)).abs() > 1e-9),
                "{name}: {sizes:?}"
            );
        }
    }
}

fn optimizer_is_free(o: &OptimizerConfig) -> bool {
    matches!(o, OptimizerConfig::Dog(_) | OptimizerConfig::DAdaptAdam(_))
}

#[test]
fn every_schedule_trains_the_tiny_model() {
    let kinds = [
        ScheduleKind::Wsd {
            decay_fraction: 0.2,
            shape: DecayShape::OneMinusSqrt,
            min_lr_ratio: 0.0,
        },
        ScheduleKind::Cosine { min_lr_ratio: 0.1 },
        ScheduleKind::InverseSqrt,
    ];
    for kind in kinds {
        let mut model = tiny_model(&TinySpec::default(), 21, DType::F32);
        let set = AdapterSet::attach(&mut model, &adapters()).unwrap();
        let optimizer = OptimizerConfig::AdamW(AdamWConfig::default());
        let mut trainer = Trainer::new(
            &model,
            &set,
            loader(3, 1),
            Some(loader(6, 1)),
            config(24, 2e-2, kind, optimizer),
        )
        .unwrap();
        let before = eval_loss(&trainer);
        trainer
            .run(&AtomicBool::new(false), None, &mut |_| {})
            .unwrap();
        let after = eval_loss(&trainer);
        eprintln!("{kind:?}: eval loss {before:.4} -> {after:.4}");
        assert!(after <= 0.5 * before, "{kind:?}: {before} -> {after}");
    }
}

/// A WSD run of 10 steps checkpoints the end of its stable phase (step 8); a 20-step run
/// resumed from there matches a 20-step run from scratch step for step.
#[test]
fn a_wsd_stable_checkpoint_extends_to_a_longer_budget_exactly() {
    let kind = ScheduleKind::Wsd {
        decay_fraction: 0.2,
        shape: DecayShape::Linear,
        min_lr_ratio: 0.0,
    };
    let optimizer = OptimizerConfig::AdamW(AdamWConfig::default());
    let run = |steps: u64, resume: Option<&std::path::Path>, root: &std::path::Path| {
        let mut model = tiny_model(&TinySpec::default(), 22, DType::F32);
        let set = AdapterSet::attach(&mut model, &adapters()).unwrap();
        let cfg = TrainConfig {
            checkpoint_every: Some(1000),
            ..config(steps, 1e-2, kind, optimizer)
        };
        let mut trainer = Trainer::new(&model, &set, loader(2, 7), None, cfg).unwrap();
        if let Some(dir) = resume {
            trainer.resume(dir).unwrap();
        }
        let mut losses = Vec::new();
        let mut checkpoints = Vec::new();
        trainer
            .run(&AtomicBool::new(false), Some(root), &mut |e| match e {
                Event::Step(m) => losses.push((m.step, m.loss)),
                Event::Checkpoint { step, .. } => checkpoints.push(*step),
                Event::Eval(_) => {}
            })
            .unwrap();
        (losses, checkpoints)
    };
    let short_dir = tempfile::tempdir().unwrap();
    let (_, checkpoints) = run(10, None, short_dir.path());
    assert_eq!(checkpoints, vec![8], "the stable phase ends at step 8");
    let long_dir = tempfile::tempdir().unwrap();
    let (full, _) = run(20, None, long_dir.path());
    let ext_dir = tempfile::tempdir().unwrap();
    let (extended, _) = run(20, Some(&short_dir.path().join("step-8")), ext_dir.path());
    assert_eq!(extended.first().map(|s| s.0), Some(9));
    assert_eq!(extended.len(), 12);
    for ((s1, a), (s2, b)) in full[8..].iter().zip(&extended) {
        assert_eq!(s1, s2);
        assert!((a - b).abs() <= 1e-6, "step {s1}: {a} vs {b}");
    }
}

/// The loss with prompt weight w is `(S_c + w·S_p) / (n_c + w·n_p)` for the completion and
/// prompt tokens' summed losses S and counts n; w = 1 is the whole-sequence loss.
#[test]
fn prompt_loss_weight_is_the_weighted_mean_over_prompt_and_completion_tokens() {
    let ex = examples();
    let refs: Vec<&Example> = ex.iter().collect();
    let b0 = Batch::weighted(&refs, 0, 0.0, &Device::Cpu).unwrap();
    let b1 = Batch::weighted(&refs, 0, 1.0, &Device::Cpu).unwrap();
    // w = 1 counts every real token: the same mask as the same ids read as plain text.
    let as_text: Vec<Example> = ex
        .iter()
        .map(|e| Example {
            ids: e.ids.clone(),
            targets: {
                let mut t = vec![true; e.ids.len()];
                t[0] = false;
                t
            },
        })
        .collect();
    let text = Batch::new(&as_text.iter().collect::<Vec<_>>(), 0, &Device::Cpu).unwrap();
    assert_eq!(
        b1.mask.to_vec1::<f32>().unwrap(),
        text.mask.to_vec1::<f32>().unwrap()
    );
    let (n_c, n_all) = (b0.target_weight, b1.target_weight);
    assert!(n_all > n_c && n_c > 0.0);

    // One step's reported loss (before the update) with the whole set as one batch.
    let step_loss = |w: f32| {
        let mut model = tiny_model(&TinySpec::default(), 23, DType::F32);
        let set = AdapterSet::attach(&mut model, &adapters()).unwrap();
        let train = Loader::new(examples(), 6, 1, 0)
            .unwrap()
            .with_prompt_weight(w);
        let cfg = TrainConfig {
            grad_accum: 1,
            ..config(1, 1e-3, ScheduleKind::Constant, OptimizerConfig::default())
        };
        let mut trainer = Trainer::new(&model, &set, train, None, cfg).unwrap();
        trainer.train_step().unwrap().loss
    };
    let (l0, l1, lw) = (step_loss(0.0), step_loss(1.0), step_loss(0.25));
    let (s_c, s_all) = (l0 * n_c, l1 * n_all);
    let want = (s_c + 0.25 * (s_all - s_c)) / (n_c + 0.25 * (n_all - n_c));
    eprintln!(
        "completion-only {l0:.5}, whole sequence {l1:.5}, w=0.25 {lw:.5} (formula {want:.5})"
    );
    assert!((lw - want).abs() < 1e-5, "{lw} vs {want}");
    assert!((l0 - l1).abs() > 1e-3, "prompt tokens change the loss");
}

/// MeZO (two forward passes per step, no backward) lowers the tiny model's eval loss, and a
/// run resumed from its checkpoint takes the same steps.
#[test]
fn mezo_lowers_the_tiny_models_loss_without_a_backward_pass() {
    use crate::engine::optim::MezoConfig;
    let optimizer = OptimizerConfig::Mezo(MezoConfig {
        epsilon: 1e-3,
        weight_decay: 0.0,
    });
    let mut model = tiny_model(&TinySpec::default(), 21, DType::F32);
    let set = AdapterSet::attach(&mut model, &adapters()).unwrap();
    let cfg = TrainConfig {
        max_grad_norm: None,
        ..config(60, 2e-3, ScheduleKind::Constant, optimizer)
    };
    let mut trainer = Trainer::new(&model, &set, loader(3, 1), Some(loader(6, 1)), cfg).unwrap();
    let before = eval_loss(&trainer);
    trainer
        .run(&AtomicBool::new(false), None, &mut |_| {})
        .unwrap();
    let after = eval_loss(&trainer);
    eprintln!("mezo: eval loss {before:.4} -> {after:.4}");
    assert!(after < 0.95 * before, "{before} -> {after}");

    // Its directions are a function of (seed, step): a resumed run takes the same steps.
    let run = |resume: Option<&std::path::Path>, root: &std::path::Path| {
        let mut model = tiny_model(&TinySpec::default(), 22, DType::F32);
        let set = AdapterSet::attach(&mut model, &adapters()).unwrap();
        let cfg = TrainConfig {
            checkpoint_every: Some(3),
            ..config(6, 2e-3, ScheduleKind::Constant, optimizer)
        };
        let mut trainer = Trainer::new(&model, &set, loader(2, 7), None, cfg).unwrap();
        run_steps(&mut trainer, resume, None, root)
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let full = run(None, a.path());
    let resumed = run(Some(&a.path().join("step-3")), b.path());
    assert_eq!(full[3..], resumed[..]);
}
