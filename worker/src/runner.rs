//! The engine behind the agent: turns a leased job (spec + downloaded files) into a training
//! run of `engine::trainer`, reporting steps, evals and checkpoints through the agent's
//! [`Reporter`] and obeying its [`Control`] between steps.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use tuna_proto::v1 as pb;

use crate::agent::{Control, JobInputs, JobRunner, Progress, Reporter, RunError, RunOutcome, Stop};
use crate::engine::adapters::methods::{self, Method};
use crate::engine::adapters::{AdapterConfig, AdapterSet, LoraInit, TargetModules};
use crate::engine::data::tokenizer::load_for_model;
use crate::engine::data::{Example, Format, Loader, Tokenizer, examples_from_records, jsonl};
use crate::engine::export;
use crate::engine::model::{Llama, gguf};
use crate::engine::optim::{AdamWConfig, Schedule, ScheduleKind};
use crate::engine::trainer::{TrainConfig, TrainError, Trainer};

/// Deep models recurse deeply in candle's backward pass; train on a thread with room for it.
const TRAIN_STACK_BYTES: usize = 512 * 1024 * 1024;

/// Runs jobs with the candle engine on the CPU (f32).
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

pub(crate) fn user(e: impl std::fmt::Display) -> RunError {
    RunError::User(e.to_string())
}

pub(crate) fn system(e: impl std::fmt::Display) -> RunError {
    RunError::System(e.to_string())
}

/// Bad data or a bad model is the user's problem; anything else may pass on a retry.
pub(crate) fn classify(e: TrainError) -> RunError {
    match e {
        TrainError::Data(_)
        | TrainError::Model(_)
        | TrainError::Adapter(_)
        | TrainError::NonFinite { .. } => user(e),
        other => system(other),
    }
}

/// The record format of a JSONL file, from its first record.
fn detect_format(path: &Path) -> Result<Format, RunError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| system(format!("{}: {e}", path.display())))?;
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| user("the dataset is empty"))?;
    let value: serde_json::Value =
        serde_json::from_str(first).map_err(|e| user(format!("line 1: invalid JSON: {e}")))?;
    if value.get("messages").is_some() {
        Ok(Format::Chat)
    } else if value.get("prompt").is_some() {
        Ok(Format::PromptCompletion)
    } else if value.get("label").is_some() {
        Err(user(
            "this dataset has labels: create the job with task = classification (an encoder \
             such as BERT with a classification head); causal LMs train on text, \
             prompt/completion and chat datasets",
        ))
    } else {
        Ok(Format::Text)
    }
}

fn examples(path: &Path, tok: &dyn Tokenizer, max_len: usize) -> Result<Vec<Example>, RunError> {
    let format = detect_format(path)?;
    let records = jsonl::read_numbered(path, format).map_err(user)?;
    examples_from_records(&records, tok, max_len).map_err(user)
}

/// The model and the tokenizer that goes with it: an HF folder's tokenizer.json (the byte
/// tokenizer when the folder has none), or the tokenizer rebuilt from GGUF metadata.
fn load_model(inputs: &JobInputs) -> Result<(Llama, Box<dyn Tokenizer>), RunError> {
    if inputs.model_format == pb::ModelFormat::Gguf {
        let file = std::fs::read_dir(&inputs.model_dir)
            .map_err(system)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "gguf"))
            .ok_or_else(|| user("the GGUF model has no .gguf file"))?;
        let m = gguf::read(&file, DType::F32, &Device::Cpu).map_err(user)?;
        let Some(tok) = m.tokenizer else {
            return Err(user(format!(
                "no tokenizer could be built from the GGUF metadata: {}",
                m.tokenizer_error.unwrap_or_default()
            )));
        };
        let model = Llama::load(m.config, &m.weights).map_err(user)?;
        return Ok((model, Box::new(tok)));
    }
    let model = Llama::from_dir(&inputs.model_dir, DType::F32, &Device::Cpu).map_err(user)?;
    let tok = load_for_model(&inputs.model_dir).map_err(user)?;
    Ok((model, tok))
}

