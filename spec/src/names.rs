//! The closed sets of names a spec may use. Each enum is the only list of its values: the
//! API's validation, the sweep search space and the worker's dispatch all read it.

use std::fmt;

macro_rules! named {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every value's wire name, in documentation order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value with this wire name.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named! {
    /// What the job trains the model to do.
    Task {
        /// Next-token prediction on text, prompt/completion or chat data (decoders).
        CausalLm = "causal_lm",
        /// Sequence classification on `{"text","label"}` data (BERT-family encoders + head).
        Classification = "classification",
        /// Preference tuning (DPO, IPO, ORPO) of a decoder on chosen/rejected reply pairs.
        Preference = "preference",
        /// The LoRA adapters of finished decoder jobs merged into one (no training).
        Merge = "merge",
    }
}

named! {
    /// How a merge job combines its sources' deltas.
    MergeMethod {
        /// The mean delta.
        Average = "average",
        /// Model Stock (Jang et al. 2024): the mean delta scaled by a per-module ratio from
        /// the angle between the deltas, anchored at the base.
        ModelStock = "model_stock",
        /// Task arithmetic (Ilharco et al. 2023): the weighted sum of the deltas.
        TaskArithmetic = "task_arithmetic",
        /// TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean.
        Ties = "ties",
    }
}

impl MergeMethod {
    /// Whether the method takes one weight per source.
    pub fn weighted(self) -> bool {
        match self {
            MergeMethod::Average | MergeMethod::ModelStock => false,
            MergeMethod::TaskArithmetic | MergeMethod::Ties => true,
        }
    }
}

named! {
    /// The dtype of a merged-model export.
    MergedDtype {
        F32 = "f32",
        Bf16 = "bf16",
    }
}

named! {
    /// The loss of a preference job.
    PreferenceLoss {
        /// Direct Preference Optimization (sigmoid loss on the reward margin).
        Dpo = "dpo",
        /// Identity Preference Optimization (squared loss on the length-normalised margin).
        Ipo = "ipo",
        /// Odds Ratio Preference Optimization: NLL of the chosen reply plus an odds-ratio
        /// term; no reference model.
        Orpo = "orpo",
    }
}

impl PreferenceLoss {
    /// Whether the loss compares the policy with a reference model.
    pub fn needs_reference(self) -> bool {
        match self {
            PreferenceLoss::Dpo | PreferenceLoss::Ipo => true,
            PreferenceLoss::Orpo => false,
        }
    }
}

named! {
    /// The PEFT method.
    MethodKind {
        Lora = "lora",
        Dora = "dora",
        Ia3 = "ia3",
        PromptTuning = "prompt_tuning",
        /// Prefix tuning (P-tuning v2): trainable keys and values in every attention layer.
        PrefixTuning = "prefix_tuning",
        Bitfit = "bitfit",
        Full = "full",
        /// LISA: full fine-tuning of embeddings, head and a few sampled decoder layers.
        Lisa = "lisa",
    }
}

named! {
    /// How LoRA factors start, named as PEFT's `init_lora_weights`.
    LoraInit {
        /// PEFT's default (`init_lora_weights=True`): A Kaiming-uniform, B = 0.
        Default = "default",
        /// PEFT's `"gaussian"`: A ~ N(0, 1/r²) (std 1/r), B = 0.
        Gaussian = "gaussian",
        /// PiSSA: factors from the top singular triplets of the base weight.
        Pissa = "pissa",
        /// LoRA-GA: factors from the SVD of the first batches' weight gradient.
        LoraGa = "lora_ga",
    }
}

named! {
    /// Learning-rate schedule after the linear warmup.
    Schedule {
        /// Half-cosine to 0.
        Cosine = "cosine",
        Linear = "linear",
        Constant = "constant",
        /// Half-cosine to `min_lr_ratio` times the peak.
        CosineWithMinLr = "cosine_with_min_lr",
        /// Warmup-stable-decay: constant, then a decay over the last `decay_fraction` of the
        /// steps; a checkpoint of the stable phase can be continued with a longer budget.
        Wsd = "wsd",
        /// `peak · sqrt(warmup / step)` after the warmup (HF's `inverse_sqrt`).
        InverseSqrt = "inverse_sqrt",
    }
}

named! {
    /// The shape of a WSD schedule's decay.
    DecayShape {
        Linear = "linear",
        Cosine = "cosine",
        /// `1 - sqrt(progress)`, the shape Hägele et al. (2024) found best.
        OneMinusSqrt = "1-sqrt",
    }
}

named! {
    /// The dtype of the frozen base weights on the worker's device.
    #[derive(Default)]
    BaseDtype {
        /// bf16 on CUDA, f32 on the CPU and for methods that train base weights.
        #[default]
        Auto = "auto",
        F32 = "f32",
        Bf16 = "bf16",
        F16 = "f16",
    }
}

