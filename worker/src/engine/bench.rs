//! Training-throughput benchmark (issue 3): LoRA r=16 (alpha 32) on all seven linear
//! projections of a random-weight Llama, f32, AdamW lr 1e-3, causal-LM loss over every
//! position — the same work as `bench/src/train/torch_peft_lora_bench.py`, so the two
//! tokens/s figures compare directly. Each step goes through the trainer's own
//! [`loss_and_grads`]; times are split into forward, backward and optimizer (AdamW) to
//! show where the time goes.
//!
//! Threads: candle's CPU kernels follow `RAYON_NUM_THREADS`; set it (e.g. to 2) before
//! the first tensor op, as the bench binary does.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use crate::engine::adapters::{AdapterConfig, AdapterSet, Mode, TargetModules};
use crate::engine::data::Batch;
use crate::engine::model::tiny::TinySpec;
use crate::engine::model::{Llama, Weights};
use crate::engine::optim::{AdamWConfig, Optimizer, OptimizerConfig};
use crate::engine::rng;
use crate::engine::trainer::{TrainError, loss_and_grads};

/// A model shape plus the batch it trains on.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchShape {
    pub name: &'static str,
    pub spec: TinySpec,
    pub batch: usize,
    pub seq: usize,
}

/// The shapes of `torch_peft_lora_bench.py`: `tiny` (~4.6M params, batch 8 × 128) and
/// `smollm135` (SmolLM-135M architecture, batch 4 × 256).
pub fn shape(name: &str) -> Option<BenchShape> {
    match name {
        "tiny" => Some(BenchShape {
            name: "tiny",
            spec: TinySpec {
                hidden: 256,
                intermediate: 688,
                layers: 4,
                heads: 4,
                kv_heads: 4,
                vocab: 4096,
                tie_embeddings: false,
                rope_theta: 10_000.0,
                max_positions: 2048,
            },
            batch: 8,
            seq: 128,
        }),
        "smollm135" => Some(BenchShape {
            name: "smollm135",
            spec: TinySpec {
                hidden: 576,
                intermediate: 1536,
                layers: 30,
                heads: 9,
                kv_heads: 3,
                vocab: 49152,
                tie_embeddings: true,
                rope_theta: 10_000.0,
                max_positions: 2048,
            },
            batch: 4,
            seq: 256,
        }),
        _ => None,
    }
}

/// Result of [`run`]: mean seconds per step and their split.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    pub shape: String,
    pub steps: usize,
    pub tokens_per_sec: f64,
    pub step_s: f64,
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    pub trainable_params: usize,
    pub last_loss: f64,
}

/// Trains `steps` timed steps after `warmup` untimed ones and reports tokens/s
/// (`batch·seq` tokens per step, as the PyTorch anchor counts them).
pub fn run(shape: &BenchShape, warmup: usize, steps: usize) -> Result<BenchResult, TrainError> {
    let dev = Device::Cpu;
    let tensors = shape.spec.weights(0)?.into_iter().collect();
    let weights = Weights::from_tensors(tensors, DType::F32, &dev);
    let mut model = Llama::load(shape.spec.config(), &weights)?;
    let cfg = AdapterConfig::lora(
        16,
        32.0,
        TargetModules::names([
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]),
    );
    let set = AdapterSet::attach(&mut model, &cfg)?;
    let mut opt = Optimizer::new(
        set.vars(),
        OptimizerConfig::AdamW(AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        }),
    )?;
    let (b, t) = (shape.batch, shape.seq);
    let mut g = rng::stream(0, "bench/ids");
    let ids: Vec<u32> = (0..b * t)
        .map(|_| g.random_range(0..shape.spec.vocab as u32))
        .collect();
    let ids = Tensor::from_vec(ids, (b, t), &dev)?;
    let targets = b * (t - 1);
    let batch = Batch {
        input_ids: ids.narrow(1, 0, t - 1)?.contiguous()?,
        labels: ids.narrow(1, 1, t - 1)?.flatten_all()?,
        mask: Tensor::ones(targets, DType::F32, &dev)?,
        num_targets: targets,
        target_weight: targets as f64,
        num_tokens: targets,
    };
    let (mut fwd, mut bwd, mut optim) = (0.0, 0.0, 0.0);
    let mut last_loss = f64::NAN;
    for i in 0..warmup + steps {
        let pass = loss_and_grads(&model, &set, &batch, &Mode::Eval, 1.0 / targets as f64)?;
        last_loss = pass.loss;
        let t2 = Instant::now();
        opt.step(&pass.grads, 1e-3)?;
        if i >= warmup {
            fwd += pass.forward.as_secs_f64();
            bwd += pass.backward.as_secs_f64();
            optim += t2.elapsed().as_secs_f64();
        }
    }
    let n = steps.max(1) as f64;
    let step_s = (fwd + bwd + optim) / n;
    Ok(BenchResult {
        shape: shape.name.to_string(),
        steps,
        tokens_per_sec: if step_s > 0.0 {
            (b * t) as f64 / step_s
        } else {
            0.0
        },
        step_s,
        forward_s: fwd / n,
        backward_s: bwd / n,
        optimizer_s: optim / n,
        trainable_params: set.num_params(),
        last_loss,
    })
}

/// The benchmark's closing line for one shape, in the exact format.
pub fn summary_line(shape: &str, tuna_tok_s: f64, pytorch_tok_s: Option<f64>) -> String {
    match pytorch_tok_s {
        Some(p) if p > 0.0 => format!(
            "train {shape}: tuna {tuna_tok_s:.1} tok/s, pytorch {p:.1} tok/s, ratio {:.2}",
            tuna_tok_s / p
        ),
        _ => format!(
            "train {shape}: tuna {tuna_tok_s:.1} tok/s, pytorch unavailable tok/s, ratio n/a"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_runs_on_a_small_shape_and_formats_its_line() {
        let mut s = shape("tiny").unwrap();
        s.spec.layers = 1;
        s.spec.vocab = 128;
        s.spec.hidden = 32;
        s.spec.intermediate = 48;
        s.batch = 2;
        s.seq = 8;
        let r = run(&s, 1, 2).unwrap();
        assert!(r.tokens_per_sec > 0.0 && r.last_loss.is_finite());
        // LoRA r=16 on 4 attention (32→32) and 3 MLP projections.
        assert_eq!(r.trainable_params, 16 * (4 * 64 + 3 * (32 + 48)));
        assert!(shape("smollm135").is_some() && shape("nope").is_none());
        assert_eq!(
            summary_line("tiny", 1000.0, Some(500.0)),
            "train tiny: tuna 1000.0 tok/s, pytorch 500.0 tok/s, ratio 2.00"
        );
        assert_eq!(
            summary_line("tiny", 1000.0, None),
            "train tiny: tuna 1000.0 tok/s, pytorch unavailable tok/s, ratio n/a"
        );
    }

    /// The real shapes; run in release: `RAYON_NUM_THREADS=2 cargo test -p tuna-worker
    /// --release engine::bench -- --ignored --nocapture` (TUNA_BENCH_SHAPES=tiny,smollm135).
    #[test]
    #[ignore = "benchmark: minutes in release, far longer in debug"]
    fn bench_real_shapes() {
        let shapes = std::env::var("TUNA_BENCH_SHAPES").unwrap_or_else(|_| "tiny".into());
        for name in shapes.split(',') {
            let s = shape(name).unwrap();
            let r = run(&s, 1, 3).unwrap();
            eprintln!("{r:?}");
            eprintln!("{}", summary_line(name, r.tokens_per_sec, None));
        }
    }
}
