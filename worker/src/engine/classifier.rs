//! Sequence-classification training for encoder models (BERT + mean pooling + head): the
//! adapters and the head train together with AdamW, batches are drawn in a seeded,
//! epoch-wise shuffled order, evaluation reports loss and accuracy.

use std::collections::BTreeMap;

use candle_core::{D, DType, Tensor, Var};

use crate::engine::adapters::{AdapterSet, Mode};
use crate::engine::data::loader::epoch_order;
use crate::engine::data::{ClassBatch, ClassExample, DataError};
use crate::engine::model::bert::{Bert, ClassifierHead};
use crate::engine::optim::{AdamW, AdamWConfig, Grads, Schedule};
use crate::engine::trainer::TrainError;

/// Loss and accuracy of a classifier on a set of examples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassMetrics {
    pub loss: f64,
    pub accuracy: f64,
}

/// Trains `adapters` (may be empty of vars for head-only training) and `head` on `model`.
pub struct ClassifierTrainer<'a> {
    model: &'a Bert,
    head: &'a ClassifierHead,
    vars: BTreeMap<String, Var>,
    optimizer: AdamW,
    examples: Vec<ClassExample>,
    batch_size: usize,
    pad_id: u32,
    seed: u64,
    schedule: Schedule,
    max_grad_norm: Option<f64>,
    epoch: u64,
    index: usize,
    order: Vec<usize>,
    step: u64,
}

impl<'a> ClassifierTrainer<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &'a Bert,
        adapters: &AdapterSet,
        head: &'a ClassifierHead,
        examples: Vec<ClassExample>,
        batch_size: usize,
        pad_id: u32,
        seed: u64,
        schedule: Schedule,
        adamw: AdamWConfig,
        max_grad_norm: Option<f64>,
    ) -> Result<Self, TrainError> {
        if examples.is_empty() {
            return Err(DataError::Empty.into());
        }
        let mut vars = adapters.vars().clone();
        vars.extend(head.vars());
        let optimizer = AdamW::new(&vars, adamw)?;
        let order = epoch_order(examples.len(), seed, 0);
        Ok(Self {
            model,
            head,
            vars,
            optimizer,
            examples,
            batch_size: batch_size.max(1),
            pad_id,
            seed,
            schedule,
            max_grad_norm,
            epoch: 0,
            index: 0,
            order,
            step: 0,
        })
    }

    /// Every trained var (adapters + head) by PEFT key.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// One optimizer step on the next batch; returns the batch's mean cross-entropy.
    pub fn train_step(&mut self) -> Result<f64, TrainError> {
        if self.index >= self.order.len() {
            self.epoch += 1;
            self.index = 0;
            self.order = epoch_order(self.examples.len(), self.seed, self.epoch);
        }
        let end = (self.index + self.batch_size).min(self.order.len());
        let picked: Vec<&ClassExample> = self.order[self.index..end]
            .iter()
            .map(|&i| &self.examples[i])
            .collect();
        self.index = end;
        let batch = ClassBatch::new(&picked, self.pad_id, self.model.device())?;
        let mode = Mode::Train {
            seed: self.seed,
            pass: self.step,
        };
        let loss = self.loss(&batch, &mode)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.step,
                loss: value,
            });
        }
        let store = loss.backward()?;
        let mut grads = Grads::collect(&store, &self.vars).map_err(TrainError::GradientCut)?;
        if let Some(max) = self.max_grad_norm {
            grads.clip(max)?;
        }
        self.optimizer
            .step(&grads, self.schedule.lr_at(self.step))?;
        self.step += 1;
        Ok(value)
    }

    fn loss(&self, batch: &ClassBatch, mode: &Mode) -> Result<Tensor, TrainError> {
        let logits =
            self.model
                .classify(&batch.input_ids, &batch.attention_mask, self.head, mode)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let nll = logp.gather(&batch.labels.unsqueeze(1)?, 1)?.neg()?;
        Ok(nll.mean_all()?)
    }

    /// Mean loss and accuracy over `examples` (no dropout).
    pub fn evaluate(&self, examples: &[ClassExample]) -> Result<ClassMetrics, TrainError> {
        evaluate(
            self.model,
            self.head,
            examples,
            self.batch_size,
            self.pad_id,
        )
    }
}

