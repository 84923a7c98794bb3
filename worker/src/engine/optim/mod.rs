//! Optimization: our own AdamW (candle's keeps its moments private, so it cannot be
//! checkpointed), learning-rate schedules and global-norm gradient clipping.

pub mod adamw;
pub mod grads;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use grads::Grads;
pub use schedule::{Schedule, ScheduleKind};

/// Optimizer failures: tensor errors and state files that do not fit the parameters.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("optimizer state: {0}")]
    State(String),
    #[error("cannot access optimizer state file {path}: {reason}")]
    Io {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("tensor op failed: {0}")]
    Candle(#[from] candle_core::Error),
}