pub(crate) fn adapter_config(spec: &pb::JobSpec, seed: u64) -> Result<AdapterConfig, RunError> {
    let method = spec.method.clone().unwrap_or_default();
    let dora = match method.r#type.as_str() {
        "lora" => false,
        "dora" => true,
        other => {
            return Err(user(format!(
                "method {other:?} is not one of lora, dora, ia3, prompt_tuning, bitfit, full"
            )));
        }
    };
    let lora = method.lora.unwrap_or_default();
    let r = lora.r.unwrap_or(8).max(1) as usize;
    let targets = if lora.target_modules.iter().any(|m| m == "all-linear") {
        TargetModules::all_linear()
    } else if lora.target_modules.is_empty() {
        TargetModules::names(["q_proj", "v_proj"])
    } else {
        TargetModules::names(lora.target_modules.clone())
    };
    let init = match lora.init.as_str() {
        "" | "gaussian" => LoraInit::Default,
        "pissa" => LoraInit::Pissa,
        other => {
            return Err(user(format!(
                "LoRA init {other:?} is not supported by this worker yet"
            )));
        }
    };
    Ok(AdapterConfig {
        lora_dropout: lora.dropout.unwrap_or(0.0) as f32,
        use_rslora: lora.use_rslora,
        use_dora: dora,
        init,
        seed,
        ..AdapterConfig::lora(r, lora.alpha.unwrap_or(2.0 * r as f64), targets)
    })
}