/// Mean loss and accuracy of `model` + `head` over `examples`.
pub fn evaluate(
    model: &Bert,
    head: &ClassifierHead,
    examples: &[ClassExample],
    batch_size: usize,
    pad_id: u32,
) -> Result<ClassMetrics, TrainError> {
    let (mut loss, mut correct) = (0.0, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch = ClassBatch::new(&chunk.iter().collect::<Vec<_>>(), pad_id, model.device())?;
        let logits = model.classify(&batch.input_ids, &batch.attention_mask, head, &Mode::Eval)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let nll = logp.gather(&batch.labels.unsqueeze(1)?, 1)?.neg()?;
        loss += nll.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let gold = batch.labels.to_vec1::<u32>()?;
        correct += pred.iter().zip(&gold).filter(|(p, g)| p == g).count();
    }
    let n = examples.len().max(1) as f64;
    Ok(ClassMetrics {
        loss: loss / n,
        accuracy: correct as f64 / n,
    })
}

/// Writes a classification adapter: the PEFT folder of `set` (task `SEQ_CLS`) with the
/// head added under PEFT's `modules_to_save` keys (`base_model.model.classifier.weight`,
/// `.bias`) and `modules_to_save: ["classifier"]` plus our `labels` in the config.
///
/// The head sits on *mean-pooled* states (sentence-transformers style), not on HF
/// `BertForSequenceClassification`'s pooler/CLS output, so outside Tuna the head is only
/// meaningful with the same pooling.
pub fn save_adapter(
    dir: &std::path::Path,
    set: &AdapterSet,
    head: &ClassifierHead,
    labels: &[String],
    base_model_name_or_path: &str,
) -> Result<(), crate::engine::export::ExportError> {
    use crate::engine::export::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, ExportError, save_adapter};
    save_adapter(dir, set, base_model_name_or_path, "SEQ_CLS")?;
    let fail = |path: std::path::PathBuf, reason: String| ExportError::Write { path, reason };
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let text =
        std::fs::read_to_string(&cfg_path).map_err(|e| fail(cfg_path.clone(), e.to_string()))?;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(cfg_path.clone(), e.to_string()))?;
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert("modules_to_save".into(), serde_json::json!(["classifier"]));
        obj.insert("labels".into(), serde_json::json!(labels));
        obj.insert("pooling".into(), serde_json::json!("mean"));
    }
    let text =
        serde_json::to_string_pretty(&cfg).map_err(|e| fail(cfg_path.clone(), e.to_string()))?;
    std::fs::write(&cfg_path, text).map_err(|e| fail(cfg_path.clone(), e.to_string()))?;
    let mut tensors = set.tensors();
    for (k, v) in head.vars() {
        tensors.insert(k, v.as_detached_tensor());
    }
    let path = dir.join(ADAPTER_WEIGHTS);
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(&tensors, Some(meta), &path)
        .map_err(|e| fail(path.clone(), e.to_string()))?;
    Ok(())
}

impl ClassifierHead {
    /// The head saved by [`save_adapter`] (keys `base_model.model.classifier.weight`/`.bias`).
    pub fn from_tensors(
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<Self, crate::engine::adapters::AdapterError> {
        use crate::engine::adapters::{AdapterError, PEFT_PREFIX};
        let get = |name: &str| {
            let key = format!("{PEFT_PREFIX}classifier.{name}");
            tensors
                .get(&key)
                .ok_or(AdapterError::MissingTensor(key))
                .and_then(|t| Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?))
        };
        Ok(Self {
            weight: get("weight")?,
            bias: get("bias")?,
        })
    }
}
