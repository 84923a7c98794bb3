//! The engine behind the agent: turns a leased job (typed spec + downloaded files) into a
//! run of the one training loop ([`crate::engine::trainer::Trainer`]), reporting steps,
//! evals and checkpoints through the agent's [`Reporter`] and obeying its [`Control`].
//!
//! What to build is decided by [`JobSpec::plan`] (shared with the server), matched here
//! exhaustively: a job the server accepted always has a way to run.

mod causal;
mod chain;
mod classify;
mod merge;
mod merged;
mod settings;

use std::path::{Path, PathBuf};

use tuna_spec::{Plan, metrics};

use crate::agent::{
    Control, JobInputs, JobRunner, Part, Progress, Reporter, RunError, RunOutcome, Stop,
};
use crate::engine::trainer::{
    EvalMetrics, Event, Halt, Objective, Outcome, StopSignal, TrainError, Trainer,
};

/// Deep models recurse deeply in candle's backward pass; train on a thread with room for it.
const TRAIN_STACK_BYTES: usize = 512 * 1024 * 1024;

/// Runs jobs with the candle engine on the device of [`JobInputs::device`] (the CPU, or a
/// CUDA GPU in a binary built with the `cuda` feature), in the job's base dtype
/// ([`crate::engine::placement`]).
#[derive(Debug, Default, Clone)]
pub struct EngineRunner;

impl JobRunner for EngineRunner {
    fn run(
        &self,
        inputs: &JobInputs,
        control: &Control,
        reporter: &mut dyn Reporter,
    ) -> Result<RunOutcome, RunError> {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name(format!("train-{}", inputs.job_id))
                .stack_size(TRAIN_STACK_BYTES)
                .spawn_scoped(scope, || train(inputs, control, reporter))
                .map_err(|e| RunError::System(format!("cannot start the training thread: {e}")))?
                .join()
                .map_err(|_| RunError::System("the training thread panicked".into()))?
        })
    }
}

fn train(
    inputs: &JobInputs,
    control: &Control,
    reporter: &mut dyn Reporter,
) -> Result<RunOutcome, RunError> {
    let plan = inputs.spec.plan().map_err(|v| user(v.description))?;
    // A lo-fi job's merge step averages its shards' adapters, whatever they trained.
    if inputs.part == Part::Combine {
        return merge::run(inputs, &merge::lofi(inputs), control, reporter);
    }
    match plan {
        Plan::CausalLm { method } => causal::train(inputs, method, None, control, reporter),
        Plan::Preference { method, preference } => {
            causal::train(inputs, method, Some(preference), control, reporter)
        }
        Plan::Classification { lora, dora, init } => {
            classify::train(inputs, lora, dora, init, control, reporter)
        }
        Plan::Merge { merge } => merge::run(inputs, merge, control, reporter),
    }
}

/// The training examples this lease trains on: all of them, or a lo-fi shard's share
/// (examples `index, index + count, …`, a deterministic 1/count of the file).
pub(crate) fn shard_of<T>(all: Vec<T>, part: Part) -> Result<Vec<T>, RunError> {
    let Part::Shard { index, count } = part else {
        return Ok(all);
    };
    let total = all.len();
    let mine: Vec<T> = all.into_iter().skip(index).step_by(count.max(1)).collect();
    if mine.is_empty() {
        return Err(user(format!(
            "shard {index} of {count} has no training examples (the file has {total}); use \
             fewer replicas"
        )));
    }
    Ok(mine)
}

pub(crate) fn user(e: impl std::fmt::Display) -> RunError {
    let message = e.to_string();
    out_of_device_memory(&message).unwrap_or(RunError::User(message))
}

/// A device allocation failure is the worker's problem, not the job's: the attempt fails as
/// SYSTEM with advice, and the server offers the retry to other workers first
/// (`queue.retry_elsewhere_ms`), up to the job's max_attempts.
fn out_of_device_memory(message: &str) -> Option<RunError> {
    const MARKERS: [&str; 3] = [
        "CUDA_ERROR_OUT_OF_MEMORY",
        "CUBLAS_STATUS_ALLOC_FAILED",
        "out of memory",
    ];
    MARKERS.iter().any(|m| message.contains(m)).then(|| {
        RunError::System(format!(
            "the GPU ran out of memory ({}); retry with a smaller batch_size or max_seq_len,              a smaller rank, or resources.min_memory_bytes that only larger GPUs meet",
            message.chars().take(200).collect::<String>()
        ))
    })
}

pub(crate) fn system(e: impl std::fmt::Display) -> RunError {
    RunError::System(e.to_string())
}