impl BaseDtype {
    pub fn is_auto(&self) -> bool {
        *self == BaseDtype::Auto
    }
}

named! {
    /// Which kind of worker may run the job.
    Device {
        Any = "any",
        Cpu = "cpu",
        Cuda = "cuda",
    }
}

named! {
    /// The optimizer of the trainable parameters.
    Optimizer {
        /// AdamW with decoupled weight decay.
        AdamW = "adamw",
        /// Lion (Chen et al., 2023): the sign of an interpolated momentum.
        Lion = "lion",
        /// Adafactor (Shazeer & Stern, 2018): factored second moments, update clipping.
        Adafactor = "adafactor",
        /// Distance over Gradients (Ivgi et al., 2023): learning-rate free.
        Dog = "dog",
        /// D-Adaptation Adam (Defazio & Mishchenko, 2023): learning-rate free.
        DAdaptAdam = "dadapt_adam",
        /// MeZO (Malladi et al., 2023): zeroth-order SGD from two forward passes per step,
        /// no backward pass.
        Mezo = "mezo",
    }
}

impl Optimizer {
    /// Whether the optimizer adapts its own step size, so `learning_rate` only scales it.
    pub fn is_learning_rate_free(self) -> bool {
        match self {
            Optimizer::AdamW | Optimizer::Lion | Optimizer::Adafactor | Optimizer::Mezo => false,
            Optimizer::Dog | Optimizer::DAdaptAdam => true,
        }
    }
}

/// `a, b, c` for error messages.
pub(crate) fn list(names: &[&str]) -> String {
    names.join(", ")
}

impl Task {
    /// Whether a dataset whose lines have `format` can train this task; the reason otherwise.
    /// Checked at `CreateJob` against the format the upload validated, and by the worker.
    pub fn accepts(self, format: tuna_proto::v1::DatasetFormat) -> Result<(), String> {
        use tuna_proto::v1::DatasetFormat as F;
        match (self, format) {
            (Task::CausalLm | Task::Merge, F::Text | F::PromptCompletion | F::Chat)
            | (Task::Classification, F::Classification)
            | (Task::Preference, F::Preference) => Ok(()),
            (Task::CausalLm | Task::Classification, F::Preference) => Err(
                "has preference lines ({\"chosen\",\"rejected\"}): use task = preference".into(),
            ),
            (Task::Merge, F::Preference | F::Classification) => Err(format!(
                "has {} lines; a merge job evaluates its adapter on text, prompt/completion or \
                 chat lines",
                format.as_str_name().to_ascii_lowercase()
            )),
            (Task::Preference, F::Text | F::PromptCompletion | F::Chat | F::Classification) => {
                Err(format!(
                    "has {} lines; preference needs {{\"prompt\" or \"messages\", \"chosen\", \
                     \"rejected\"}} lines",
                    format.as_str_name().to_ascii_lowercase()
                ))
            }
            (Task::CausalLm, F::Classification) => Err(
                "has labelled lines ({\"text\",\"label\"}): use task = classification with an \
                 encoder such as BERT; causal_lm trains on text, prompt/completion and chat data"
                    .into(),
            ),
            (Task::Classification, F::Text | F::PromptCompletion | F::Chat) => Err(format!(
                "has {} lines; classification needs {{\"text\",\"label\"}} lines",
                format.as_str_name().to_ascii_lowercase()
            )),
            (_, F::Unspecified) => Err("has no validated dataset format".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_value() {
        for t in Task::ALL {
            assert_eq!(Task::parse(t.as_str()), Some(*t));
        }
        for m in MethodKind::ALL {
            assert_eq!(MethodKind::parse(m.as_str()), Some(*m));
        }
        for i in LoraInit::ALL {
            assert_eq!(LoraInit::parse(i.as_str()), Some(*i));
        }
        for s in Schedule::ALL {
            assert_eq!(Schedule::parse(s.as_str()), Some(*s));
        }
        for d in Device::ALL {
            assert_eq!(Device::parse(d.as_str()), Some(*d));
        }
        for o in Optimizer::ALL {
            assert_eq!(Optimizer::parse(o.as_str()), Some(*o));
        }
        for d in DecayShape::ALL {
            assert_eq!(DecayShape::parse(d.as_str()), Some(*d));
        }
        assert_eq!(LoraInit::parse("nope"), None);
    }

    #[test]
    fn serde_uses_the_wire_names() {
        let json = serde_json::to_string(&LoraInit::LoraGa).unwrap_or_default();
        assert_eq!(json, "\"lora_ga\"");
        let back: Task = serde_json::from_str("\"classification\"").unwrap_or(Task::CausalLm);
        assert_eq!(back, Task::Classification);
    }
}
