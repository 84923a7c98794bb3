//! Which combinations of task, method and init a worker can train, decided in one place.
//!
//! The server refuses anything [`JobSpec::plan`] refuses (at `CreateJob`, naming the field);
//! the worker matches the returned [`Plan`] exhaustively. A new task, method or init is
//! therefore a compile error here until someone decides whether it can train.

use crate::check::FieldViolation;
use crate::job::{JobSpec, LoraParams, MergeParams, Method, PreferenceParams};
use crate::names::{LoraInit, Task};

/// What the worker trains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan<'a> {
    /// A decoder on next-token prediction, with any method.
    CausalLm { method: &'a Method },
    /// A decoder on chosen/rejected pairs. With a reference loss (DPO, IPO) the method is an
    /// adapter that can be switched off and leaves the base weights as loaded.
    Preference {
        method: &'a Method,
        preference: PreferenceParams,
    },
    /// No training: the sources' LoRA deltas merged into one adapter (`merge.method`).
    Merge { merge: &'a MergeParams },
    /// An encoder plus a fresh classification head, with a LoRA-family adapter.
    Classification {
        lora: &'a LoraParams,
        dora: bool,
        init: ClassInit,
    },
}

/// The LoRA inits a classification job can start from (LoRA-GA needs causal-LM gradients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassInit {
    Default,
    Gaussian,
    Pissa,
}

const INIT: &str = "spec.method.lora.init";
const CHAIN: &str = "spec.method.lora.chain_every";

