//! What the one training loop optimises: next-token prediction on a decoder, or sequence
//! classification on an encoder with a head. An objective owns the loss, its gradients and
//! the evaluation; the loop owns everything else (accumulation, clipping, schedule,
//! optimizer, checkpoints, stopping).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use candle_core::{D, DType, Device, Tensor, Var};

use super::TrainError;
use crate::engine::adapters::{AdapterSet, Mode};
use crate::engine::data::{Batch, Batchable, ClassBatch, ClassExample, Example};
use crate::engine::model::CausalLm;
use crate::engine::model::bert::{Bert, ClassifierHead};
use crate::engine::optim::Grads;

/// One micro-batch's loss, its gradients, and where the time went.
#[derive(Debug)]
pub struct Pass {
    /// `loss_scale · Σ loss over the batch's targets`.
    pub loss: f64,
    pub grads: Grads,
    /// Further per-target metrics as `scale · Σ` over the batch (preference rewards), so the
    /// loop averages them over the window exactly as it averages the loss.
    pub stats: Vec<(&'static str, f64)>,
    pub forward: Duration,
    pub backward: Duration,
}

/// Loss over a whole evaluation set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalSums {
    /// Mean loss per target (token or example).
    pub loss: f64,
    /// Share of examples classified correctly (classification only).
    pub accuracy: Option<f64>,
}

/// A training objective over a model with trainable parameters.
pub trait Objective {
    type Example: Batchable;

    fn device(&self) -> &Device;
    /// Every trainable parameter by its PEFT key: what the optimizer steps and checkpoints keep.
    fn vars(&self) -> &BTreeMap<String, Var>;
    /// Total loss weight of a micro-batch (target tokens with prompt tokens weighted, or
    /// examples): the window's mean divides by their sum so every target weighs the same
    /// however targets fall into micro-batches.
    fn targets(batch: &<Self::Example as Batchable>::Batch) -> f64;
    /// Real tokens in a micro-batch, for throughput.
    fn tokens(batch: &<Self::Example as Batchable>::Batch) -> usize;
    /// `scale · Σ loss` of `batch` and its gradient for every var.
    fn loss_and_grads(
        &self,
        batch: &<Self::Example as Batchable>::Batch,
        mode: &Mode,
        scale: f64,
    ) -> Result<Pass, TrainError>;
    /// `scale · Σ loss` of `batch`, forward only (zeroth-order training).
    fn loss(
        &self,
        batch: &<Self::Example as Batchable>::Batch,
        mode: &Mode,
        scale: f64,
    ) -> Result<f64, TrainError>;
    /// Mean loss (and accuracy) over `batches`, without dropout.
    fn evaluate(
        &self,
        batches: &[<Self::Example as Batchable>::Batch],
    ) -> Result<EvalSums, TrainError>;
    /// The trainable tensors as checkpointed.
    fn tensors(&self) -> BTreeMap<String, Tensor>;
    /// Restores tensors written by [`Self::tensors`].
    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError>;
}

/// Next-token prediction on a decoder with PEFT adapters.
pub struct CausalLmObjective<'a, M: CausalLm> {
    pub model: &'a M,
    pub adapters: &'a AdapterSet,
}

impl<M: CausalLm> Objective for CausalLmObjective<'_, M> {
    type Example = Example;

    fn device(&self) -> &Device {
        self.model.device()
    }

    fn vars(&self) -> &BTreeMap<String, Var> {
        self.adapters.vars()
    }

    fn targets(batch: &Batch) -> f64 {
        batch.target_weight
    }

    fn tokens(batch: &Batch) -> usize {
        batch.num_tokens
    }

    fn loss_and_grads(&self, batch: &Batch, mode: &Mode, scale: f64) -> Result<Pass, TrainError> {
        loss_and_grads(self.model, self.adapters, batch, mode, scale)
    }

    fn loss(&self, batch: &Batch, mode: &Mode, scale: f64) -> Result<f64, TrainError> {
        crate::engine::pool::install(|| {
            let nll = self
                .model
                .masked_nll_sum_flat(&batch.input_ids, &batch.labels, &batch.mask, mode)?
                .detach();
            Ok(nll.to_dtype(DType::F64)?.to_scalar::<f64>()? * scale)
        })
    }

    fn evaluate(&self, batches: &[Batch]) -> Result<EvalSums, TrainError> {
        let (mut sum, mut n) = (0.0, 0usize);
        for batch in batches {
            let s = self
                .model
                .masked_nll_sum_flat(&batch.input_ids, &batch.labels, &batch.mask, &Mode::Eval)?
                .detach();
            sum += s.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            n += batch.num_targets;
        }
        Ok(EvalSums {
            loss: sum / n.max(1) as f64,
            accuracy: None,
        })
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.adapters.tensors()
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        Ok(self.adapters.load_tensors(tensors)?)
    }
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
        if let Some(pass) = model.checkpointed_pass(
            &batch.input_ids,
            &batch.labels,
            &batch.mask,
            mode,
            loss_scale,
            adapters.vars(),
        )? {
            return Ok(Pass {
                loss: pass.loss,
                grads: take_grads(pass.grads, adapters)?,
                stats: Vec::new(),
                // Forward and backward interleave; the whole pass counts as backward.
                forward: std::time::Duration::ZERO,
                backward: started.elapsed(),
            });
        }
        if let Some(tape) = model.loss_tape(&batch.input_ids, &batch.labels, &batch.mask, mode)? {
            let loss = tape.nll_sum * loss_scale;
            let forward = started.elapsed();
            let grads = take_grads(tape.backward(loss_scale)?, adapters)?;
            return Ok(Pass {
                loss,
                grads,
                stats: Vec::new(),
                forward,
                backward: started.elapsed() - forward,
            });
        }
        let nll = model.masked_nll_sum_flat(&batch.input_ids, &batch.labels, &batch.mask, mode)?;
        autograd_pass(&(nll * loss_scale)?, adapters.vars(), started)
    })
}

