//! The validated job spec and its conversion from and to the wire message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tuna_proto::v1 as pb;

use crate::check::{Check, FieldViolation, MAX_MIN_MEMORY_BYTES};
use crate::merge::{merge_from_proto, merge_to_proto};
use crate::names::{
    BaseDtype, DecayShape, Device, LoraInit, MergedDtype, MethodKind, Optimizer, PreferenceLoss,
    Schedule, Task, list,
};
pub use crate::parts::{
    DEFAULT_DECAY_FRACTION, DEFAULT_MIN_LR_RATIO, DEFAULT_PREFERENCE_BETA, DEFAULT_TIES_DENSITY,
    DEFAULT_ZO_EPSILON, Hyperparameters, LoraParams, MergeParams, Method, PreferenceParams,
    wsd_decay_start,
};
use crate::stored::Stored;

/// The validated spec of a job: what the store keeps (as versioned JSON) and what both the
/// server and the worker reason about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct JobSpec {
    /// Version of the stored layout ([`SPEC_VERSION`] for specs written by this code).
    pub version: u32,
    pub base_model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub task: Task,
    pub method: Method,
    /// `Some` exactly when `task` is preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceParams>,
    /// `Some` exactly when `task` is merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeParams>,
    /// lo-fi data-parallel shards (1: the job trains on one worker).
    #[serde(skip_serializing_if = "is_one")]
    pub replicas: i32,
    /// `Some(dtype)`: also export the merged model in that dtype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_merged: Option<MergedDtype>,
    pub hyperparameters: Hyperparameters,
    pub device: Device,
    /// The base weights' dtype on the device ([`BaseDtype::Auto`] resolves per worker).
    #[serde(default, skip_serializing_if = "BaseDtype::is_auto")]
    pub dtype: BaseDtype,
    pub min_memory_bytes: i64,
    pub priority: i32,
    pub max_attempts: i32,
    pub labels: BTreeMap<String, String>,
}

fn is_one(n: &i32) -> bool {
    *n == 1
}

/// Most shards of a lo-fi job.
pub const MAX_REPLICAS: i32 = 64;

/// Version written by this code.
///
/// - 1: the first layout. Its `init = "gaussian"` meant PEFT's *default* init, and module
///   lists were always filled with the causal-LM defaults.
/// - 2: `init` names PEFT's `init_lora_weights` (`default`, `gaussian`, ...); a module list
///   left to the architecture is absent.
pub const SPEC_VERSION: u32 = 2;

/// Default number of attempts before a job fails for good.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;

const DEFAULT_NUM_VIRTUAL_TOKENS: i32 = 20;

/// LISA's sampled layers and resampling interval when the spec names none (the paper's
/// defaults for 7B models are γ = 2, K = 20).
const DEFAULT_LISA_LAYERS: i32 = 2;
const DEFAULT_LISA_INTERVAL: i64 = 20;

/// LoRA's default alpha for rank `r` (PEFT examples' `2r`).
pub fn default_alpha(r: i32) -> f64 {
    2.0 * f64::from(r.max(1))
}

