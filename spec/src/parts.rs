//! The parts of a spec: the method with its parameters, and the hyperparameters.

use serde::{Deserialize, Serialize};

use crate::names::{
    DecayShape, LoraInit, MergeMethod, MethodKind, Optimizer, PreferenceLoss, Schedule,
};

/// The loss of a preference job and its knobs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreferenceParams {
    pub loss: PreferenceLoss,
    /// DPO/IPO: β, the pull towards the reference; ORPO: λ, the odds-ratio weight.
    pub beta: f64,
    /// DPO only: the assumed share of flipped labels.
    pub label_smoothing: f64,
}

/// What a merge job merges and how (defaults filled in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeParams {
    /// Ids of the finished jobs whose final adapters are merged, in order.
    pub sources: Vec<String>,
    pub method: MergeMethod,
    /// One weight per source for task_arithmetic and ties; empty otherwise.
    #[serde(default)]
    pub weights: Vec<f64>,
    /// The output adapter's rank; `None`: the sum of the sources' ranks.
    #[serde(default)]
    pub rank: Option<i32>,
    /// ties only: the share of each delta's entries kept.
    #[serde(default)]
    pub density: Option<f64>,
}

/// TIES's share of kept entries when the spec names none (the paper's top-20 %).
pub const DEFAULT_TIES_DENSITY: f64 = 0.2;

/// β (and ORPO's λ) when the spec names none: TRL's default for both.
pub const DEFAULT_PREFERENCE_BETA: f64 = 0.1;

/// LoRA / DoRA parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraParams {
    pub r: i32,
    pub alpha: f64,
    pub dropout: f64,
    /// `None`: the architecture's default (q/v projections), resolved by the worker from the
    /// model, so a default is never mistaken for a choice.
    #[serde(default)]
    pub target_modules: Option<Vec<String>>,
    pub use_rslora: bool,
    pub init: LoraInit,
    pub lr_ratio_b: f64,
    /// Chain of LoRA: merge and restart the adapter every this many steps.
    #[serde(default)]
    pub chain_every: Option<i64>,
}

/// The method and its parameters; each variant carries exactly what it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Method {
    Lora {
        lora: LoraParams,
    },
    Dora {
        lora: LoraParams,
    },
    Ia3 {
        /// `None`: the architecture's default (PEFT's IA3 mapping).
        #[serde(default, rename = "ia3_target_modules")]
        target_modules: Option<Vec<String>>,
    },
    PromptTuning {
        num_virtual_tokens: i32,
    },
    /// Prefix tuning: `num_virtual_tokens` keys and values per attention layer.
    PrefixTuning {
        num_virtual_tokens: i32,
    },
    Bitfit,
    Full,
    /// LISA: embeddings, head and `layers` decoder layers drawn every `interval` steps.
    Lisa {
        layers: i32,
        interval: i64,
    },
}

impl Method {
    /// Whether the method makes base weights trainable (they then stay in f32: an optimizer
    /// step on bf16 weights loses most updates to rounding).
    pub fn trains_base_weights(&self) -> bool {
        match self.kind() {
            MethodKind::Full | MethodKind::Bitfit | MethodKind::Lisa => true,
            MethodKind::Lora
            | MethodKind::Dora
            | MethodKind::Ia3
            | MethodKind::PromptTuning
            | MethodKind::PrefixTuning => false,
        }
    }

    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Lora { .. } => MethodKind::Lora,
            Method::Dora { .. } => MethodKind::Dora,
            Method::Ia3 { .. } => MethodKind::Ia3,
            Method::PromptTuning { .. } => MethodKind::PromptTuning,
            Method::PrefixTuning { .. } => MethodKind::PrefixTuning,
            Method::Bitfit => MethodKind::Bitfit,
            Method::Full => MethodKind::Full,
            Method::Lisa { .. } => MethodKind::Lisa,
        }
    }

    /// The LoRA parameters of a LoRA-family method.
    pub fn lora(&self) -> Option<&LoraParams> {
        match self {
            Method::Lora { lora } | Method::Dora { lora } => Some(lora),
            Method::Ia3 { .. }
            | Method::PromptTuning { .. }
            | Method::PrefixTuning { .. }
            | Method::Bitfit
            | Method::Full
            | Method::Lisa { .. } => None,
        }
    }
}