impl JobSpec {
    /// The run this spec describes, or the field that makes it untrainable.
    pub fn plan(&self) -> Result<Plan<'_>, FieldViolation> {
        if self.export_merged.is_some() {
            self.check_mergeable()?;
        }
        if self.replicas > 1 {
            self.check_lofi()?;
        }
        if let Method::Dora { lora } | Method::Lora { lora } = &self.method
            && lora.chain_every.is_some()
        {
            let refuse = |why: String| Err(FieldViolation::new(CHAIN, why));
            if matches!(self.method, Method::Dora { .. }) {
                return refuse(
                    "a chain merges each link into the base, which DoRA's magnitude is measured \
                     on; use method lora"
                        .into(),
                );
            }
            if self.task != Task::CausalLm {
                return refuse("chains of LoRA train causal_lm jobs only".into());
            }
            match lora.init {
                LoraInit::Default | LoraInit::Gaussian => {}
                LoraInit::Pissa | LoraInit::LoraGa => {
                    return refuse(format!(
                        "each link restarts from a fresh init; {} derives its init from the \
                         base weight or gradients: use default or gaussian",
                        lora.init
                    ));
                }
            }
        }
        if let Method::Dora { lora } = &self.method {
            match lora.init {
                LoraInit::Default | LoraInit::Gaussian => {}
                LoraInit::Pissa | LoraInit::LoraGa => {
                    return Err(FieldViolation::new(
                        INIT,
                        format!(
                            "{} moves the base weight, which DoRA's magnitude is measured on; \
                             use default or gaussian with dora",
                            lora.init
                        ),
                    ));
                }
            }
        }
        if matches!(self.method, Method::Lisa { .. })
            && self.hyperparameters.optimizer == crate::names::Optimizer::Mezo
        {
            return Err(FieldViolation::new(
                "spec.hyperparameters.optimizer",
                "mezo perturbs every trainable weight at once, which undoes LISA's layer \
                 sampling; use mezo with method full, or a gradient optimizer with lisa",
            ));
        }
        match self.task {
            Task::CausalLm => Ok(Plan::CausalLm {
                method: &self.method,
            }),
            Task::Preference => self.preference_plan(),
            // The output method is a default LoRA, so no method check above applies.
            Task::Merge => match &self.merge {
                Some(merge) => Ok(Plan::Merge { merge }),
                None => Err(FieldViolation::new(
                    "spec.merge",
                    "is required for task = merge",
                )),
            },
            Task::Classification => {
                if self.hyperparameters.prompt_loss_weight != 0.0 {
                    return Err(FieldViolation::new(
                        "spec.hyperparameters.prompt_loss_weight",
                        "weighs prompt tokens of causal_lm data; classification jobs have \
                         no prompt tokens in their loss (leave it 0)",
                    ));
                }
                let (lora, dora) = match &self.method {
                    Method::Lora { lora } => (lora, false),
                    Method::Dora { lora } => (lora, true),
                    Method::Ia3 { .. }
                    | Method::PromptTuning { .. }
                    | Method::PrefixTuning { .. }
                    | Method::Bitfit
                    | Method::Full
                    | Method::Lisa { .. } => {
                        return Err(FieldViolation::new(
                            "spec.method.type",
                            format!(
                                "classification jobs train lora or dora adapters with a head; \
                                 {} is available for causal_lm jobs only",
                                self.method.kind()
                            ),
                        ));
                    }
                };
                let init = match lora.init {
                    LoraInit::Default => ClassInit::Default,
                    LoraInit::Gaussian => ClassInit::Gaussian,
                    LoraInit::Pissa => ClassInit::Pissa,
                    LoraInit::LoraGa => {
                        return Err(FieldViolation::new(
                            INIT,
                            "lora_ga estimates its init from causal-LM gradients; \
                             classification jobs use default, gaussian or pissa",
                        ));
                    }
                };
                Ok(Plan::Classification { lora, dora, init })
            }
        }
    }

    /// Whether a lo-fi job's shards can be averaged: their deltas must be plain LoRA.
    fn check_lofi(&self) -> Result<(), FieldViolation> {
        let refuse = |why: String| Err(FieldViolation::new("spec.replicas", why));
        match self.task {
            Task::CausalLm | Task::Preference => {}
            Task::Classification | Task::Merge => {
                return refuse(format!(
                    "lo-fi shards train decoders (causal_lm, preference), not {}",
                    self.task
                ));
            }
        }
        match &self.method {
            Method::Lora { .. } => Ok(()),
            other => refuse(format!(
                "lo-fi averages the shards' LoRA deltas; {} is not supported with replicas > 1 \
                 (use method lora, or replicas = 1)",
                other.kind()
            )),
        }
    }

    /// Whether the trained weights fold into the base model for a merged export.
    fn check_mergeable(&self) -> Result<(), FieldViolation> {
        let refuse = |why: String| Err(FieldViolation::new("spec.export_merged", why));
        match self.task {
            Task::CausalLm | Task::Preference | Task::Merge => {}
            Task::Classification => {
                return refuse(
                    "merged exports are written for decoders (causal_lm, preference); a \
                     classification job's head stays a PEFT adapter"
                        .into(),
                );
            }
        }
        match &self.method {
            Method::Lora { .. }
            | Method::Dora { .. }
            | Method::Ia3 { .. }
            | Method::Bitfit
            | Method::Full
            | Method::Lisa { .. } => Ok(()),
            Method::PromptTuning { .. } | Method::PrefixTuning { .. } => refuse(format!(
                "{} adds virtual tokens, which do not fold into the weights; export the \
                 adapter instead",
                self.method.kind()
            )),
        }
    }

    fn preference_plan(&self) -> Result<Plan<'_>, FieldViolation> {
        let Some(preference) = self.preference else {
            return Err(FieldViolation::new(
                "spec.preference",
                "is required for task = preference",
            ));
        };
        if self.hyperparameters.prompt_loss_weight != 0.0 {
            return Err(FieldViolation::new(
                "spec.hyperparameters.prompt_loss_weight",
                "preference losses score the replies only (leave it 0)",
            ));
        }
        if let Method::Lora { lora } | Method::Dora { lora } = &self.method
            && lora.init == LoraInit::LoraGa
        {
            return Err(FieldViolation::new(
                INIT,
                "lora_ga estimates its init from causal-LM gradients; preference jobs use \
                 default or gaussian (or pissa with orpo)",
            ));
        }
        if preference.loss.needs_reference() {
            let refuse = |why: String| Err(FieldViolation::new("spec.method.type", why));
            match &self.method {
                Method::Lora { lora } | Method::Dora { lora } => match lora.init {
                    LoraInit::Default | LoraInit::Gaussian => {}
                    LoraInit::Pissa | LoraInit::LoraGa => {
                        return Err(FieldViolation::new(
                            INIT,
                            format!(
                                "{}'s reference is the base with the adapter off, and {} \
                                 moves the base weight; use default or gaussian",
                                preference.loss, lora.init
                            ),
                        ));
                    }
                },
                // Virtual tokens and prefixes are dropped from the reference pass.
                Method::Ia3 { .. } | Method::PromptTuning { .. } | Method::PrefixTuning { .. } => {}
                Method::Bitfit | Method::Full | Method::Lisa { .. } => {
                    return refuse(format!(
                        "{}'s reference is the base model with the adapter switched off, which \
                         needs an adapter (lora, dora, ia3, prompt_tuning, prefix_tuning); {} \
                         trains the model's own weights (use loss orpo, which needs no \
                         reference)",
                        preference.loss,
                        self.method.kind()
                    ));
                }
            }
        }
        Ok(Plan::Preference {
            method: &self.method,
            preference,
        })
    }
}
