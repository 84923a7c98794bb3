//! The one training loop, for every objective (causal LM and classification): gradient
//! accumulation, clipping, scheduled AdamW with LoRA+, periodic eval, progress events,
//! stopping (cancel, pause, drain, stop-early), and checkpoints that resume exactly. The
//! tests, the benchmark and the worker all run this loop.
//!
//! Exact resume holds because every random choice is a pure function of the seed and a
//! counter: the data order of `(seed, epoch)`, and dropout masks of `(seed, forward pass)`.
//! A checkpoint therefore only needs the adapter, the optimizer moments, the step and the
//! data cursor; the "RNG state" it records is the seed plus those counters.

mod checkpoint;
pub mod lisa;
mod objective;
pub mod preference;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use checkpoint::ADAPTER_FILE;
pub use objective::{
    CausalLmObjective, ClassificationObjective, EvalSums, Objective, Pass, loss_and_grads,
};

use crate::engine::adapters::{AdapterError, AdapterSet, Mode};
use crate::engine::data::{DataError, Loader};
use crate::engine::model::bert::{Bert, ClassifierHead};
use crate::engine::model::{CausalLm, ModelError};
use crate::engine::optim::{Grads, Mezo, OptimError, Optimizer, OptimizerConfig, Schedule};

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
    pub optimizer: OptimizerConfig,
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
    /// LISA: update a few sampled decoder layers at a time (full fine-tuning only).
    pub lisa: Option<lisa::LisaConfig>,
}

/// Metrics of one optimizer step, for the agent to stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// 1-based number of the step just taken.
    pub step: u64,
    /// Token-mean loss over the accumulation window.
    pub loss: f64,
    /// The step size applied: the schedule's learning rate, or for a learning-rate-free
    /// optimizer the step it adapted (times the schedule's factor).
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens_per_sec: f64,
    /// The objective's further metrics, window means (preference rewards); empty for the
    /// others and for zeroth-order steps.
    pub extra: Vec<(&'static str, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EvalMetrics {
    pub step: u64,
    pub loss: f64,
    pub perplexity: f64,
    /// Classification only.
    pub accuracy: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Step(StepMetrics),
    Eval(EvalMetrics),
    Checkpoint { step: u64, dir: PathBuf },
}

/// How a run should stop before its last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// Stop now and write nothing (cancel, lost lease).
    Abandon,
    /// Checkpoint, then stop (pause, drain): the next attempt resumes from there.
    Suspend,
    /// Stop now; the adapter trained so far is the result (a sweep's early stop).
    Finish,
}

/// Polled before every step.
pub trait StopSignal {
    fn halt(&self) -> Option<Halt>;
}

/// A plain flag cancels.
impl StopSignal for AtomicBool {
    fn halt(&self) -> Option<Halt> {
        self.load(Ordering::Relaxed).then_some(Halt::Abandon)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed {
        steps: u64,
    },
    Cancelled {
        step: u64,
    },
    /// Stopped after handing over a checkpoint of `step`.
    Suspended {
        step: u64,
    },
    StoppedEarly {
        step: u64,
    },
}

/// How parameters are updated: from gradients, from gradients of a sampled subset of layers
/// (LISA), or from two losses (zeroth order).
enum Rule {
    Gradient(Optimizer),
    Layerwise(lisa::Lisa),
    ZerothOrder(Mezo),
}

/// The training loop over an [`Objective`].
pub struct Trainer<O: Objective> {
    objective: O,
    rule: Rule,
    train: Loader<O::Example>,
    eval: Option<Loader<O::Example>>,
    config: TrainConfig,
    step: u64,
    /// The step of the last checkpoint handed out, so a pause right after one reuses it.
    last_checkpoint: Option<u64>,
}

impl<'a, M: CausalLm> Trainer<CausalLmObjective<'a, M>> {
    /// Causal-LM training of `adapters` on `model`.
    pub fn new(
        model: &'a M,
        adapters: &'a AdapterSet,
        train: Loader,
        eval: Option<Loader>,
        config: TrainConfig,
    ) -> Result<Self, TrainError> {
        Self::with_objective(CausalLmObjective { model, adapters }, train, eval, config)
    }
}

impl<'a> Trainer<ClassificationObjective<'a>> {
    /// Classification training of `adapters` and `head` on `model`.
    pub fn classifier(
        model: &'a Bert,
        adapters: &'a AdapterSet,
        head: &'a ClassifierHead,
        train: Loader<crate::engine::data::ClassExample>,
        eval: Option<Loader<crate::engine::data::ClassExample>>,
        config: TrainConfig,
    ) -> Result<Self, TrainError> {
        let objective = ClassificationObjective::new(model, adapters, head);
        Self::with_objective(objective, train, eval, config)
    }
}

impl<O: Objective> Trainer<O> {
    pub fn with_objective(
        objective: O,
        train: Loader<O::Example>,
        eval: Option<Loader<O::Example>>,
        config: TrainConfig,
    ) -> Result<Self, TrainError> {
        let rule = match (config.optimizer, config.lisa) {
            (OptimizerConfig::Mezo(c), _) => Rule::ZerothOrder(Mezo::new(c, config.seed)),
            (other, Some(l)) => Rule::Layerwise(lisa::Lisa::new(l, other, config.seed)),
            (other, None) => {
                let mut optimizer = Optimizer::new(objective.vars(), other)?;
                if let Some(ratio) = config.loraplus_ratio {
                    optimizer.set_lr_scale(|n| n.ends_with("lora_B.weight"), ratio);
                }
                Rule::Gradient(optimizer)
            }
        };
        Ok(Self {
            objective,
            rule,
            train,
            eval,
            config,
            step: 0,
            last_checkpoint: None,
        })
    }

