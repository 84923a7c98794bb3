//! The stored JSON of a spec is versioned: rows written by older servers keep their meaning.
//!
//! Every field added later carries a serde default, and [`Stored`] migrates old layouts on
//! read, so adding a field never corrupts an old row and a row never changes meaning.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::job::{Hyperparameters, JobSpec, Method};
use crate::names::{Device, LoraInit, Task};

/// Version written by this code.
///
/// - 1: the first layout. Its `init = "gaussian"` meant PEFT's *default* init, and module
///   lists were always filled with the causal-LM defaults.
/// - 2: `init` names PEFT's `init_lora_weights` (`default`, `gaussian`, ...); a module list
///   left to the architecture is absent.
pub const SPEC_VERSION: u32 = 2;

const V1_LORA_DEFAULT: [&str; 2] = ["q_proj", "v_proj"];
const V1_IA3_DEFAULT: [&str; 3] = ["k_proj", "v_proj", "down_proj"];

/// The stored layout of any version, read before migration.
#[derive(Deserialize)]
pub(crate) struct Stored {
    #[serde(default = "first_version")]
    version: u32,
    base_model: String,
    training_file: String,
    validation_file: Option<String>,
    task: Task,
    method: Method,
    hyperparameters: Hyperparameters,
    device: Device,
    min_memory_bytes: i64,
    priority: i32,
    max_attempts: i32,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn first_version() -> u32 {
    1
}

fn is(list: &Option<Vec<String>>, default: &[&str]) -> bool {
    list.as_ref()
        .is_some_and(|l| l.iter().map(String::as_str).eq(default.iter().copied()))
}

impl From<Stored> for JobSpec {
    fn from(s: Stored) -> Self {
        let mut method = s.method;
        if s.version < 2 {
            match &mut method {
                Method::Lora { lora } | Method::Dora { lora } => {
                    if lora.init == LoraInit::Gaussian {
                        lora.init = LoraInit::Default;
                    }
                    if is(&lora.target_modules, &V1_LORA_DEFAULT) {
                        lora.target_modules = None;
                    }
                }
                Method::Ia3 { target_modules } => {
                    if is(target_modules, &V1_IA3_DEFAULT) {
                        *target_modules = None;
                    }
                }
                Method::PromptTuning { .. } | Method::Bitfit | Method::Full => {}
            }
        }
        JobSpec {
            version: SPEC_VERSION,
            base_model: s.base_model,
            training_file: s.training_file,
            validation_file: s.validation_file,
            task: s.task,
            method,
            hyperparameters: s.hyperparameters,
            device: s.device,
            min_memory_bytes: s.min_memory_bytes,
            priority: s.priority,
            max_attempts: s.max_attempts,
            labels: s.labels,
        }
    }
}
