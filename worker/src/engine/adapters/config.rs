//! Adapter hyper-parameters, mirroring the fields of PEFT's `LoraConfig`.

use serde::{Deserialize, Serialize};

use super::AdapterError;

/// Which linear layers get an adapter (PEFT `target_modules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Names matched against the end of the module path (`q_proj` matches
    /// `model.layers.3.self_attn.q_proj`), as PEFT does for a list.
    Names(Vec<String>),
    /// The literal string `"all-linear"`: every linear except output heads.
    Keyword(String),
}

impl TargetModules {
    pub fn all_linear() -> Self {
        TargetModules::Keyword("all-linear".into())
    }

    pub fn names<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        TargetModules::Names(names.into_iter().map(Into::into).collect())
    }
}

/// How the low-rank factors start (PEFT `init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraInit {
    /// A Kaiming-uniform (PEFT's `kaiming_uniform_(a=√5)`: U(±1/√in)), B = 0.
    #[default]
    Default,
    /// A ~ N(0, 1/r), B = 0 (PEFT `"gaussian"`).
    Gaussian,
    /// PiSSA: A, B from the top-r singular triplets of W, and the base weight becomes the
    /// residual `W - s·B·A` (PEFT `"pissa"`). Exported as a rank-2r LoRA on the original W.
    Pissa,
    /// LoRA-GA: A, B from the SVD of the weight gradient on one batch, base offset like
    /// PiSSA. Needs data, so it is attached with [`super::lora_ga::attach`], not
    /// `AdapterSet::attach`.
    LoraGa,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f32,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub init: LoraInit,
    /// Seed for the initial values of A (each module draws from its own stream).
    #[serde(default)]
    pub seed: u64,
}

impl AdapterConfig {
    /// Plain LoRA with PEFT defaults for everything but `r`, `alpha` and targets.
    pub fn lora(r: usize, alpha: f64, targets: TargetModules) -> Self {
        Self {
            r,
            lora_alpha: alpha,
            lora_dropout: 0.0,
            target_modules: targets,
            use_rslora: false,
            use_dora: false,
            init: LoraInit::Default,
            seed: 0,
        }
    }

    /// `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    pub fn validate(&self) -> Result<(), AdapterError> {
        if self.r == 0 {
            return Err(AdapterError::Invalid("r must be positive".into()));
        }
        if !self.lora_alpha.is_finite() || self.lora_alpha <= 0.0 {
            return Err(AdapterError::Invalid("lora_alpha must be positive".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(AdapterError::Invalid(
                "lora_dropout must be in [0, 1)".into(),
            ));
        }
        if matches!(self.init, LoraInit::Pissa | LoraInit::LoraGa) && self.use_dora {
            return Err(AdapterError::Invalid(
                "PiSSA and LoRA-GA inits cannot be combined with DoRA".into(),
            ));
        }
        match &self.target_modules {
            TargetModules::Names(n) if n.is_empty() => {
                Err(AdapterError::Invalid("target_modules is empty".into()))
            }
            TargetModules::Keyword(k) if k != "all-linear" => Err(AdapterError::Invalid(format!(
                "target_modules `{k}`: only a list of names or \"all-linear\" is supported"
            ))),
            _ => Ok(()),
        }
    }
}
