//! The validated job spec: every default filled in, every bound checked.
//!
//! The proto `JobSpec` is what clients send; [`JobSpec`] is what the store keeps (as JSON) and
//! what workers receive back. Converting one into the other is the validation, so an invalid spec
//! can never be stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tuna_proto::v1 as pb;

use crate::error::FieldViolation;

/// PEFT methods the engine knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodType {
    Lora,
    Dora,
    Ia3,
    PromptTuning,
    Bitfit,
    Full,
}

impl MethodType {
    const NAMES: &'static str = "lora, dora, ia3, prompt_tuning, bitfit, full";

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "lora" => Self::Lora,
            "dora" => Self::Dora,
            "ia3" => Self::Ia3,
            "prompt_tuning" => Self::PromptTuning,
            "bitfit" => Self::Bitfit,
            "full" => Self::Full,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Lora => "lora",
            Self::Dora => "dora",
            Self::Ia3 => "ia3",
            Self::PromptTuning => "prompt_tuning",
            Self::Bitfit => "bitfit",
            Self::Full => "full",
        }
    }
}

/// LoRA / DoRA parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraParams {
    pub r: i32,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
    pub init: String,
    pub lr_ratio_b: f64,
}

/// The method and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Method {
    #[serde(rename = "type")]
    pub kind: MethodType,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lora: Option<LoraParams>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub num_virtual_tokens: Option<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub ia3_target_modules: Vec<String>,
}

/// Training hyperparameters with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub learning_rate: f64,
    pub epochs: i32,
    pub max_steps: Option<i64>,
    pub batch_size: i32,
    pub grad_accumulation: i32,
    pub warmup_steps: i64,
    pub schedule: String,
    pub weight_decay: f64,
    pub max_seq_len: i32,
    pub seed: i64,
    pub eval_every: i64,
    pub checkpoint_every: i64,
    pub max_grad_norm: f64,
}

/// The validated spec of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub base_model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub task: String,
    pub method: Method,
    pub hyperparameters: Hyperparameters,
    pub device: String,
    pub min_memory_bytes: i64,
    pub priority: i32,
    pub max_attempts: i32,
    pub labels: BTreeMap<String, String>,
}

/// Default number of attempts before a job fails for good.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
const DEVICES: &[&str] = &["any", "cpu", "cuda"];
const SCHEDULES: &[&str] = &["cosine", "linear", "constant"];
const TASKS: &[&str] = &["causal_lm", "classification"];
const LORA_INITS: &[&str] = &["gaussian", "pissa", "lora_ga"];

/// Collects field violations so one response can name every bad field.
#[derive(Default)]
struct Check(Vec<FieldViolation>);

impl Check {
    fn fail(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    fn range_i64(&mut self, field: &str, v: i64, lo: i64, hi: i64) -> i64 {
        if !(lo..=hi).contains(&v) {
            self.fail(field, format!("must be between {lo} and {hi}, got {v}"));
        }
        v
    }

    fn range_i32(&mut self, field: &str, v: i32, lo: i32, hi: i32) -> i32 {
        self.range_i64(field, i64::from(v), i64::from(lo), i64::from(hi));
        v
    }

    fn one_of(&mut self, field: &str, v: &str, allowed: &[&str], default: &str) -> String {
        if v.is_empty() {
            return default.to_string();
        }
        if !allowed.contains(&v) {
            self.fail(
                field,
                format!(
                    "unknown value {v:?}; expected one of {}",
                    allowed.join(", ")
                ),
            );
        }
        v.to_string()
    }

    fn modules(&mut self, field: &str, modules: &[String], default: &[&str]) -> Vec<String> {
        if modules.is_empty() {
            return default.iter().map(|s| s.to_string()).collect();
        }
        for (i, m) in modules.iter().enumerate() {
            let ok = !m.is_empty()
                && m.len() <= 128
                && m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                self.fail(
                    &format!("{field}[{i}]"),
                    format!("{m:?} is not a module name (letters, digits, _ . -)"),
                );
            }
        }
        if modules.len() > 1 && modules.iter().any(|m| m == "all-linear") {
            self.fail(field, "\"all-linear\" must be the only entry");
        }
        modules.to_vec()
    }

    fn finite(&mut self, field: &str, v: f64) -> bool {
        if !v.is_finite() {
            self.fail(field, format!("must be a finite number, got {v}"));
            return false;
        }
        true
    }
}

fn check_id(check: &mut Check, field: &str, v: &str, required: bool) {
    if v.is_empty() {
        if required {
            check.fail(field, "is required");
        }
    } else if v.len() > 256 || v.chars().any(|c| c.is_control()) {
        check.fail(field, "must be at most 256 printable characters");
    }
}

