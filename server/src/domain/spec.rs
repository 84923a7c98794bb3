//! The validated job spec lives in `tuna-spec`, shared with the worker so both decode a job
//! the same way; the server's domain names it here.

pub use tuna_spec::{
    DEFAULT_MAX_ATTEMPTS, Device, FieldViolation, Hyperparameters, JobSpec, LoraInit, LoraParams,
    Method, MethodKind, Optimizer, Schedule, Task,
};
