//! Differentiable model implementations and their loading from HF model folders.

pub mod bert;
pub mod config;
pub mod gguf;
pub mod llama;
pub mod ops;
pub mod tiny;
pub mod weights;

pub use bert::{Bert, BertConfig, ClassifierHead};
pub use config::{ConfigError, LlamaConfig};
pub use llama::{CheckpointedPass, Llama, LossTape};
pub use weights::{WeightError, Weights};

/// A decoder that returns next-token logits for every position; what the trainer needs.
pub trait CausalLm: crate::engine::adapters::Adaptable + Sync {
    /// Logits `[batch, seq, vocab]` for ids `[batch, seq]`.
    fn forward(
        &self,
        input_ids: &candle_core::Tensor,
        mode: &crate::engine::adapters::Mode,
    ) -> Result<candle_core::Tensor, ModelError>;
    /// Logits flattened to `[batch·seq, vocab]`, the loss's layout.
    fn forward_flat(
        &self,
        input_ids: &candle_core::Tensor,
        mode: &crate::engine::adapters::Mode,
    ) -> Result<candle_core::Tensor, ModelError> {
        let logits = self.forward(input_ids, mode)?;
        let (b, t, v) = logits.dims3()?;
        Ok(logits.reshape((b * t, v))?)
    }
    /// The summed masked next-token loss over flat `[batch·seq]` labels and mask
    /// (`ops::masked_nll_sum` of [`Self::forward_flat`]); models may fuse head and loss.
    fn masked_nll_sum_flat(
        &self,
        input_ids: &candle_core::Tensor,
        labels: &candle_core::Tensor,
        mask: &candle_core::Tensor,
        mode: &crate::engine::adapters::Mode,
    ) -> Result<candle_core::Tensor, ModelError> {
        let logits = self.forward_flat(input_ids, mode)?;
        Ok(ops::masked_nll_sum(&logits, labels, mask)?)
    }
    /// The forward pass of [`Self::masked_nll_sum_flat`] recorded for a hand-written
    /// backward, where the model has one for its current adapters; `None` means the caller
    /// differentiates with candle's autograd.
    fn loss_tape(
        &self,
        _input_ids: &candle_core::Tensor,
        _labels: &candle_core::Tensor,
        _mask: &candle_core::Tensor,
        _mode: &crate::engine::adapters::Mode,
    ) -> Result<Option<LossTape<'_>>, ModelError> {
        Ok(None)
    }
    /// The scaled loss and the gradients of `vars` with gradient checkpointing, when the
    /// model has it switched on; `None` means the caller runs the ordinary pass.
    fn checkpointed_pass(
        &self,
        _input_ids: &candle_core::Tensor,
        _labels: &candle_core::Tensor,
        _mask: &candle_core::Tensor,
        _mode: &crate::engine::adapters::Mode,
        _scale: f64,
        _vars: &std::collections::BTreeMap<String, candle_core::Var>,
    ) -> Result<Option<CheckpointedPass>, ModelError> {
        Ok(None)
    }
    fn device(&self) -> &candle_core::Device;
}

impl CausalLm for Llama {
    fn forward(
        &self,
        input_ids: &candle_core::Tensor,
        mode: &crate::engine::adapters::Mode,
    ) -> Result<candle_core::Tensor, ModelError> {
        Llama::forward(self, input_ids, mode)
    }

    fn forward_flat(
        &self,
        input_ids: &candle_core::Tensor,
        mode: &crate::engine::adapters::Mode,
    ) -> Result<candle_core::Tensor, ModelError> {
        Llama::forward_flat(self, input_ids, mode)
    }

    fn masked_nll_sum_flat(
        &self,
        input_ids: &candle_core::Tensor,
        labels: &candle_core::Tensor,
        mask: &candle_core::Tensor,
        mode: &crate::engine::adapters::Mode,
    ) -> Result<candle_core::Tensor, ModelError> {
        Llama::masked_nll_sum_flat(self, input_ids, labels, mask, mode)
    }

    fn loss_tape(
        &self,
        input_ids: &candle_core::Tensor,
        labels: &candle_core::Tensor,
        mask: &candle_core::Tensor,
        mode: &crate::engine::adapters::Mode,
    ) -> Result<Option<LossTape<'_>>, ModelError> {
        Ok(Llama::loss_tape(self, input_ids, labels, mask, mode)?)
    }

    fn checkpointed_pass(
        &self,
        input_ids: &candle_core::Tensor,
        labels: &candle_core::Tensor,
        mask: &candle_core::Tensor,
        mode: &crate::engine::adapters::Mode,
        scale: f64,
        vars: &std::collections::BTreeMap<String, candle_core::Var>,
    ) -> Result<Option<CheckpointedPass>, ModelError> {
        if !self.gradient_checkpointing() {
            return Ok(None);
        }
        self.checkpointed_loss_and_grads(input_ids, labels, mask, mode, scale, vars)
            .map(Some)
    }

    fn device(&self) -> &candle_core::Device {
        Llama::device(self)
    }
}

/// Errors from building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error("cannot write model files to {path}: {reason}")]
    Write {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("tensor op failed: {0}")]
    Candle(#[from] candle_core::Error),
}