/// The gradient of every adapter parameter out of `all`; a missing one is a cut graph.
fn take_grads(
    mut all: BTreeMap<String, Tensor>,
    adapters: &AdapterSet,
) -> Result<Grads, TrainError> {
    let mut grads = Grads::default();
    for name in adapters.vars().keys() {
        let g = all
            .remove(name)
            .ok_or_else(|| TrainError::GradientCut(name.clone()))?;
        grads.0.insert(name.clone(), g);
    }
    Ok(grads)
}

/// The value of `loss` (timed as the forward pass since `started`) and, through candle's
/// autograd, its gradient for every var in `vars`.
pub(super) fn autograd_pass(
    loss: &Tensor,
    vars: &BTreeMap<String, Var>,
    started: Instant,
) -> Result<Pass, TrainError> {
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let forward = started.elapsed();
    let store = loss.backward()?;
    let grads = Grads::collect(&store, vars).map_err(TrainError::GradientCut)?;
    Ok(Pass {
        loss: value,
        grads,
        stats: Vec::new(),
        forward,
        backward: started.elapsed() - forward,
    })
}

/// Sequence classification: an encoder with adapters, mean pooling and a trained head.
pub struct ClassificationObjective<'a> {
    model: &'a Bert,
    adapters: &'a AdapterSet,
    head: &'a ClassifierHead,
    vars: BTreeMap<String, Var>,
}

impl<'a> ClassificationObjective<'a> {
    pub fn new(model: &'a Bert, adapters: &'a AdapterSet, head: &'a ClassifierHead) -> Self {
        let mut vars = adapters.vars().clone();
        vars.extend(head.vars());
        Self {
            model,
            adapters,
            head,
            vars,
        }
    }

    /// Per-example negative log-likelihood `[batch]` and the logits.
    fn nll(&self, batch: &ClassBatch, mode: &Mode) -> Result<(Tensor, Tensor), TrainError> {
        let logits =
            self.model
                .classify(&batch.input_ids, &batch.attention_mask, self.head, mode)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let nll = logp.gather(&batch.labels.unsqueeze(1)?, 1)?.neg()?;
        Ok((nll, logits))
    }
}

impl Objective for ClassificationObjective<'_> {
    type Example = ClassExample;

    fn device(&self) -> &Device {
        self.model.device()
    }

    fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    fn targets(batch: &ClassBatch) -> f64 {
        batch.len as f64
    }

    fn tokens(batch: &ClassBatch) -> usize {
        batch.num_tokens
    }

    fn loss_and_grads(
        &self,
        batch: &ClassBatch,
        mode: &Mode,
        scale: f64,
    ) -> Result<Pass, TrainError> {
        let started = Instant::now();
        let (nll, _) = self.nll(batch, mode)?;
        autograd_pass(&(nll.sum_all()? * scale)?, &self.vars, started)
    }

    fn loss(&self, batch: &ClassBatch, mode: &Mode, scale: f64) -> Result<f64, TrainError> {
        let (nll, _) = self.nll(batch, mode)?;
        Ok(nll.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? * scale)
    }

    fn evaluate(&self, batches: &[ClassBatch]) -> Result<EvalSums, TrainError> {
        let (mut loss, mut correct, mut n) = (0.0, 0usize, 0usize);
        for batch in batches {
            let (nll, logits) = self.nll(batch, &Mode::Eval)?;
            loss += nll.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let gold = batch.labels.to_vec1::<u32>()?;
            correct += pred.iter().zip(&gold).filter(|(p, g)| p == g).count();
            n += batch.len;
        }
        let n = n.max(1) as f64;
        Ok(EvalSums {
            loss: loss / n,
            accuracy: Some(correct as f64 / n),
        })
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        let mut t = self.adapters.tensors();
        for (k, v) in self.head.vars() {
            t.insert(k, v.as_detached_tensor());
        }
        t
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        let head_keys = self.head.vars();
        let adapters: HashMap<String, Tensor> = tensors
            .iter()
            .filter(|(k, _)| !head_keys.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.adapters.load_tensors(&adapters)?;
        for (k, var) in &head_keys {
            let t = tensors
                .get(k)
                .ok_or_else(|| crate::engine::adapters::AdapterError::MissingTensor(k.clone()))?;
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}
