//! The stored JSON of a spec is versioned: rows written by older servers keep their meaning.
//!
//! Every field added later carries a serde default, and [`Stored`] migrates old layouts on
//! read, so adding a field never corrupts an old row and a row never changes meaning.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::names::{BaseDtype, Device, LoraInit, MergedDtype, Task};
use crate::parts::{Hyperparameters, MergeParams, Method, PreferenceParams};

const V1_LORA_DEFAULT: [&str; 2] = ["q_proj", "v_proj"];
const V1_IA3_DEFAULT: [&str; 3] = ["k_proj", "v_proj", "down_proj"];

/// The stored layout of any version, read before migration.
#[derive(Deserialize)]
pub(crate) struct Stored {
    #[serde(default = "first_version")]
    pub(crate) version: u32,
    pub(crate) base_model: String,
    pub(crate) training_file: String,
    pub(crate) validation_file: Option<String>,
    pub(crate) task: Task,
    pub(crate) method: Method,
    #[serde(default)]
    pub(crate) preference: Option<PreferenceParams>,
    #[serde(default)]
    pub(crate) merge: Option<MergeParams>,
    #[serde(default = "one")]
    pub(crate) replicas: i32,
    #[serde(default)]
    pub(crate) export_merged: Option<MergedDtype>,
    pub(crate) hyperparameters: Hyperparameters,
    pub(crate) device: Device,
    #[serde(default)]
    pub(crate) dtype: BaseDtype,
    pub(crate) min_memory_bytes: i64,
    pub(crate) priority: i32,
    pub(crate) max_attempts: i32,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
}

fn one() -> i32 {
    1
}

fn first_version() -> u32 {
    1
}

fn is(list: &Option<Vec<String>>, default: &[&str]) -> bool {
    list.as_ref()
        .is_some_and(|l| l.iter().map(String::as_str).eq(default.iter().copied()))
}

impl Stored {
    /// Rewrites an older layout's values into today's meaning.
    pub(crate) fn migrate(&mut self) {
        if self.version < 2 {
            match &mut self.method {
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
                Method::PromptTuning { .. }
                | Method::PrefixTuning { .. }
                | Method::Bitfit
                | Method::Full
                | Method::Lisa { .. } => {}
            }
        }
    }
}
