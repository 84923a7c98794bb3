//! Helpers shared by the engine tests.

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use crate::engine::adapters::AdapterSet;
use crate::engine::model::tiny::TinySpec;
use crate::engine::model::{Llama, Weights};
use crate::engine::rng;

/// A tiny model built in memory (no files) in `dtype`.
pub fn tiny_model(spec: &TinySpec, seed: u64, dtype: DType) -> Llama {
    let tensors = spec.weights(seed).unwrap().into_iter().collect();
    let w = Weights::from_tensors(tensors, dtype, &Device::Cpu);
    Llama::load(spec.config(), &w).unwrap()
}

/// Random token ids `[b, t]`.
pub fn random_ids(b: usize, t: usize, vocab: usize, seed: u64) -> Tensor {
    let mut g = rng::stream(seed, "ids");
    let ids: Vec<u32> = (0..b * t)
        .map(|_| g.random_range(0..vocab as u32))
        .collect();
    Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap()
}

/// Gives every lora_B a small non-zero value so gradients reach lora_A (B = 0 at init
/// makes dL/dA exactly zero).
pub fn perturb_b(set: &AdapterSet, seed: u64) {
    for (name, var) in set.vars() {
        if name.ends_with("lora_B.weight") {
            let mut g = rng::stream(seed, name);
            let vals: Vec<f64> = (0..var.elem_count())
                .map(|_| g.random_range(-0.1..0.1))
                .collect();
            let t = Tensor::from_vec(vals, var.shape(), var.device()).unwrap();
            var.set(&t.to_dtype(var.dtype()).unwrap()).unwrap();
        }
    }
}

/// A plain test run: `steps` AdamW steps at a constant `lr`, clipped at 1, no accumulation,
/// evals, checkpoints or LISA (tests override fields with struct update syntax).
pub fn constant_lr(steps: u64, lr: f64) -> crate::engine::trainer::TrainConfig {
    use crate::engine::optim::{OptimizerConfig, Schedule, ScheduleKind};
    crate::engine::trainer::TrainConfig {
        max_steps: steps,
        grad_accum: 1,
        schedule: Schedule {
            peak_lr: lr,
            warmup_steps: 0,
            total_steps: steps,
            kind: ScheduleKind::Constant,
        },
        optimizer: OptimizerConfig::default(),
        max_grad_norm: Some(1.0),
        loraplus_ratio: None,
        eval_every: None,
        checkpoint_every: None,
        seed: 0,
        lisa: None,
    }
}

/// Mean next-token cross-entropy over all positions.
pub fn lm_loss(model: &Llama, ids: &Tensor, mode: &crate::engine::adapters::Mode) -> Tensor {
    let (b, t) = ids.dims2().unwrap();
    let logits = model
        .forward(&ids.narrow(1, 0, t - 1).unwrap(), mode)
        .unwrap();
    let v = logits.dim(2).unwrap();
    let logits = logits.reshape((b * (t - 1), v)).unwrap();
    let labels = ids.narrow(1, 1, t - 1).unwrap().flatten_all().unwrap();
    let mask = Tensor::ones(b * (t - 1), logits.dtype(), &Device::Cpu).unwrap();
    let sum = crate::engine::model::ops::masked_nll_sum(&logits, &labels, &mask).unwrap();
    (sum / (b * (t - 1)) as f64).unwrap()
}

/// Max |a − b| over max |b|, in f64.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let max = |t: &Tensor| t.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    max(&(&a - &b).unwrap()) / max(&b).max(1e-12)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Resumes `trainer` from `resume` (if any), runs it with checkpoints under `root`, cancelling
/// right after step `stop` (if any); returns each step's `(step, loss)`.
pub fn run_steps<O: crate::engine::trainer::Objective>(
    trainer: &mut crate::engine::trainer::Trainer<O>,
    resume: Option<&std::path::Path>,
    stop: Option<u64>,
    root: &std::path::Path,
) -> Vec<(u64, f64)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    if let Some(dir) = resume {
        trainer.resume(dir).unwrap();
    }
    let cancel = AtomicBool::new(false);
    let mut losses = Vec::new();
    trainer
        .run(&cancel, Some(root), &mut |e| {
            if let crate::engine::trainer::Event::Step(m) = e {
                losses.push((m.step, m.loss));
                if Some(m.step) == stop {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        })
        .unwrap();
    losses
}
