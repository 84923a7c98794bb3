//! The training loop: gradient accumulation, clipping, scheduled AdamW, periodic eval,
//! progress events, cancellation, and checkpoints that resume exactly.
//!
//! Exact resume holds because every random choice is a pure function of the seed and a
//! counter: the data order of `(seed, epoch)`, and dropout masks of `(seed, forward pass)`.
//! A checkpoint therefore only needs the adapter, the optimizer moments, the step and the
//! data cursor; the "RNG state" it records is the seed plus those counters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::engine::adapters::{AdapterError, AdapterSet, Mode};
use crate::engine::data::{Batch, Cursor, DataError, Loader};
use crate::engine::model::{CausalLm, ModelError};
use crate::engine::optim::{AdamW, AdamWConfig, Grads, OptimError, Schedule};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error("no gradient reached `{0}`: the graph is cut by an op without backward")]
    GradientCut(String),
    #[error("loss is not finite ({loss}) at step {step}")]
    NonFinite { step: u64, loss: f64 },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("tensor op failed: {0}")]
    Candle(#[from] candle_core::Error),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps to run in total.
    pub max_steps: u64,
    /// Micro-batches summed into one optimizer step.
    pub grad_accum: usize,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    /// Global-norm clipping threshold; `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// LoRA+: learning-rate multiplier for `lora_B` (≈16 in the paper); `None` = plain.
    pub loraplus_ratio: Option<f64>,
    /// Evaluate every N optimizer steps (and after the last), if an eval set is given.
    pub eval_every: Option<u64>,
    /// Checkpoint every N optimizer steps, if a checkpoint directory is given.
    pub checkpoint_every: Option<u64>,
    /// Seeds dropout masks (data order is seeded by the [`Loader`]).
    pub seed: u64,
}

/// Metrics of one optimizer step, for the agent to stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// 1-based number of the step just taken.
    pub step: u64,
    /// Token-mean loss over the accumulation window.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens_per_sec: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EvalMetrics {
    pub step: u64,
    pub loss: f64,
    pub perplexity: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Step(StepMetrics),
    Eval(EvalMetrics),
    Checkpoint { step: u64, dir: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed { steps: u64 },
    Cancelled { step: u64 },
}

/// What `trainer_state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    cursor: Cursor,
    seed: u64,
    /// Dropout masks are drawn per forward pass; this is the next pass number.
    next_pass: u64,
}

pub const ADAPTER_FILE: &str = "adapter_model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";

/// One micro-batch's loss, its gradients, and where the time went.
#[derive(Debug)]
pub struct Pass {
    /// `loss_scale · Σ mask · nll`.
    pub loss: f64,
    pub grads: Grads,
    pub forward: Duration,
    pub backward: Duration,
}

/// The loss `loss_scale · Σ mask · nll` of `batch` and its gradient for every adapter
/// parameter: through the model's hand-written backward where it has one for these
/// adapters ([`CausalLm::loss_tape`]), else through candle's autograd. The training loop
/// and the train benchmark both step through here, so the benchmark times what trains.
/// Runs on the training pool ([`crate::engine::pool`]).
pub fn loss_and_grads<M: CausalLm>(
    model: &M,
    adapters: &AdapterSet,
    batch: &Batch,
    mode: &Mode,
    loss_scale: f64,
) -> Result<Pass, TrainError> {
    crate::engine::pool::install(|| {
        let started = Instant::now();
        if let Some(tape) = model.loss_tape(&batch.input_ids, &batch.labels, &batch.mask, mode)? {
            let loss = tape.nll_sum * loss_scale;
            let forward = started.elapsed();
            let mut all = tape.backward(loss_scale)?;
            let mut grads = Grads::default();
            for name in adapters.vars().keys() {
                let g = all
                    .remove(name)
                    .ok_or_else(|| TrainError::GradientCut(name.clone()))?;
                grads.0.insert(name.clone(), g);
            }
            return Ok(Pass {
                loss,
                grads,
                forward,
                backward: started.elapsed() - forward,
            });
        }
        let nll = model.masked_nll_sum_flat(&batch.input_ids, &batch.labels, &batch.mask, mode)?;
        let loss = (nll * loss_scale)?;
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let forward = started.elapsed();
        let store = loss.backward()?;
        let grads = Grads::collect(&store, adapters.vars()).map_err(TrainError::GradientCut)?;
        Ok(Pass {
            loss: value,
            grads,
            forward,
            backward: started.elapsed() - forward,
        })
    })
}

pub struct Trainer<'a, M: CausalLm> {
    model: &'a M,
    adapters: &'a AdapterSet,
    optimizer: AdamW,
    train: Loader,
    eval: Option<Loader>,
    config: TrainConfig,
    step: u64,
}