    /// Bytes of optimizer state held now (0 for MeZO, the active layers' only for LISA).
    pub fn optimizer_state_bytes(&self) -> usize {
        match &self.rule {
            Rule::Gradient(o) => o.state_bytes(),
            Rule::Layerwise(l) => l.current().map_or(0, Optimizer::state_bytes),
            Rule::ZerothOrder(_) => 0,
        }
    }

    /// Continues at step `step` with this trainer's fresh optimizer (a chain link's start):
    /// the schedule, dropout masks and checkpoints pick up there; the loaders are wherever
    /// the previous link left them.
    pub fn start_at(&mut self, step: u64) {
        self.step = step;
    }

    /// The loaders, to build the next trainer of a chain over them.
    pub fn into_loaders(self) -> (Loader<O::Example>, Option<Loader<O::Example>>) {
        (self.train, self.eval)
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Whether an eval set was given.
    pub fn has_eval(&self) -> bool {
        self.eval.is_some()
    }

    /// Runs until `max_steps` or until `stop` asks to halt (polled before every step),
    /// reporting through `on_event`. Evaluates every `eval_every` steps and after the last;
    /// checkpoints every `checkpoint_every` steps into `checkpoint_root/step-N`.
    pub fn run(
        &mut self,
        stop: &dyn StopSignal,
        checkpoint_root: Option<&Path>,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<Outcome, TrainError> {
        while self.step < self.config.max_steps {
            match stop.halt() {
                None => {}
                Some(Halt::Abandon) => return Ok(Outcome::Cancelled { step: self.step }),
                Some(Halt::Finish) => return Ok(Outcome::StoppedEarly { step: self.step }),
                Some(Halt::Suspend) => {
                    if let Some(root) = checkpoint_root
                        && self.last_checkpoint != Some(self.step)
                    {
                        self.checkpoint_into(root, on_event)?;
                    }
                    return Ok(Outcome::Suspended { step: self.step });
                }
            }
            let metrics = self.train_step()?;
            on_event(&Event::Step(metrics));
            let last = self.step == self.config.max_steps;
            let due = |every: Option<u64>| {
                last || every.is_some_and(|n| self.step.is_multiple_of(n.max(1)))
            };
            if self.eval.is_some() && due(self.config.eval_every) {
                let m = self.evaluate()?;
                on_event(&Event::Eval(m));
            }
            // Every `checkpoint_every` steps, the last one included when it falls on a
            // multiple (a sweep's rung run sets it so promotion resumes from its end); a
            // finished run's result is its adapter, not a checkpoint.
            // A WSD run also checkpoints the end of its stable phase: a longer run (a
            // sweep's next rung, an extension) continues from there exactly.
            let stable_end = self.config.schedule.stable_until() == Some(self.step)
                && self.step < self.config.max_steps
                && self.config.checkpoint_every.is_some();
            if let Some(root) = checkpoint_root
                && (stable_end
                    || self
                        .config
                        .checkpoint_every
                        .is_some_and(|n| self.step.is_multiple_of(n.max(1))))
            {
                self.checkpoint_into(root, on_event)?;
            }
        }
        Ok(Outcome::Completed { steps: self.step })
    }

    fn checkpoint_into(
        &mut self,
        root: &Path,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<(), TrainError> {
        let dir = root.join(format!("step-{}", self.step));
        self.save_checkpoint(&dir)?;
        self.last_checkpoint = Some(self.step);
        on_event(&Event::Checkpoint {
            step: self.step,
            dir,
        });
        Ok(())
    }

    /// One optimizer step over `grad_accum` micro-batches.
    pub fn train_step(&mut self) -> Result<StepMetrics, TrainError> {
        let started = Instant::now();
        let device = self.objective.device().clone();
        let accum = self.config.grad_accum.max(1);
        let batches = (0..accum)
            .map(|_| self.train.next_batch(&device))
            .collect::<Result<Vec<_>, _>>()?;
        // Normalize by the window's target count so every target weighs the same no
        // matter how targets fall into micro-batches.
        let targets: f64 = batches.iter().map(O::targets).sum();
        let denom = if targets > 0.0 { targets } else { 1.0 };
        let tokens: usize = batches.iter().map(O::tokens).sum();
        let scheduled = self.config.schedule.lr_at(self.step);
        let mut extra: Vec<(&'static str, f64)> = Vec::new();
        let (seed, step, max_grad_norm) = (self.config.seed, self.step, self.config.max_grad_norm);
        // The window's summed loss, gradients and further metrics, over every micro-batch.
        let window = |objective: &O,
                      extra: &mut Vec<(&'static str, f64)>|
         -> Result<(f64, Grads), TrainError> {
            let mut grads = Grads::default();
            let mut loss_total = 0.0;
            for (i, batch) in batches.iter().enumerate() {
                let mode = Mode::Train {
                    seed,
                    pass: step * accum as u64 + i as u64,
                };
                let pass = objective.loss_and_grads(batch, &mode, 1.0 / denom)?;
                loss_total += pass.loss;
                for (name, v) in pass.stats {
                    match extra.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, sum)) => *sum += v,
                        None => extra.push((name, v)),
                    }
                }
                grads.accumulate(pass.grads)?;
            }
            if !loss_total.is_finite() {
                return Err(TrainError::NonFinite {
                    step,
                    loss: loss_total,
                });
            }
            Ok((loss_total, grads))
        };
        let clip = |grads: &mut Grads| match max_grad_norm {
            Some(max) => grads.clip(max),
            None => grads.global_norm(),
        };
        let (loss_total, grad_norm, lr) = match &mut self.rule {
            Rule::Gradient(optimizer) => {
                let (loss, mut grads) = window(&self.objective, &mut extra)?;
                let norm = clip(&mut grads)?;
                (loss, norm, optimizer.step(&grads, scheduled)?)
            }
            Rule::Layerwise(lisa) => {
                lisa.enter(self.objective.vars(), step)?;
                let (loss, mut grads) = window(&self.objective, &mut extra)?;
                // Clipping sees the active layers' gradients only.
                lisa.retain_active(&mut grads);
                let norm = clip(&mut grads)?;
                (loss, norm, lisa.optimizer()?.step(&grads, scheduled)?)
            }
            Rule::ZerothOrder(mezo) => {
                // Both perturbed passes see the same dropout masks (the same pass numbers);
                // probes record no autograd graph.
                let objective = &self.objective;
                let mut loss = || -> Result<f64, OptimError> {
                    let mut total = 0.0;
                    for (i, batch) in batches.iter().enumerate() {
                        let mode = Mode::Probe {
                            seed,
                            pass: step * accum as u64 + i as u64,
                        };
                        total += objective
                            .loss(batch, &mode, 1.0 / denom)
                            .map_err(|e| OptimError::State(e.to_string()))?;
                    }
                    Ok(total)
                };
                let m = mezo.step(self.objective.vars(), step, scheduled, &mut loss)?;
                if !m.loss.is_finite() || !m.projected_grad.is_finite() {
                    return Err(TrainError::NonFinite { step, loss: m.loss });
                }
                // No gradient exists; the directional derivative's size stands in for it.
                (m.loss, m.projected_grad.abs(), scheduled)
            }
        };
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
            extra,
        })
    }

    /// Mean loss (with perplexity, and accuracy for classification) over the whole eval
    /// set, without dropout; NaN when there is no eval set.
    pub fn evaluate(&self) -> Result<EvalMetrics, TrainError> {
        let Some(eval) = &self.eval else {
            return Ok(EvalMetrics {
                step: self.step,
                loss: f64::NAN,
                perplexity: f64::NAN,
                accuracy: None,
            });
        };
        let batches = eval.sequential_batches(self.objective.device())?;
        let sums = self.objective.evaluate(&batches)?;
        Ok(EvalMetrics {
            step: self.step,
            loss: sums.loss,
            perplexity: sums.loss.exp(),
            accuracy: sums.accuracy,
        })
    }

    /// Every trainable parameter by PEFT key.
    pub fn vars(&self) -> &std::collections::BTreeMap<String, candle_core::Var> {
        self.objective.vars()
    }
}