fn check_labels(check: &mut Check, labels: &std::collections::HashMap<String, String>) {
    if labels.len() > 32 {
        check.fail(
            "spec.labels",
            format!("at most 32 labels, got {}", labels.len()),
        );
    }
    for (k, v) in labels {
        let key_ok = (1..=63).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if !key_ok {
            check.fail(
                &format!("spec.labels[{k:?}]"),
                "label keys are 1..=63 characters of [a-z0-9_.-]",
            );
        }
        if v.len() > 256 {
            check.fail(
                &format!("spec.labels[{k:?}]"),
                "label values are at most 256 bytes",
            );
        }
    }
}

impl JobSpec {
    /// Validates a client spec and fills in defaults. Every violation is reported at once.
    pub fn from_proto(spec: Option<&pb::JobSpec>) -> Result<Self, Vec<FieldViolation>> {
        let mut c = Check::default();
        let Some(spec) = spec else {
            c.fail("spec", "is required");
            return Err(c.0);
        };
        check_id(&mut c, "spec.base_model", spec.base_model.trim(), true);
        check_id(&mut c, "spec.training_file", &spec.training_file, true);
        check_id(&mut c, "spec.validation_file", &spec.validation_file, false);
        check_labels(&mut c, &spec.labels);
        let task = c.one_of("spec.task", &spec.task, TASKS, "causal_lm");
        let method = method_from_proto(&mut c, spec.method.as_ref());
        let hyperparameters = hyper_from_proto(&mut c, spec.hyperparameters.as_ref());
        let res = spec.resources.clone().unwrap_or_default();
        let device = c.one_of("spec.resources.device", &res.device, DEVICES, "any");
        let min_memory_bytes = c.range_i64(
            "spec.resources.min_memory_bytes",
            res.min_memory_bytes,
            0,
            i64::MAX,
        );
        let priority = c.range_i32("spec.priority", spec.priority, -1000, 1000);
        let max_attempts = if spec.max_attempts == 0 {
            DEFAULT_MAX_ATTEMPTS
        } else {
            c.range_i32("spec.max_attempts", spec.max_attempts, 1, 100)
        };
        if !c.0.is_empty() {
            return Err(c.0);
        }
        Ok(JobSpec {
            base_model: spec.base_model.trim().to_string(),
            training_file: spec.training_file.clone(),
            validation_file: (!spec.validation_file.is_empty())
                .then(|| spec.validation_file.clone()),
            task,
            method: method.ok_or_else(Vec::new)?,
            hyperparameters,
            device,
            min_memory_bytes,
            priority,
            max_attempts,
            labels: spec
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// The spec as sent to clients and workers, with every default made explicit.
    pub fn to_proto(&self) -> pb::JobSpec {
        let h = &self.hyperparameters;
        let m = &self.method;
        pb::JobSpec {
            base_model: self.base_model.clone(),
            training_file: self.training_file.clone(),
            validation_file: self.validation_file.clone().unwrap_or_default(),
            method: Some(pb::Method {
                r#type: m.kind.as_str().to_string(),
                lora: m.lora.as_ref().map(|l| pb::LoraParams {
                    r: Some(l.r),
                    alpha: Some(l.alpha),
                    dropout: Some(l.dropout),
                    target_modules: l.target_modules.clone(),
                    use_rslora: l.use_rslora,
                    init: l.init.clone(),
                    lr_ratio_b: Some(l.lr_ratio_b),
                }),
                prompt_tuning: m.num_virtual_tokens.map(|n| pb::PromptTuningParams {
                    num_virtual_tokens: Some(n),
                }),
                ia3: (m.kind == MethodType::Ia3).then(|| pb::Ia3Params {
                    target_modules: m.ia3_target_modules.clone(),
                }),
            }),
            hyperparameters: Some(pb::Hyperparameters {
                learning_rate: Some(h.learning_rate),
                epochs: Some(h.epochs),
                max_steps: h.max_steps,
                batch_size: Some(h.batch_size),
                grad_accumulation: Some(h.grad_accumulation),
                warmup_steps: Some(h.warmup_steps),
                schedule: h.schedule.clone(),
                weight_decay: Some(h.weight_decay),
                max_seq_len: Some(h.max_seq_len),
                seed: Some(h.seed),
                eval_every: Some(h.eval_every),
                checkpoint_every: Some(h.checkpoint_every),
                max_grad_norm: Some(h.max_grad_norm),
            }),
            resources: Some(pb::Resources {
                device: self.device.clone(),
                min_memory_bytes: self.min_memory_bytes,
            }),
            priority: self.priority,
            max_attempts: self.max_attempts,
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            task: self.task.clone(),
        }
    }
}

fn method_from_proto(c: &mut Check, method: Option<&pb::Method>) -> Option<Method> {
    let Some(method) = method else {
        c.fail(
            "spec.method",
            format!("is required; method.type is one of {}", MethodType::NAMES),
        );
        return None;
    };
    let Some(kind) = MethodType::parse(&method.r#type) else {
        c.fail(
            "spec.method.type",
            format!(
                "unknown method {:?}; expected one of {}",
                method.r#type,
                MethodType::NAMES
            ),
        );
        return None;
    };
    let lora = matches!(kind, MethodType::Lora | MethodType::Dora)
        .then(|| lora_from_proto(c, method.lora.clone().unwrap_or_default()));
    let num_virtual_tokens = (kind == MethodType::PromptTuning).then(|| {
        let n = method
            .prompt_tuning
            .and_then(|p| p.num_virtual_tokens)
            .unwrap_or(20);
        c.range_i32("spec.method.prompt_tuning.num_virtual_tokens", n, 1, 512)
    });
    let ia3_target_modules = if kind == MethodType::Ia3 {
        let modules = method
            .ia3
            .as_ref()
            .map(|p| p.target_modules.clone())
            .unwrap_or_default();
        c.modules(
            "spec.method.ia3.target_modules",
            &modules,
            &["k_proj", "v_proj", "down_proj"],
        )
    } else {
        Vec::new()
    };
    Some(Method {
        kind,
        lora,
        num_virtual_tokens,
        ia3_target_modules,
    })
}

fn lora_from_proto(c: &mut Check, p: pb::LoraParams) -> LoraParams {
    let r = c.range_i32("spec.method.lora.r", p.r.unwrap_or(8), 1, 1024);
    // The default follows r; an invalid r must not make the default alpha look invalid too.
    let alpha = p.alpha.unwrap_or(2.0 * f64::from(r.max(1)));
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
        target_modules: c.modules(
            "spec.method.lora.target_modules",
            &p.target_modules,
            &["q_proj", "v_proj"],
        ),
        use_rslora: p.use_rslora,
        init: c.one_of("spec.method.lora.init", &p.init, LORA_INITS, "gaussian"),
        lr_ratio_b,
    }
}

fn hyper_from_proto(c: &mut Check, h: Option<&pb::Hyperparameters>) -> Hyperparameters {
    let h = h.cloned().unwrap_or_default();
    let f = "spec.hyperparameters";
    let learning_rate = h.learning_rate.unwrap_or(2e-4);
    if c.finite(&format!("{f}.learning_rate"), learning_rate)
        && !(learning_rate > 0.0 && learning_rate <= 1.0)
    {
        c.fail(
            &format!("{f}.learning_rate"),
            format!("must be > 0 and <= 1, got {learning_rate}"),
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
        schedule: c.one_of(&format!("{f}.schedule"), &h.schedule, SCHEDULES, "cosine"),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> pb::JobSpec {
        pb::JobSpec {
            base_model: "tiny".into(),
            training_file: "file_1".into(),
            method: Some(pb::Method {
                r#type: "lora".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn fields(err: Vec<FieldViolation>) -> Vec<String> {
        err.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn defaults_are_filled_in_and_survive_a_proto_round_trip() {
        let spec = JobSpec::from_proto(Some(&minimal())).unwrap();
        assert_eq!(spec.max_attempts, DEFAULT_MAX_ATTEMPTS);
        let lora = spec.method.lora.clone().unwrap();
        assert_eq!((lora.r, lora.alpha), (8, 16.0));
        let again = JobSpec::from_proto(Some(&spec.to_proto())).unwrap();
        assert_eq!(spec, again);
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut p = minimal();
        p.base_model = " ".into();
        p.hyperparameters = Some(pb::Hyperparameters {
            learning_rate: Some(-1.0),
            ..Default::default()
        });
        p.method.as_mut().unwrap().lora = Some(pb::LoraParams {
            r: Some(0),
            ..Default::default()
        });
        let f = fields(JobSpec::from_proto(Some(&p)).unwrap_err());
        assert!(f.contains(&"spec.base_model".to_string()), "{f:?}");
        assert!(
            f.contains(&"spec.hyperparameters.learning_rate".to_string()),
            "{f:?}"
        );
        assert!(f.contains(&"spec.method.lora.r".to_string()), "{f:?}");
    }

    #[test]
    fn unknown_method_is_rejected_by_name() {
        let mut p = minimal();
        p.method.as_mut().unwrap().r#type = "qlora9".into();
        let err = JobSpec::from_proto(Some(&p)).unwrap_err();
        assert_eq!(err[0].field, "spec.method.type");
        assert!(err[0].description.contains("qlora9"));
    }
}