fn train(
    inputs: &JobInputs,
    control: &Control,
    reporter: &mut dyn Reporter,
) -> Result<RunOutcome, RunError> {
    let spec = &inputs.spec;
    if spec.task == "classification" {
        return crate::classify_runner::train(inputs, control, reporter);
    }
    let h = spec.hyperparameters.clone().unwrap_or_default();
    let seed = h.seed.unwrap_or(0).max(0) as u64;
    let (mut model, tok) = load_model(inputs)?;
    let tok = tok.as_ref();
    if model.config().vocab_size < tok.vocab_size() {
        return Err(user(format!(
            "the model's vocabulary ({}) is smaller than its tokenizer's ({})",
            model.config().vocab_size,
            tok.vocab_size()
        )));
    }
    let max_len = h.max_seq_len.unwrap_or(512).max(2) as usize;
    let batch = h.batch_size.unwrap_or(8).max(1) as usize;
    let accum = h.grad_accumulation.unwrap_or(1).max(1) as usize;
    let train_set = examples(&inputs.training_file, tok, max_len)?;
    let per_epoch = train_set.len().div_ceil(batch * accum).max(1) as u64;
    let total = match h.max_steps {
        Some(s) => s.max(1) as u64,
        None => per_epoch * h.epochs.unwrap_or(3).max(1) as u64,
    };
    let train_loader = Loader::new(train_set, batch, seed, tok.pad_id()).map_err(user)?;
    let eval_loader = match &inputs.validation_file {
        Some(p) => {
            Some(Loader::new(examples(p, tok, max_len)?, batch, seed, tok.pad_id()).map_err(user)?)
        }
        None => None,
    };
    let method = spec.method.clone().unwrap_or_default();
    let other = match method.r#type.as_str() {
        "ia3" => {
            let modules = method
                .ia3
                .map(|p| p.target_modules)
                .filter(|m| !m.is_empty());
            Some(Method::Ia3 {
                target_modules: modules,
                feedforward_modules: None,
            })
        }
        "prompt_tuning" => Some(Method::PromptTuning {
            num_virtual_tokens: method
                .prompt_tuning
                .and_then(|p| p.num_virtual_tokens)
                .unwrap_or(20)
                .max(1) as usize,
        }),
        "bitfit" => Some(Method::BitFit),
        "full" => Some(Method::Full),
        _ => None,
    };
    let adapters = match other {
        Some(m) => methods::attach(&mut model, &m, seed).map_err(user)?,
        None => AdapterSet::attach(&mut model, &adapter_config(spec, seed)?).map_err(user)?,
    };
    let schedule_kind = match h.schedule.as_str() {
        "linear" => ScheduleKind::Linear,
        "constant" => ScheduleKind::Constant,
        _ => ScheduleKind::Cosine { min_lr_ratio: 0.0 },
    };
    let lora = spec
        .method
        .clone()
        .unwrap_or_default()
        .lora
        .unwrap_or_default();
    let every = |v: Option<i64>| v.filter(|n| *n > 0).map(|n| n as u64);
    let config = TrainConfig {
        max_steps: total,
        grad_accum: accum,
        schedule: Schedule {
            peak_lr: h.learning_rate.unwrap_or(2e-4),
            warmup_steps: h.warmup_steps.unwrap_or(0).max(0) as u64,
            total_steps: total,
            kind: schedule_kind,
        },
        adamw: AdamWConfig {
            weight_decay: h.weight_decay.unwrap_or(0.0),
            ..Default::default()
        },
        max_grad_norm: h.max_grad_norm.filter(|n| *n > 0.0),
        loraplus_ratio: lora.lr_ratio_b.filter(|r| *r > 1.0),
        eval_every: every(h.eval_every),
        checkpoint_every: every(h.checkpoint_every),
        seed,
    };
    let has_eval = eval_loader.is_some();
    let mut trainer = Trainer::new(&model, &adapters, train_loader, eval_loader, config.clone())
        .map_err(classify)?;
    if let Some(dir) = &inputs.resume_from {
        trainer.resume(dir).map_err(classify)?;
    }
    let checkpoints = inputs.work_dir.join("checkpoints");
    let checkpoint =
        |trainer: &Trainer<'_, Llama>, reporter: &mut dyn Reporter| -> Result<(), RunError> {
            let dir = checkpoints.join(format!("step-{}", trainer.step()));
            trainer.save_checkpoint(&dir).map_err(classify)?;
            reporter.checkpoint(trainer.step() as i64, &dir);
            Ok(())
        };
    let export_adapter = |dir: PathBuf| -> Result<PathBuf, RunError> {
        export::save_adapter(&dir, &adapters, &spec.base_model, "CAUSAL_LM").map_err(system)?;
        Ok(dir)
    };
    // The base model's eval loss, so users (and the demo) can see what training bought.
    if has_eval && trainer.step() == 0 {
        let e = trainer.evaluate().map_err(classify)?;
        reporter.progress(Progress {
            step: 0,
            values: [
                ("eval_loss".to_string(), e.loss),
                ("eval_perplexity".to_string(), e.perplexity),
            ]
            .into_iter()
            .collect(),
        });
    }
    while trainer.step() < total {
        match control.stop_requested() {
            None => {}
            Some(Stop::LeaseLost) | Some(Stop::Cancel) => {
                let reason = control.stop_requested().unwrap_or(Stop::Cancel);
                return Ok(RunOutcome::Stopped {
                    reason,
                    step: trainer.step() as i64,
                    adapter_dir: None,
                });
            }
            Some(reason @ (Stop::Pause | Stop::Drain)) => {
                checkpoint(&trainer, reporter)?;
                return Ok(RunOutcome::Stopped {
                    reason,
                    step: trainer.step() as i64,
                    adapter_dir: None,
                });
            }
            Some(Stop::StopEarly) => {
                let dir = export_adapter(inputs.work_dir.join("adapter"))?;
                return Ok(RunOutcome::Stopped {
                    reason: Stop::StopEarly,
                    step: trainer.step() as i64,
                    adapter_dir: Some(dir),
                });
            }
        }
        let m = trainer.train_step().map_err(classify)?;
        let step = m.step;
        reporter.progress(Progress {
            step: step as i64,
            values: [
                ("loss".to_string(), m.loss),
                ("lr".to_string(), m.lr),
                ("grad_norm".to_string(), m.grad_norm),
                ("tokens_per_s".to_string(), m.tokens_per_sec),
                ("total_steps".to_string(), total as f64),
            ]
            .into_iter()
            .collect(),
        });
        let last = step == total;
        let due = |n: Option<u64>| n.is_some_and(|n| step.is_multiple_of(n)) || last;
        if has_eval && due(config.eval_every) {
            let e = trainer.evaluate().map_err(classify)?;
            reporter.progress(Progress {
                step: step as i64,
                values: [
                    ("eval_loss".to_string(), e.loss),
                    ("eval_perplexity".to_string(), e.perplexity),
                ]
                .into_iter()
                .collect(),
            });
        }
        // Including the final step when it is due: a sweep's ASHA promotion resumes a run
        // that ended at its rung from exactly there.
        if config
            .checkpoint_every
            .is_some_and(|n| step.is_multiple_of(n))
        {
            checkpoint(&trainer, reporter)?;
        }
    }
    let dir = export_adapter(inputs.work_dir.join("adapter"))?;
    Ok(RunOutcome::Finished {
        step: trainer.step() as i64,
        adapter_dir: dir,
    })
}
