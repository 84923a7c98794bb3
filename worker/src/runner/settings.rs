//! The typed spec, translated into the engine's settings. Every match is exhaustive, so a
//! new spec value cannot reach the engine without a decision here.

use std::path::Path;

use tuna_proto::v1 as pb;
use tuna_spec::{DecayShape, Hyperparameters, JobSpec, LoraParams, Optimizer, Schedule};

use super::{RunError, system, user};
use crate::engine::adapters::{AdapterConfig, LoraInit, TargetModules};
use crate::engine::data::{Format, Record, jsonl};
use crate::engine::optim::{
    self, AdafactorConfig, AdamWConfig, DAdaptConfig, DogConfig, LionConfig, MezoConfig,
    OptimizerConfig, ScheduleKind,
};
use crate::engine::trainer::TrainConfig;

/// The loop's settings for a run of `total` optimizer steps.
pub(super) fn train_config(spec: &JobSpec, total: u64) -> TrainConfig {
    let h = &spec.hyperparameters;
    let every = |v: i64| (v > 0).then_some(v as u64);
    TrainConfig {
        max_steps: total,
        grad_accum: h.grad_accumulation.max(1) as usize,
        schedule: optim::Schedule {
            peak_lr: h.learning_rate,
            warmup_steps: h.warmup_steps.max(0) as u64,
            total_steps: total,
            kind: match h.schedule {
                Schedule::Cosine => ScheduleKind::Cosine { min_lr_ratio: 0.0 },
                Schedule::CosineWithMinLr => ScheduleKind::Cosine {
                    min_lr_ratio: h.min_lr_ratio,
                },
                Schedule::Linear => ScheduleKind::Linear,
                Schedule::Constant => ScheduleKind::Constant,
                Schedule::Wsd => ScheduleKind::Wsd {
                    decay_fraction: h.decay_fraction,
                    shape: match h.decay_shape {
                        DecayShape::Linear => optim::DecayShape::Linear,
                        DecayShape::Cosine => optim::DecayShape::Cosine,
                        DecayShape::OneMinusSqrt => optim::DecayShape::OneMinusSqrt,
                    },
                    min_lr_ratio: h.min_lr_ratio,
                },
                Schedule::InverseSqrt => ScheduleKind::InverseSqrt,
            },
        },
        optimizer: optimizer_config(h),
        max_grad_norm: Some(h.max_grad_norm).filter(|n| *n > 0.0),
        loraplus_ratio: spec
            .method
            .lora()
            .map(|l| l.lr_ratio_b)
            .filter(|r| *r > 1.0),
        eval_every: every(h.eval_every),
        checkpoint_every: every(h.checkpoint_every),
        seed: seed(spec),
        // Needs the model's depth: set by the causal-LM runner for method lisa.
        lisa: None,
    }
}

/// The optimizer with the spec's weight decay and each algorithm's published defaults.
fn optimizer_config(h: &Hyperparameters) -> OptimizerConfig {
    let weight_decay = h.weight_decay;
    match h.optimizer {
        Optimizer::AdamW => OptimizerConfig::AdamW(AdamWConfig {
            weight_decay,
            ..Default::default()
        }),
        Optimizer::Lion => OptimizerConfig::Lion(LionConfig {
            weight_decay,
            ..Default::default()
        }),
        Optimizer::Adafactor => OptimizerConfig::Adafactor(AdafactorConfig {
            weight_decay,
            ..Default::default()
        }),
        Optimizer::Dog => OptimizerConfig::Dog(DogConfig {
            weight_decay,
            ..Default::default()
        }),
        Optimizer::DAdaptAdam => OptimizerConfig::DAdaptAdam(DAdaptConfig {
            weight_decay,
            ..Default::default()
        }),
        Optimizer::Mezo => OptimizerConfig::Mezo(MezoConfig {
            epsilon: h.zo_epsilon,
            weight_decay,
        }),
    }
}

/// The seed of every random choice of the run.
pub(super) fn seed(spec: &JobSpec) -> u64 {
    spec.hyperparameters.seed.max(0) as u64
}

/// LoRA/DoRA settings; a module list the spec leaves to the architecture becomes `defaults`.
pub(super) fn adapter_config(
    lora: &LoraParams,
    dora: bool,
    init: LoraInit,
    defaults: &[&str],
    seed: u64,
) -> AdapterConfig {
    let r = lora.r.max(1) as usize;
    let targets = match lora.target_modules.as_deref() {
        None => TargetModules::names(defaults.iter().copied()),
        Some([only]) if only == "all-linear" => TargetModules::all_linear(),
        Some(names) => TargetModules::names(names.iter().cloned()),
    };
    AdapterConfig {
        lora_dropout: lora.dropout as f32,
        use_rslora: lora.use_rslora,
        use_dora: dora,
        init,
        seed,
        ..AdapterConfig::lora(r, lora.alpha, targets)
    }
}

/// Numbered records of a dataset in the format the server validated at upload.
pub(super) fn records(
    path: &Path,
    format: pb::DatasetFormat,
) -> Result<Vec<(usize, Record)>, RunError> {
    let format = match format {
        pb::DatasetFormat::Text => Format::Text,
        pb::DatasetFormat::PromptCompletion => Format::PromptCompletion,
        pb::DatasetFormat::Chat => Format::Chat,
        pb::DatasetFormat::Classification => Format::Classification,
        pb::DatasetFormat::Preference => Format::Preference,
        pb::DatasetFormat::Unspecified => {
            return Err(system(format!(
                "{}: the server sent no validated dataset format",
                path.display()
            )));
        }
    };
    jsonl::read_numbered(path, format).map_err(user)
}
