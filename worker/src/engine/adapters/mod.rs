//! PEFT adapters: LoRA, rsLoRA and DoRA on an adapter-capable linear layer, with `Var`
//! names equal to HF PEFT's file keys so the adapter set *is* the adapter file.

pub mod config;
pub mod dropout;
pub mod init;
pub mod linear;
pub mod methods;
pub mod set;
pub mod svd;
pub mod targets;

pub use config::{AdapterConfig, LoraInit, TargetModules};
pub use linear::{AdaptedLinear, Ia3, Lora};
pub use methods::{Method, MethodKind};
pub use set::AdapterSet;

use rand_chacha::ChaCha8Rng;

/// Prefix PEFT puts before the HF module path (`PeftModel.base_model` → `LoraModel.model`).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The attention a prefix feeds: one key and one value row of `kv_heads·head_dim` per layer
/// and virtual token (PEFT's `token_dim` after its grouped-query adjustment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrefixLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl PrefixLayout {
    /// Width of one virtual token's row: `layers·2·kv_heads·head_dim`.
    pub fn width(&self) -> usize {
        self.layers * 2 * self.kv_heads * self.head_dim
    }
}

/// A model whose linear layers can carry adapters.
pub trait Adaptable {
    /// Every linear layer with its HF module path (`model.layers.0.self_attn.q_proj`), in a
    /// fixed order.
    fn linears(&self) -> Vec<(String, &AdaptedLinear)>;
    /// Same as [`Self::linears`], mutably.
    fn linears_mut(&mut self) -> Vec<(String, &mut AdaptedLinear)>;
    /// Output heads, which PEFT leaves out of `all-linear` (e.g. `lm_head`).
    fn output_modules(&self) -> Vec<String>;
    /// Base parameters that are not linear layers (embeddings, norms) by HF name, for
    /// full fine-tuning and BitFit. Tied tensors appear once.
    fn other_params_mut(&mut self) -> Vec<(String, &mut candle_core::Tensor)> {
        Vec::new()
    }
    /// Installs (or removes) prompt-tuning virtual token embeddings `[n, hidden]`.
    fn set_prompt(&mut self, prompt: Option<candle_core::Tensor>) -> Result<(), AdapterError> {
        let _ = prompt;
        Err(AdapterError::Invalid(
            "prompt tuning is not supported by this model".into(),
        ))
    }
    /// The attention shape prefix tuning provisions keys and values for; `None` when the
    /// model has no such attention.
    fn prefix_layout(&self) -> Option<PrefixLayout> {
        None
    }
    /// Installs (or removes) prefix-tuning keys and values
    /// `[n, layers·2·kv_heads·head_dim]`.
    fn set_prefix(&mut self, prefix: Option<candle_core::Tensor>) -> Result<(), AdapterError> {
        let _ = prefix;
        Err(AdapterError::Invalid(
            "prefix tuning is not supported by this model".into(),
        ))
    }
    /// The input embedding matrix `[vocab, hidden]`, to initialise virtual tokens from.
    fn input_embeddings(&self) -> Option<&candle_core::Tensor> {
        None
    }
    /// Default IA3 targets and which of them scale their input (PEFT's
    /// `TRANSFORMERS_MODELS_TO_IA3_*` mappings).
    fn ia3_defaults(&self) -> (Vec<String>, Vec<String>) {
        (Vec::new(), Vec::new())
    }
}

/// Whether a forward pass trains (dropout on, masks from a seeded stream) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Eval,
    /// `pass` numbers forward passes (micro-batches) so each gets fresh, reproducible masks.
    Train {
        seed: u64,
        pass: u64,
    },
    /// A training pass that is never differentiated (zeroth-order training): dropout as in
    /// `Train`, but adapter weights are read detached, so candle records no graph and the
    /// pass needs inference memory only.
    Probe {
        seed: u64,
        pass: u64,
    },
    /// The base model alone: adapters are switched off (a preference loss's reference), no
    /// dropout, nothing recorded for autograd through adapter weights.
    Reference,
}

impl Mode {
    /// The dropout stream for one module in this pass, or `None` when dropout is off.
    pub fn dropout_stream(&self, key: &str, p: f32) -> Option<ChaCha8Rng> {
        match self {
            Mode::Train { seed, pass } | Mode::Probe { seed, pass } if p > 0.0 => Some(
                crate::engine::rng::stream(*seed, &format!("dropout/{pass}/{key}")),
            ),
            Mode::Train { .. } | Mode::Probe { .. } | Mode::Eval | Mode::Reference => None,
        }
    }

    /// An adapter weight as this pass reads it: tracked for autograd, detached for a probe.
    pub fn read(&self, var: &candle_core::Var) -> candle_core::Tensor {
        match self {
            Mode::Eval | Mode::Train { .. } => var.as_tensor().clone(),
            Mode::Probe { .. } | Mode::Reference => var.as_detached_tensor(),
        }
    }

    /// Whether adapters take part in this pass.
    pub fn adapters_on(&self) -> bool {
        match self {
            Mode::Eval | Mode::Train { .. } | Mode::Probe { .. } => true,
            Mode::Reference => false,
        }
    }
}

/// A bad adapter configuration or adapter file.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("target module `{target}` matches no linear layer of the model (modules: {available})")]
    UnknownTarget { target: String, available: String },
    #[error("invalid adapter config: {0}")]
    Invalid(String),
    #[error("adapter tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("adapter tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("unexpected adapter tensor `{0}` (no such adapted module)")]
    UnexpectedTensor(String),
    #[error("tensor op failed: {0}")]
    Candle(#[from] candle_core::Error),
}