impl<'a, M: CausalLm> Trainer<'a, M> {
    pub fn new(
        model: &'a M,
        adapters: &'a AdapterSet,
        train: Loader,
        eval: Option<Loader>,
        config: TrainConfig,
    ) -> Result<Self, TrainError> {
        let mut optimizer = AdamW::new(adapters.vars(), config.adamw)?;
        if let Some(ratio) = config.loraplus_ratio {
            optimizer.set_lr_scale(|n| n.ends_with("lora_B.weight"), ratio);
        }
        Ok(Self {
            model,
            adapters,
            optimizer,
            train,
            eval,
            config,
            step: 0,
        })
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Runs until `max_steps` or until `cancel` is set (checked before every step),
    /// reporting through `on_event`. Checkpoints go to `checkpoint_root/step-N`.
    pub fn run(
        &mut self,
        cancel: &AtomicBool,
        checkpoint_root: Option<&Path>,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<Outcome, TrainError> {
        while self.step < self.config.max_steps {
            if cancel.load(Ordering::Relaxed) {
                return Ok(Outcome::Cancelled { step: self.step });
            }
            let metrics = self.train_step()?;
            on_event(&Event::Step(metrics));
            let last = self.step == self.config.max_steps;
            let due = |every: Option<u64>| {
                every.is_some_and(|n| self.step.is_multiple_of(n.max(1)) || last)
            };
            if self.eval.is_some() && due(self.config.eval_every) {
                let m = self.evaluate()?;
                on_event(&Event::Eval(m));
            }
            if let Some(root) = checkpoint_root.filter(|_| due(self.config.checkpoint_every)) {
                let dir = root.join(format!("step-{}", self.step));
                self.save_checkpoint(&dir)?;
                on_event(&Event::Checkpoint {
                    step: self.step,
                    dir,
                });
            }
        }
        Ok(Outcome::Completed { steps: self.step })
    }

    /// One optimizer step over `grad_accum` micro-batches.
    pub fn train_step(&mut self) -> Result<StepMetrics, TrainError> {
        let started = Instant::now();
        let device = self.model.device().clone();
        let accum = self.config.grad_accum.max(1);
        let batches = (0..accum)
            .map(|_| self.train.next_batch(&device))
            .collect::<Result<Vec<_>, _>>()?;
        // Normalize by the window's target count so every token weighs the same no
        // matter how tokens fall into micro-batches.
        let targets: usize = batches.iter().map(|b| b.num_targets).sum();
        let denom = targets.max(1) as f64;
        let mut grads = Grads::default();
        let mut loss_total = 0.0;
        let mut tokens = 0;
        for (i, batch) in batches.iter().enumerate() {
            let mode = Mode::Train {
                seed: self.config.seed,
                pass: self.step * accum as u64 + i as u64,
            };
            let pass = loss_and_grads(self.model, self.adapters, batch, &mode, 1.0 / denom)?;
            loss_total += pass.loss;
            tokens += batch.num_tokens;
            grads.accumulate(pass.grads)?;
        }
        if !loss_total.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.step,
                loss: loss_total,
            });
        }
        let grad_norm = match self.config.max_grad_norm {
            Some(max) => grads.clip(max)?,
            None => grads.global_norm()?,
        };
        let lr = self.config.schedule.lr_at(self.step);
        self.optimizer.step(&grads, lr)?;
        self.step += 1;
        let secs = started.elapsed().as_secs_f64();
        Ok(StepMetrics {
            step: self.step,
            loss: loss_total,
            lr,
            grad_norm,
            tokens_per_sec: if secs > 0.0 {
                tokens as f64 / secs
            } else {
                0.0
            },
        })
    }

    /// Token-mean loss and perplexity over the whole eval set (no dropout).
    pub fn evaluate(&self) -> Result<EvalMetrics, TrainError> {
        let Some(eval) = &self.eval else {
            return Ok(EvalMetrics {
                step: self.step,
                loss: f64::NAN,
                perplexity: f64::NAN,
            });
        };
        let (mut sum, mut n) = (0.0, 0usize);
        for batch in eval.sequential_batches(self.model.device())? {
            let s = self.nll_sum(&batch, &Mode::Eval)?.detach();
            sum += s.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            n += batch.num_targets;
        }
        let loss = sum / n.max(1) as f64;
        Ok(EvalMetrics {
            step: self.step,
            loss,
            perplexity: loss.exp(),
        })
    }

    fn nll_sum(&self, batch: &Batch, mode: &Mode) -> Result<Tensor, TrainError> {
        Ok(self
            .model
            .masked_nll_sum_flat(&batch.input_ids, &batch.labels, &batch.mask, mode)?)
    }

    /// Writes adapter, optimizer state and trainer state into `dir`.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), TrainError> {
        let fail = |reason: String| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::tensor::serialize_to_file(
            &self.adapters.tensors(),
            Some(meta),
            &dir.join(ADAPTER_FILE),
        )
        .map_err(|e| fail(e.to_string()))?;
        self.optimizer.save(&dir.join(OPTIMIZER_FILE))?;
        let state = TrainerState {
            step: self.step,
            cursor: self.train.cursor(),
            seed: self.config.seed,
            next_pass: self.step * self.config.grad_accum.max(1) as u64,
        };
        let json = serde_json::to_string_pretty(&state).map_err(|e| fail(e.to_string()))?;
        std::fs::write(dir.join(STATE_FILE), json).map_err(|e| fail(e.to_string()))?;
        Ok(())
    }

    /// Restores a checkpoint written by [`Self::save_checkpoint`] into this trainer (whose
    /// adapters must have the same layout) so training continues exactly where it stopped.
    pub fn resume(&mut self, dir: &Path) -> Result<(), TrainError> {
        let fail = |reason: String| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason,
        };
        let text =
            std::fs::read_to_string(dir.join(STATE_FILE)).map_err(|e| fail(e.to_string()))?;
        let state: TrainerState = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        if state.seed != self.config.seed {
            return Err(fail(format!(
                "was trained with seed {}, this run has seed {}",
                state.seed, self.config.seed
            )));
        }
        let device: Device = self.model.device().clone();
        let bytes = std::fs::read(dir.join(ADAPTER_FILE)).map_err(|e| fail(e.to_string()))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &device)?;
        self.adapters.load_tensors(&tensors)?;
        self.optimizer.load(&dir.join(OPTIMIZER_FILE), &device)?;
        self.train.seek(state.cursor);
        self.step = state.step;
        Ok(())
    }
}
