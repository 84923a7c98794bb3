//! The one typed model of a fine-tuning job.
//!
//! Clients send a `tuna.v1.JobSpec`; [`JobSpec::from_proto`] validates it, fills in defaults
//! and returns the typed spec. The server decodes with it at `CreateJob` (and for every sweep
//! trial), the worker decodes the leased spec with the same function, so the two can never
//! disagree about what a job means. Which combinations of task, method and init can train is
//! decided once, in [`JobSpec::plan`], whose result the worker matches exhaustively.

mod check;
pub mod dataset;
mod job;
mod merge;
pub mod metrics;
mod names;
mod parts;
mod plan;
mod stored;

pub use check::{FieldViolation, MAX_MIN_MEMORY_BYTES, MAX_TARGET_MODULES, is_label_key};
pub use job::{
    DEFAULT_DECAY_FRACTION, DEFAULT_MAX_ATTEMPTS, DEFAULT_MIN_LR_RATIO, DEFAULT_PREFERENCE_BETA,
    DEFAULT_TIES_DENSITY, DEFAULT_ZO_EPSILON, Hyperparameters, JobSpec, LoraParams, MAX_REPLICAS,
    MergeParams, Method, PreferenceParams, SPEC_VERSION, default_alpha, wsd_decay_start,
};
pub use merge::{MAX_MERGE_RANK, MAX_MERGE_SOURCES};
pub use names::{
    BaseDtype, DecayShape, Device, LoraInit, MergeMethod, MergedDtype, MethodKind, Optimizer,
    PreferenceLoss, Schedule, Task,
};
pub use plan::{ClassInit, Plan};

#[cfg(test)]
mod merge_tests;
#[cfg(test)]
mod tests;