/// Bad data or a bad model is the user's problem; anything else may pass on a retry.
pub(crate) fn classify_error(e: TrainError) -> RunError {
    if let Some(oom) = out_of_device_memory(&e.to_string()) {
        return oom;
    }
    match e {
        TrainError::Data(_)
        | TrainError::Model(_)
        | TrainError::Adapter(_)
        | TrainError::NonFinite { .. } => user(e),
        other => system(other),
    }
}

/// The agent's stop requests, as the training loop understands them.
impl StopSignal for Control {
    fn halt(&self) -> Option<Halt> {
        self.stop_requested().map(|stop| match stop {
            Stop::Cancel | Stop::LeaseLost => Halt::Abandon,
            Stop::Pause | Stop::Drain => Halt::Suspend,
            Stop::StopEarly => Halt::Finish,
        })
    }
}

/// Runs `trainer` for the leased job: resumes from the leased checkpoint, reports the base
/// model's eval metrics before the first step, then every step, eval and checkpoint, and
/// exports the adapter with `export` when the run finishes or is stopped early.
fn drive<O: Objective>(
    trainer: &mut Trainer<O>,
    inputs: &JobInputs,
    control: &Control,
    reporter: &mut dyn Reporter,
    export: &dyn Fn(&Path) -> Result<(), RunError>,
) -> Result<RunOutcome, RunError> {
    if let Some(dir) = &inputs.resume_from {
        trainer.resume(dir).map_err(classify_error)?;
    }
    report_base_eval(trainer, reporter)?;
    let checkpoints = inputs.work_dir.join("checkpoints");
    let total = trainer.config().max_steps;
    let outcome = trainer
        .run(control, Some(&checkpoints), &mut |event| {
            report(event, total, reporter)
        })
        .map_err(classify_error)?;
    finish(outcome, inputs, control, export)
}

/// The base model's eval loss before the first step, so users (and the demo) can see what
/// training bought.
fn report_base_eval<O: Objective>(
    trainer: &Trainer<O>,
    reporter: &mut dyn Reporter,
) -> Result<(), RunError> {
    if trainer.has_eval() && trainer.step() == 0 {
        let e = trainer.evaluate().map_err(classify_error)?;
        reporter.progress(eval_progress(&e));
    }
    Ok(())
}

/// One training event, as the agent reports it; `total` is the run's planned step count.
fn report(event: &Event, total: u64, reporter: &mut dyn Reporter) {
    match event {
        Event::Step(m) => reporter.progress(Progress {
            step: m.step as i64,
            values: [
                (metrics::LOSS.to_string(), m.loss),
                (metrics::LR.to_string(), m.lr),
                (metrics::GRAD_NORM.to_string(), m.grad_norm),
                (metrics::TOKENS_PER_S.to_string(), m.tokens_per_sec),
                (metrics::TOTAL_STEPS.to_string(), total as f64),
            ]
            .into_iter()
            .chain(m.extra.iter().map(|(name, v)| (name.to_string(), *v)))
            .collect(),
        }),
        Event::Eval(e) => reporter.progress(eval_progress(e)),
        Event::Checkpoint { step, dir } => reporter.checkpoint(*step as i64, dir),
    }
}

/// The run's result: the exported adapter when it finished or was stopped early.
fn finish(
    outcome: Outcome,
    inputs: &JobInputs,
    control: &Control,
    export: &dyn Fn(&Path) -> Result<(), RunError>,
) -> Result<RunOutcome, RunError> {
    let adapter = || -> Result<PathBuf, RunError> {
        let dir = inputs.work_dir.join("adapter");
        export(&dir)?;
        Ok(dir)
    };
    Ok(match outcome {
        Outcome::Completed { steps } => RunOutcome::Finished {
            step: steps as i64,
            adapter_dir: adapter()?,
            merged_dir: None,
        },
        Outcome::StoppedEarly { step } => RunOutcome::Stopped {
            reason: Stop::StopEarly,
            step: step as i64,
            adapter_dir: Some(adapter()?),
            merged_dir: None,
        },
        Outcome::Cancelled { step } | Outcome::Suspended { step } => RunOutcome::Stopped {
            reason: control.stop_requested().unwrap_or(Stop::Cancel),
            step: step as i64,
            adapter_dir: None,
            merged_dir: None,
        },
    })
}

fn eval_progress(e: &EvalMetrics) -> Progress {
    let mut values = std::collections::BTreeMap::new();
    values.insert(metrics::EVAL_LOSS.to_string(), e.loss);
    match e.accuracy {
        Some(a) => values.insert(metrics::EVAL_ACCURACY.to_string(), a),
        None => values.insert(metrics::EVAL_PERPLEXITY.to_string(), e.perplexity),
    };
    Progress {
        step: e.step as i64,
        values,
    }
}

#[cfg(test)]
mod tests;
