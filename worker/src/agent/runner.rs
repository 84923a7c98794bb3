//! The seam between the agent (network, leases) and the training engine (compute).
//!
//! The agent calls [`JobRunner::run`] on a blocking thread. The runner checks
//! [`Control::stop_requested`] between steps, reports progress through [`Reporter`] without
//! ever waiting on the network, and hands checkpoint directories to the reporter for upload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use tuna_proto::v1 as pb;

/// Everything a run needs, already downloaded and verified.
#[derive(Debug, Clone)]
pub struct JobInputs {
    pub job_id: String,
    pub attempt: i32,
    /// The spec, decoded and validated by `tuna-spec` exactly as the server did.
    pub spec: tuna_spec::JobSpec,
    /// The model folder (HF layout) or the folder holding the single GGUF file.
    pub model_dir: PathBuf,
    pub model_format: pb::ModelFormat,
    /// `None` only for a merge job, which trains nothing.
    pub training_file: Option<PathBuf>,
    /// The line format the server validated at upload (the worker never re-detects it).
    pub training_format: pb::DatasetFormat,
    pub validation_file: Option<PathBuf>,
    pub validation_format: pb::DatasetFormat,
    /// An extracted checkpoint to resume from (exact resume: adapter, optimizer, step, cursor,
    /// RNG).
    pub resume_from: Option<PathBuf>,
    /// A merge job's sources (spec order) or a lo-fi job's shards (shard order): each one's
    /// final adapter folder (HF PEFT).
    pub merge_sources: Vec<PathBuf>,
    /// Which part of the job this lease runs.
    pub part: Part,
    /// Scratch space of this attempt; removed afterwards.
    pub work_dir: PathBuf,
    /// The device this worker trains on (opened once at start-up).
    pub device: candle_core::Device,
}

/// What a lease asks of the worker: the whole job, one shard of a lo-fi job, or a lo-fi
/// job's merge step (after its shards succeeded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Whole,
    /// Train on examples `index, index + count, …` of the training file.
    Shard {
        index: usize,
        count: usize,
    },
    /// Average the shards' adapters (`merge_sources`) into the job's adapter.
    Combine,
}

impl JobInputs {
    /// The training file, which every task but merge has.
    pub fn training(&self) -> Result<&Path, RunError> {
        self.training_file
            .as_deref()
            .ok_or_else(|| RunError::User("this job has no training file".into()))
    }
}

/// Why a run should stop before it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stop {
    /// The job was cancelled: stop now, no checkpoint needed.
    Cancel = 1,
    /// The job is pausing: checkpoint, then stop.
    Pause = 2,
    /// A sweep stopped this trial early: finish as a success with the current adapter.
    StopEarly = 3,
    /// The worker is shutting down: checkpoint, then stop; the job goes back to the queue.
    Drain = 4,
    /// The lease is gone (another worker may own the job): stop at once, write nothing.
    LeaseLost = 5,
}

impl Stop {
    fn from_u8(v: u8) -> Option<Stop> {
        Some(match v {
            1 => Stop::Cancel,
            2 => Stop::Pause,
            3 => Stop::StopEarly,
            4 => Stop::Drain,
            5 => Stop::LeaseLost,
            _ => return None,
        })
    }
}

/// Stop requests shared between the agent's tasks and the training thread.
#[derive(Debug, Default)]
pub struct Control(AtomicU8);

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a stop request. The first request wins, except that a lost lease overrides
    /// everything: nothing may be written for a job this worker no longer owns.
    pub fn request(&self, stop: Stop) {
        if stop == Stop::LeaseLost {
            self.0.store(stop as u8, Ordering::SeqCst);
        } else {
            let _ = self
                .0
                .compare_exchange(0, stop as u8, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// The pending stop request, if any; checked by the engine every step.
    pub fn stop_requested(&self) -> Option<Stop> {
        Stop::from_u8(self.0.load(Ordering::SeqCst))
    }
}

/// One progress report (one optimizer step, or an evaluation).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub step: i64,
    /// loss, lr, grad_norm, tokens_per_s, eval_loss, ...
    pub values: BTreeMap<String, f64>,
}

/// Where the engine sends progress and checkpoints. Implementations never block on I/O.
pub trait Reporter: Send {
    fn progress(&mut self, p: Progress);
    /// Hands over a finished checkpoint directory for upload. The directory belongs to the
    /// agent from now on (it is packed, uploaded, then removed), so the engine must write
    /// each checkpoint to a fresh directory.
    fn checkpoint(&mut self, step: i64, dir: &Path);
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// Training completed; `adapter_dir` holds the HF PEFT adapter files, `merged_dir` the
    /// merged model when the spec asked for one.
    Finished {
        step: i64,
        adapter_dir: PathBuf,
        merged_dir: Option<PathBuf>,
    },
    /// Stopped on request. A pause or drain must have handed a checkpoint to the reporter
    /// before returning; a stop-early returns the adapter trained so far (and the merged
    /// model when asked).
    Stopped {
        reason: Stop,
        step: i64,
        adapter_dir: Option<PathBuf>,
        merged_dir: Option<PathBuf>,
    },
}

/// Why a run failed; decides whether the job is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// Bad data, spec or model: retrying cannot help.
    #[error("{0}")]
    User(String),
    /// Infrastructure trouble (out of memory, I/O): retried on a worker, maybe this one.
    #[error("{0}")]
    System(String),
}

/// The training engine as the agent sees it.
pub trait JobRunner: Send + Sync {
    fn run(
        &self,
        inputs: &JobInputs,
        control: &Control,
        reporter: &mut dyn Reporter,
    ) -> Result<RunOutcome, RunError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_request_wins_but_a_lost_lease_overrides_all() {
        let c = Control::new();
        assert_eq!(c.stop_requested(), None);
        c.request(Stop::Pause);
        c.request(Stop::Cancel);
        assert_eq!(c.stop_requested(), Some(Stop::Pause));
        c.request(Stop::LeaseLost);
        c.request(Stop::Drain);
        assert_eq!(c.stop_requested(), Some(Stop::LeaseLost));
    }
}