impl JobSpec {
    /// Validates a wire spec and fills in defaults; every violation is reported at once, and
    /// a combination no worker can train is refused here, naming the field.
    pub fn from_proto(spec: Option<&pb::JobSpec>) -> Result<Self, Vec<FieldViolation>> {
        let mut c = Check::default();
        let Some(spec) = spec else {
            c.fail("spec", "is required");
            return Err(c.0);
        };
        c.id("spec.base_model", spec.base_model.trim(), true);
        c.id("spec.validation_file", &spec.validation_file, false);
        c.labels(&spec.labels);
        let task = c.named(
            "spec.task",
            &spec.task,
            Task::parse,
            Task::NAMES,
            Task::CausalLm,
        );
        let method = match task {
            Task::CausalLm | Task::Classification | Task::Preference => {
                c.id("spec.training_file", &spec.training_file, true);
                method_from_proto(&mut c, spec.method.as_ref())
            }
            Task::Merge => merge_output(&mut c, spec),
        };
        let preference = preference_from_proto(&mut c, task, spec.preference.as_ref());
        let merge = merge_from_proto(&mut c, task, spec.merge.as_ref());
        let export_merged = if spec.export_merged {
            Some(c.named(
                "spec.merged_dtype",
                &spec.merged_dtype,
                MergedDtype::parse,
                MergedDtype::NAMES,
                MergedDtype::F32,
            ))
        } else {
            if !spec.merged_dtype.is_empty() {
                c.fail(
                    "spec.merged_dtype",
                    "is only used with export_merged = true",
                );
            }
            None
        };
        let hyperparameters = hyper_from_proto(&mut c, spec.hyperparameters.as_ref());
        if hyperparameters.gradient_checkpointing && task != Task::CausalLm {
            c.fail(
                "spec.hyperparameters.gradient_checkpointing",
                format!("is available for causal_lm jobs; this job's task is {task}"),
            );
        }
        let res = spec.resources.clone().unwrap_or_default();
        let device = c.named(
            "spec.resources.device",
            &res.device,
            Device::parse,
            Device::NAMES,
            Device::Any,
        );
        let dtype = c.named(
            "spec.resources.dtype",
            &res.dtype,
            BaseDtype::parse,
            BaseDtype::NAMES,
            BaseDtype::Auto,
        );
        let min_memory_bytes = c.range_i64(
            "spec.resources.min_memory_bytes",
            res.min_memory_bytes,
            0,
            MAX_MIN_MEMORY_BYTES,
        );
        let priority = c.range_i32("spec.priority", spec.priority, -1000, 1000);
        let replicas = match spec.replicas {
            0 => 1,
            n => c.range_i32("spec.replicas", n, 1, MAX_REPLICAS),
        };
        let max_attempts = if spec.max_attempts == 0 {
            DEFAULT_MAX_ATTEMPTS
        } else {
            c.range_i32("spec.max_attempts", spec.max_attempts, 1, 100)
        };
        let Some(method) = method else {
            return Err(c.0);
        };
        if matches!(dtype, BaseDtype::Bf16 | BaseDtype::F16) && method.trains_base_weights() {
            c.fail(
                "spec.resources.dtype",
                format!(
                    "method {} trains base weights, which are kept in f32; use dtype f32 or auto",
                    method.kind().as_str()
                ),
            );
        }
        let job = JobSpec {
            version: SPEC_VERSION,
            base_model: spec.base_model.trim().to_string(),
            training_file: spec.training_file.clone(),
            validation_file: (!spec.validation_file.is_empty())
                .then(|| spec.validation_file.clone()),
            task,
            method,
            preference,
            merge,
            replicas,
            export_merged,
            hyperparameters,
            device,
            dtype,
            min_memory_bytes,
            priority,
            max_attempts,
            labels: spec
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        // A field already refused above is not refused twice.
        if let Err(v) = job.plan()
            && !c.0.iter().any(|seen| seen.field == v.field)
        {
            c.0.push(v);
        }
        if !c.0.is_empty() {
            return Err(c.0);
        }
        Ok(job)
    }

    /// The spec as sent to clients and workers, with every default made explicit (module
    /// lists left to the architecture stay empty).
    pub fn to_proto(&self) -> pb::JobSpec {
        let h = &self.hyperparameters;
        let m = &self.method;
        pb::JobSpec {
            base_model: self.base_model.clone(),
            training_file: self.training_file.clone(),
            validation_file: self.validation_file.clone().unwrap_or_default(),
            // A merge's output method is implied (lora); the wire spec leaves it out.
            method: (self.task != Task::Merge).then(|| pb::Method {
                r#type: m.kind().as_str().to_string(),
                lora: m.lora().map(|l| pb::LoraParams {
                    r: Some(l.r),
                    alpha: Some(l.alpha),
                    dropout: Some(l.dropout),
                    target_modules: l.target_modules.clone().unwrap_or_default(),
                    use_rslora: l.use_rslora,
                    init: l.init.as_str().to_string(),
                    lr_ratio_b: Some(l.lr_ratio_b),
                    chain_every: l.chain_every,
                }),
                prompt_tuning: match m {
                    Method::PromptTuning { num_virtual_tokens } => Some(pb::PromptTuningParams {
                        num_virtual_tokens: Some(*num_virtual_tokens),
                    }),
                    _ => None,
                },
                prefix_tuning: match m {
                    Method::PrefixTuning { num_virtual_tokens } => Some(pb::PrefixTuningParams {
                        num_virtual_tokens: Some(*num_virtual_tokens),
                    }),
                    _ => None,
                },
                ia3: match m {
                    Method::Ia3 { target_modules } => Some(pb::Ia3Params {
                        target_modules: target_modules.clone().unwrap_or_default(),
                    }),
                    _ => None,
                },
                lisa: match m {
                    Method::Lisa { layers, interval } => Some(pb::LisaParams {
                        layers: Some(*layers),
                        interval: Some(*interval),
                    }),
                    _ => None,
                },
            }),
            merge: self.merge.as_ref().map(merge_to_proto),
            replicas: self.replicas,
            export_merged: self.export_merged.is_some(),
            merged_dtype: self
                .export_merged
                .map(|d| d.as_str().to_string())
                .unwrap_or_default(),
            preference: self.preference.map(|p| pb::Preference {
                loss: p.loss.as_str().to_string(),
                beta: Some(p.beta),
                label_smoothing: (p.loss == PreferenceLoss::Dpo).then_some(p.label_smoothing),
            }),
            hyperparameters: Some(pb::Hyperparameters {
                learning_rate: (!h.auto_learning_rate).then_some(h.learning_rate),
                epochs: Some(h.epochs),
                max_steps: h.max_steps,
                batch_size: Some(h.batch_size),
                grad_accumulation: Some(h.grad_accumulation),
                warmup_steps: Some(h.warmup_steps),
                schedule: h.schedule.as_str().to_string(),
                weight_decay: Some(h.weight_decay),
                max_seq_len: Some(h.max_seq_len),
                seed: Some(h.seed),
                eval_every: Some(h.eval_every),
                checkpoint_every: Some(h.checkpoint_every),
                max_grad_norm: Some(h.max_grad_norm),
                optimizer: h.optimizer.as_str().to_string(),
                auto_learning_rate: h.auto_learning_rate,
                min_lr_ratio: matches!(h.schedule, Schedule::CosineWithMinLr | Schedule::Wsd)
                    .then_some(h.min_lr_ratio),
                decay_fraction: (h.schedule == Schedule::Wsd).then_some(h.decay_fraction),
                decay_shape: if h.schedule == Schedule::Wsd {
                    h.decay_shape.as_str().to_string()
                } else {
                    String::new()
                },
                prompt_loss_weight: Some(h.prompt_loss_weight),
                zo_epsilon: (h.optimizer == Optimizer::Mezo).then_some(h.zo_epsilon),
                gradient_checkpointing: h.gradient_checkpointing,
            }),
            resources: Some(pb::Resources {
                device: self.device.as_str().to_string(),
                min_memory_bytes: self.min_memory_bytes,
                dtype: if self.dtype.is_auto() {
                    String::new()
                } else {
                    self.dtype.as_str().to_string()
                },
            }),
            priority: self.priority,
            max_attempts: self.max_attempts,
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            task: self.task.as_str().to_string(),
        }
    }

    /// Optimizer steps of one epoch, for `examples` training examples.
    pub fn steps_per_epoch(&self, examples: usize) -> u64 {
        let h = &self.hyperparameters;
        let window = (h.batch_size.max(1) as usize) * (h.grad_accumulation.max(1) as usize);
        examples.div_ceil(window).max(1) as u64
    }

    /// The run's total optimizer steps: `max_steps`, else `epochs` passes over the data.
    pub fn total_steps(&self, examples: usize) -> u64 {
        let h = &self.hyperparameters;
        match h.max_steps {
            Some(s) => s.max(1) as u64,
            None => self.steps_per_epoch(examples) * h.epochs.max(1) as u64,
        }
    }
}

/// A merge job's method: its output is a LoRA adapter whose rank is `merge.rank`, so the
/// spec names no method (or a bare `lora`).
fn merge_output(c: &mut Check, spec: &pb::JobSpec) -> Option<Method> {
    if !spec.training_file.is_empty() {
        c.fail(
            "spec.training_file",
            "a merge job trains nothing: leave it empty (validation_file measures the merge)",
        );
    }
    if let Some(m) = &spec.method {
        let bare = pb::Method {
            r#type: m.r#type.clone(),
            ..Default::default()
        };
        if !(m.r#type.is_empty() || m.r#type == MethodKind::Lora.as_str()) || *m != bare {
            c.fail(
                "spec.method",
                "a merge job writes a LoRA adapter whose rank is merge.rank: leave method \
                 unset (or a bare {type: lora})",
            );
        }
    }
    Some(Method::Lora {
        lora: lora_from_proto(c, pb::LoraParams::default()),
    })
}

fn method_from_proto(c: &mut Check, method: Option<&pb::Method>) -> Option<Method> {
    let Some(method) = method else {
        c.fail(
            "spec.method",
            format!(
                "is required; method.type is one of {}",
                list(MethodKind::NAMES)
            ),
        );
        return None;
    };
    let Some(kind) = MethodKind::parse(&method.r#type) else {
        let shown: String = method.r#type.chars().take(64).collect();
        c.fail(
            "spec.method.type",
            format!(
                "unknown method {shown:?}; expected one of {}",
                list(MethodKind::NAMES)
            ),
        );
        return None;
    };
    Some(match kind {
        MethodKind::Lora => Method::Lora {
            lora: lora_from_proto(c, method.lora.clone().unwrap_or_default()),
        },
        MethodKind::Dora => Method::Dora {
            lora: lora_from_proto(c, method.lora.clone().unwrap_or_default()),
        },
        MethodKind::Ia3 => {
            let modules = method
                .ia3
                .as_ref()
                .map(|p| p.target_modules.clone())
                .unwrap_or_default();
            Method::Ia3 {
                target_modules: c.modules("spec.method.ia3.target_modules", &modules),
            }
        }
        MethodKind::PromptTuning => {
            let n = method
                .prompt_tuning
                .and_then(|p| p.num_virtual_tokens)
                .unwrap_or(DEFAULT_NUM_VIRTUAL_TOKENS);
            Method::PromptTuning {
                num_virtual_tokens: c.range_i32(
                    "spec.method.prompt_tuning.num_virtual_tokens",
                    n,
                    1,
                    512,
                ),
            }
        }
        MethodKind::PrefixTuning => {
            let n = method
                .prefix_tuning
                .and_then(|p| p.num_virtual_tokens)
                .unwrap_or(DEFAULT_NUM_VIRTUAL_TOKENS);
            Method::PrefixTuning {
                num_virtual_tokens: c.range_i32(
                    "spec.method.prefix_tuning.num_virtual_tokens",
                    n,
                    1,
                    512,
                ),
            }
        }
        MethodKind::Bitfit => Method::Bitfit,
        MethodKind::Full => Method::Full,
        MethodKind::Lisa => {
            let p = method.lisa.unwrap_or_default();
            Method::Lisa {
                layers: c.range_i32(
                    "spec.method.lisa.layers",
                    p.layers.unwrap_or(DEFAULT_LISA_LAYERS),
                    1,
                    1024,
                ),
                interval: c.range_i64(
                    "spec.method.lisa.interval",
                    p.interval.unwrap_or(DEFAULT_LISA_INTERVAL),
                    1,
                    1_000_000,
                ),
            }
        }
    })
}

fn lora_from_proto(c: &mut Check, p: pb::LoraParams) -> LoraParams {
    let r = c.range_i32("spec.method.lora.r", p.r.unwrap_or(8), 1, 1024);
    // The default follows r; an invalid r must not make the default alpha look invalid too.
    let alpha = p.alpha.unwrap_or(default_alpha(r));
    if c.finite("spec.method.lora.alpha", alpha) && alpha <= 0.0 {
        c.fail(
            "spec.method.lora.alpha",
            format!("must be > 0, got {alpha}"),
        );
    }
    let dropout = p.dropout.unwrap_or(0.0);
    if c.finite("spec.method.lora.dropout", dropout) && !(0.0..1.0).contains(&dropout) {
        c.fail(
            "spec.method.lora.dropout",
            format!("must be in [0, 1), got {dropout}"),
        );
    }
    let lr_ratio_b = p.lr_ratio_b.unwrap_or(1.0);
    if c.finite("spec.method.lora.lr_ratio_b", lr_ratio_b) && lr_ratio_b < 1.0 {
        c.fail(
            "spec.method.lora.lr_ratio_b",
            format!("must be >= 1, got {lr_ratio_b}"),
        );
    }
    LoraParams {
        r,
        alpha,
        dropout,
        target_modules: c.modules("spec.method.lora.target_modules", &p.target_modules),
        use_rslora: p.use_rslora,
        init: c.named(
            "spec.method.lora.init",
            &p.init,
            LoraInit::parse,
            LoraInit::NAMES,
            LoraInit::Default,
        ),
        lr_ratio_b,
        chain_every: p
            .chain_every
            .map(|n| c.range_i64("spec.method.lora.chain_every", n, 1, 100_000_000)),
    }
}

/// The preference loss of a preference job (defaults filled in); `None` for other tasks,
/// which must not name one.
fn preference_from_proto(
    c: &mut Check,
    task: Task,
    p: Option<&pb::Preference>,
) -> Option<PreferenceParams> {
    let f = "spec.preference";
    match task {
        Task::CausalLm | Task::Classification | Task::Merge => {
            if p.is_some() {
                c.fail(f, format!("is for task = preference, not {task}"));
            }
            return None;
        }
        Task::Preference => {}
    }
    let p = p.cloned().unwrap_or_default();
    let loss = c.named(
        &format!("{f}.loss"),
        &p.loss,
        PreferenceLoss::parse,
        PreferenceLoss::NAMES,
        PreferenceLoss::Dpo,
    );
    let beta = p.beta.unwrap_or(DEFAULT_PREFERENCE_BETA);
    if c.finite(&format!("{f}.beta"), beta) && !(beta > 0.0 && beta <= 10.0) {
        c.fail(
            &format!("{f}.beta"),
            format!("must be > 0 and <= 10, got {beta}"),
        );
    }
    let label_smoothing = p.label_smoothing.unwrap_or(0.0);
    if p.label_smoothing.is_some() && loss != PreferenceLoss::Dpo {
        c.fail(
            &format!("{f}.label_smoothing"),
            format!("is a dpo knob; {loss} has no label smoothing"),
        );
    } else if c.finite(&format!("{f}.label_smoothing"), label_smoothing)
        && !(0.0..0.5).contains(&label_smoothing)
    {
        c.fail(
            &format!("{f}.label_smoothing"),
            format!("must be >= 0 and < 0.5, got {label_smoothing}"),
        );
    }
    Some(PreferenceParams {
        loss,
        beta,
        label_smoothing,
    })
}

fn hyper_from_proto(c: &mut Check, h: Option<&pb::Hyperparameters>) -> Hyperparameters {
    let h = h.cloned().unwrap_or_default();
    let f = "spec.hyperparameters";
    let auto = h.auto_learning_rate;
    let optimizer = c.named(
        &format!("{f}.optimizer"),
        &h.optimizer,
        Optimizer::parse,
        Optimizer::NAMES,
        if auto {
            Optimizer::Dog
        } else {
            Optimizer::AdamW
        },
    );
    let lr_free = optimizer.is_learning_rate_free();
    if auto && !lr_free {
        c.fail(
            &format!("{f}.optimizer"),
            format!(
                "auto_learning_rate needs an optimizer that chooses its own step size (dog or \
                 dadapt_adam), got {optimizer}"
            ),
        );
    }
    if auto && h.learning_rate.is_some() {
        c.fail(
            &format!("{f}.learning_rate"),
            "is chosen by the optimizer when auto_learning_rate is set; leave it unset",
        );
    }
    // A learning-rate-free optimizer's learning rate multiplies the step it adapts.
    let (default_lr, max_lr) = if lr_free { (1.0, 10.0) } else { (2e-4, 1.0) };
    let learning_rate = if auto {
        1.0
    } else {
        h.learning_rate.unwrap_or(default_lr)
    };
    if c.finite(&format!("{f}.learning_rate"), learning_rate)
        && !(learning_rate > 0.0 && learning_rate <= max_lr)
    {
        c.fail(
            &format!("{f}.learning_rate"),
            format!("must be > 0 and <= {max_lr} with {optimizer}, got {learning_rate}"),
        );
    }
    let weight_decay = h.weight_decay.unwrap_or(0.0);
    if c.finite(&format!("{f}.weight_decay"), weight_decay) && weight_decay < 0.0 {
        c.fail(
            &format!("{f}.weight_decay"),
            format!("must be >= 0, got {weight_decay}"),
        );
    }
    let max_grad_norm = h.max_grad_norm.unwrap_or(1.0);
    if c.finite(&format!("{f}.max_grad_norm"), max_grad_norm) && max_grad_norm <= 0.0 {
        c.fail(
            &format!("{f}.max_grad_norm"),
            format!("must be > 0, got {max_grad_norm}"),
        );
    }
    let schedule = c.named(
        &format!("{f}.schedule"),
        &h.schedule,
        Schedule::parse,
        Schedule::NAMES,
        Schedule::Cosine,
    );
    let schedule_params = schedule_params_from_proto(c, schedule, &h);
    if h.zo_epsilon.is_some() && optimizer != Optimizer::Mezo {
        c.fail(
            &format!("{f}.zo_epsilon"),
            format!("applies to optimizer mezo only; this job's optimizer is {optimizer}"),
        );
    }
    let zo_epsilon = h.zo_epsilon.unwrap_or(DEFAULT_ZO_EPSILON);
    if c.finite(&format!("{f}.zo_epsilon"), zo_epsilon) && !(zo_epsilon > 0.0 && zo_epsilon <= 1.0)
    {
        c.fail(
            &format!("{f}.zo_epsilon"),
            format!("must be > 0 and <= 1, got {zo_epsilon}"),
        );
    }
    if h.gradient_checkpointing && optimizer == Optimizer::Mezo {
        c.fail(
            &format!("{f}.gradient_checkpointing"),
            "mezo takes no backward pass, so there is nothing to checkpoint",
        );
    }
    let prompt_loss_weight = h.prompt_loss_weight.unwrap_or(0.0);
    if c.finite(&format!("{f}.prompt_loss_weight"), prompt_loss_weight)
        && !(0.0..=1.0).contains(&prompt_loss_weight)
    {
        c.fail(
            &format!("{f}.prompt_loss_weight"),
            format!("must be in [0, 1], got {prompt_loss_weight}"),
        );
    }
    Hyperparameters {
        learning_rate,
        epochs: c.range_i32(&format!("{f}.epochs"), h.epochs.unwrap_or(3), 1, 1000),
        max_steps: h
            .max_steps
            .map(|s| c.range_i64(&format!("{f}.max_steps"), s, 1, 100_000_000)),
        batch_size: c.range_i32(
            &format!("{f}.batch_size"),
            h.batch_size.unwrap_or(8),
            1,
            4096,
        ),
        grad_accumulation: c.range_i32(
            &format!("{f}.grad_accumulation"),
            h.grad_accumulation.unwrap_or(1),
            1,
            1024,
        ),
        warmup_steps: c.range_i64(
            &format!("{f}.warmup_steps"),
            h.warmup_steps.unwrap_or(0),
            0,
            100_000_000,
        ),
        schedule,
        weight_decay,
        max_seq_len: c.range_i32(
            &format!("{f}.max_seq_len"),
            h.max_seq_len.unwrap_or(512),
            1,
            131_072,
        ),
        seed: c.range_i64(&format!("{f}.seed"), h.seed.unwrap_or(0), 0, i64::MAX),
        eval_every: c.range_i64(
            &format!("{f}.eval_every"),
            h.eval_every.unwrap_or(0),
            0,
            100_000_000,
        ),
        checkpoint_every: c.range_i64(
            &format!("{f}.checkpoint_every"),
            h.checkpoint_every.unwrap_or(100),
            0,
            100_000_000,
        ),
        max_grad_norm,
        optimizer,
        auto_learning_rate: auto,
        min_lr_ratio: schedule_params.min_lr_ratio,
        decay_fraction: schedule_params.decay_fraction,
        decay_shape: schedule_params.decay_shape,
        prompt_loss_weight,
        zo_epsilon,
        gradient_checkpointing: h.gradient_checkpointing,
    }
}

struct ScheduleParams {
    min_lr_ratio: f64,
    decay_fraction: f64,
    decay_shape: DecayShape,
}

/// The parameters of `schedule`; one that another schedule uses is refused rather than
/// silently ignored.
fn schedule_params_from_proto(
    c: &mut Check,
    schedule: Schedule,
    h: &pb::Hyperparameters,
) -> ScheduleParams {
    let f = "spec.hyperparameters";
    let (min_lr_default, uses_min_lr, uses_decay) = match schedule {
        Schedule::CosineWithMinLr => (DEFAULT_MIN_LR_RATIO, true, false),
        Schedule::Wsd => (0.0, true, true),
        Schedule::Cosine | Schedule::Linear | Schedule::Constant | Schedule::InverseSqrt => {
            (0.0, false, false)
        }
    };
    let unused = |c: &mut Check, name: &str, users: &str| {
        c.fail(
            &format!("{f}.{name}"),
            format!("applies to schedule {users} only; this job's schedule is {schedule}"),
        );
    };
    if h.min_lr_ratio.is_some() && !uses_min_lr {
        unused(c, "min_lr_ratio", "cosine_with_min_lr and wsd");
    }
    if h.decay_fraction.is_some() && !uses_decay {
        unused(c, "decay_fraction", "wsd");
    }
    if !h.decay_shape.is_empty() && !uses_decay {
        unused(c, "decay_shape", "wsd");
    }
    let min_lr_ratio = h.min_lr_ratio.unwrap_or(min_lr_default);
    if c.finite(&format!("{f}.min_lr_ratio"), min_lr_ratio) && !(0.0..1.0).contains(&min_lr_ratio) {
        c.fail(
            &format!("{f}.min_lr_ratio"),
            format!("must be in [0, 1), got {min_lr_ratio}"),
        );
    }
    let decay_fraction = h.decay_fraction.unwrap_or(DEFAULT_DECAY_FRACTION);
    if c.finite(&format!("{f}.decay_fraction"), decay_fraction)
        && !(decay_fraction > 0.0 && decay_fraction <= 1.0)
    {
        c.fail(
            &format!("{f}.decay_fraction"),
            format!("must be > 0 and <= 1, got {decay_fraction}"),
        );
    }
    let decay_shape = c.named(
        &format!("{f}.decay_shape"),
        &h.decay_shape,
        DecayShape::parse,
        DecayShape::NAMES,
        DecayShape::OneMinusSqrt,
    );
    ScheduleParams {
        min_lr_ratio,
        decay_fraction,
        decay_shape,
    }
}

impl From<Stored> for JobSpec {
    fn from(mut s: Stored) -> Self {
        s.migrate();
        JobSpec {
            version: SPEC_VERSION,
            base_model: s.base_model,
            training_file: s.training_file,
            validation_file: s.validation_file,
            task: s.task,
            method: s.method,
            preference: s.preference,
            merge: s.merge,
            replicas: s.replicas,
            export_merged: s.export_merged,
            hyperparameters: s.hyperparameters,
            device: s.device,
            dtype: s.dtype,
            min_memory_bytes: s.min_memory_bytes,
            priority: s.priority,
            max_attempts: s.max_attempts,
            labels: s.labels,
        }
    }
}