/// Training hyperparameters with defaults applied. Fields added after the first layout carry
/// serde defaults that keep an older stored spec's meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    /// The peak learning rate; for a learning-rate-free optimizer the multiplier of its
    /// adapted step (1 with `auto_learning_rate`).
    pub learning_rate: f64,
    pub epochs: i32,
    pub max_steps: Option<i64>,
    pub batch_size: i32,
    pub grad_accumulation: i32,
    pub warmup_steps: i64,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub max_seq_len: i32,
    pub seed: i64,
    pub eval_every: i64,
    pub checkpoint_every: i64,
    pub max_grad_norm: f64,
    #[serde(default = "default_optimizer")]
    pub optimizer: Optimizer,
    /// The optimizer (learning-rate free) chooses the step size.
    #[serde(default)]
    pub auto_learning_rate: bool,
    /// Final learning rate over the peak, for `cosine_with_min_lr` and `wsd`.
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Fraction of the steps a `wsd` schedule decays over.
    #[serde(default = "default_decay_fraction")]
    pub decay_fraction: f64,
    #[serde(default = "default_decay_shape")]
    pub decay_shape: DecayShape,
    /// Weight of prompt (non-completion) tokens in the training loss; 0 = completion only.
    #[serde(default)]
    pub prompt_loss_weight: f64,
    /// MeZO's perturbation scale ε.
    #[serde(default = "default_zo_epsilon")]
    pub zo_epsilon: f64,
    /// Recompute decoder layers in backward (causal LM only).
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

/// MeZO's ε when the spec names none (the paper's value).
pub const DEFAULT_ZO_EPSILON: f64 = 1e-3;

fn default_zo_epsilon() -> f64 {
    DEFAULT_ZO_EPSILON
}

fn default_optimizer() -> Optimizer {
    Optimizer::AdamW
}

impl Hyperparameters {
    /// The last step of the stable phase of a run of `total` steps: a checkpoint taken at or
    /// before it continues identically in a longer run (so a sweep promotion resumes from
    /// there). `None` where every step's learning rate depends on the total.
    pub fn stable_until(&self, total: u64) -> Option<u64> {
        match self.schedule {
            Schedule::Wsd => Some(wsd_decay_start(
                total,
                self.warmup_steps.max(0) as u64,
                self.decay_fraction,
            )),
            Schedule::Constant => Some(total),
            Schedule::Cosine
            | Schedule::Linear
            | Schedule::CosineWithMinLr
            | Schedule::InverseSqrt => None,
        }
    }
}

/// The first decaying step of a WSD schedule of `total` steps: the last `fraction` of them
/// (rounded, at least one) decay, never inside the warmup. Shared by the worker's schedule
/// and the server's choice of checkpoint for a promotion.
pub fn wsd_decay_start(total: u64, warmup: u64, fraction: f64) -> u64 {
    // Rounded, not ceiled: 0.2 · 110 is 22.000000000000004 in f64.
    let decay = ((fraction * total as f64).round() as u64).max(1);
    total.saturating_sub(decay).max(warmup).min(total)
}

/// WSD's decay fraction when the spec names none (Hägele et al. use 10-20%).
pub const DEFAULT_DECAY_FRACTION: f64 = 0.2;

/// `cosine_with_min_lr`'s floor when the spec names none.
pub const DEFAULT_MIN_LR_RATIO: f64 = 0.1;

fn default_decay_fraction() -> f64 {
    DEFAULT_DECAY_FRACTION
}

fn default_decay_shape() -> DecayShape {
    DecayShape::OneMinusSqrt
}
