//! Classification adapters on disk: the PEFT folder plus the head as `modules_to_save`.
//! (Training runs in the one loop, [`crate::engine::trainer`], with its classification
//! objective.)

use candle_core::{DType, Tensor, Var};

use crate::engine::adapters::AdapterSet;
use crate::engine::model::bert::ClassifierHead;

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
