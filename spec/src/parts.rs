//! The parts of a spec: the method with its parameters, and the hyperparameters.

use serde::{Deserialize, Serialize};

use crate::names::{LoraInit, MethodKind, Optimizer, Schedule};

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
    Bitfit,
    Full,
}

impl Method {
    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Lora { .. } => MethodKind::Lora,
            Method::Dora { .. } => MethodKind::Dora,
            Method::Ia3 { .. } => MethodKind::Ia3,
            Method::PromptTuning { .. } => MethodKind::PromptTuning,
            Method::Bitfit => MethodKind::Bitfit,
            Method::Full => MethodKind::Full,
        }
    }

    /// The LoRA parameters of a LoRA-family method.
    pub fn lora(&self) -> Option<&LoraParams> {
        match self {
            Method::Lora { lora } | Method::Dora { lora } => Some(lora),
            Method::Ia3 { .. } | Method::PromptTuning { .. } | Method::Bitfit | Method::Full => {
                None
            }
        }
    }
}

/// Training hyperparameters with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
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
}

fn default_optimizer() -> Optimizer {
    Optimizer::AdamW
}
