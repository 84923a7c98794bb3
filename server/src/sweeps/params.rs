//! Where a searched parameter lands in a trial's JobSpec: the parameter names a sweep may
//! search, what kind of value each takes, and how a value is patched into the template.

use tuna_proto::v1 as pb;

use crate::domain::spec::{LoraInit, MethodKind, Optimizer, Schedule};
use crate::search::Value;

/// The kind of value a searchable JobSpec field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Real,
    Integer,
    /// A fixed set of strings (`None`: any well-formed value, e.g. module lists).
    Choice(Option<&'static [&'static str]>),
}

/// Every searchable field, in the order the docs list them.
pub const SEARCHABLE: &[(&str, Kind)] = &[
    ("hyperparameters.learning_rate", Kind::Real),
    ("hyperparameters.weight_decay", Kind::Real),
    ("hyperparameters.max_grad_norm", Kind::Real),
    ("hyperparameters.warmup_steps", Kind::Integer),
    ("hyperparameters.batch_size", Kind::Integer),
    ("hyperparameters.grad_accumulation", Kind::Integer),
    ("hyperparameters.epochs", Kind::Integer),
    ("hyperparameters.max_seq_len", Kind::Integer),
    (
        "hyperparameters.schedule",
        Kind::Choice(Some(Schedule::NAMES)),
    ),
    (
        "hyperparameters.optimizer",
        Kind::Choice(Some(Optimizer::NAMES)),
    ),
    ("hyperparameters.prompt_loss_weight", Kind::Real),
    ("method.type", Kind::Choice(Some(MethodKind::NAMES))),
    ("method.lora.r", Kind::Integer),
    ("method.lora.alpha", Kind::Real),
    ("method.lora.dropout", Kind::Real),
    ("method.lora.lr_ratio_b", Kind::Real),
    ("method.lora.init", Kind::Choice(Some(LoraInit::NAMES))),
    (
        "method.lora.use_rslora",
        Kind::Choice(Some(&["true", "false"])),
    ),
    ("method.lora.target_modules", Kind::Choice(None)),
    ("method.prompt_tuning.num_virtual_tokens", Kind::Integer),
    ("method.prefix_tuning.num_virtual_tokens", Kind::Integer),
];

/// The kind of `name`, or `None` when it cannot be searched.
pub fn kind_of(name: &str) -> Option<Kind> {
    SEARCHABLE.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// Comma-separated list of the searchable names, for error messages.
pub fn names() -> String {
    SEARCHABLE
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes `value` into `spec` at `name`. Range checks are left to the JobSpec validation the
/// patched spec goes through, so a sweep can never create a job CreateJob would refuse.
pub fn apply(spec: &mut pb::JobSpec, name: &str, value: &Value) -> Result<(), String> {
    let kind = kind_of(name).ok_or_else(|| format!("{name:?} is not a searchable field"))?;
    let real = || {
        value
            .as_f64()
            .ok_or_else(|| format!("{name} takes a number, got {value:?}"))
    };
    let int = || real().map(|v| v.round() as i64);
    let int32 =
        || int().and_then(|v| i32::try_from(v).map_err(|_| format!("{name}: {v} is out of range")));
    let choice = || -> Result<String, String> {
        let c = value
            .as_choice()
            .ok_or_else(|| format!("{name} takes one of its choices, got {value:?}"))?;
        if let Kind::Choice(Some(allowed)) = kind
            && !allowed.contains(&c)
        {
            return Err(format!(
                "{name}: unknown choice {c:?}; expected one of {}",
                allowed.join(", ")
            ));
        }
        Ok(c.to_string())
    };
    match name {
        "hyperparameters.learning_rate" => hyper(spec).learning_rate = Some(real()?),
        "hyperparameters.weight_decay" => hyper(spec).weight_decay = Some(real()?),
        "hyperparameters.max_grad_norm" => hyper(spec).max_grad_norm = Some(real()?),
        "hyperparameters.warmup_steps" => hyper(spec).warmup_steps = Some(int()?),
        "hyperparameters.batch_size" => hyper(spec).batch_size = Some(int32()?),
        "hyperparameters.grad_accumulation" => hyper(spec).grad_accumulation = Some(int32()?),
        "hyperparameters.epochs" => hyper(spec).epochs = Some(int32()?),
        "hyperparameters.max_seq_len" => hyper(spec).max_seq_len = Some(int32()?),
        "hyperparameters.schedule" => hyper(spec).schedule = choice()?,
        "hyperparameters.optimizer" => hyper(spec).optimizer = choice()?,
        "hyperparameters.prompt_loss_weight" => hyper(spec).prompt_loss_weight = Some(real()?),
        "method.type" => method(spec).r#type = choice()?,
        "method.lora.r" => lora(spec).r = Some(int32()?),
        "method.lora.alpha" => lora(spec).alpha = Some(real()?),
        "method.lora.dropout" => lora(spec).dropout = Some(real()?),
        "method.lora.lr_ratio_b" => lora(spec).lr_ratio_b = Some(real()?),
        "method.lora.init" => lora(spec).init = choice()?,
        "method.lora.use_rslora" => lora(spec).use_rslora = choice()? == "true",
        "method.lora.target_modules" => {
            lora(spec).target_modules = choice()?
                .split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect();
        }
        "method.prompt_tuning.num_virtual_tokens" => {
            let n = int32()?;
            method(spec)
                .prompt_tuning
                .get_or_insert_with(Default::default)
                .num_virtual_tokens = Some(n);
        }
        "method.prefix_tuning.num_virtual_tokens" => {
            let n = int32()?;
            method(spec)
                .prefix_tuning
                .get_or_insert_with(Default::default)
                .num_virtual_tokens = Some(n);
        }
        _ => return Err(format!("{name:?} is not a searchable field")),
    }
    Ok(())
}

fn hyper(spec: &mut pb::JobSpec) -> &mut pb::Hyperparameters {
    spec.hyperparameters.get_or_insert_with(Default::default)
}

fn method(spec: &mut pb::JobSpec) -> &mut pb::Method {
    let m = spec.method.get_or_insert_with(Default::default);
    if m.r#type.is_empty() {
        // The JobSpec default, made explicit so a patched sub-message is not orphaned.
        m.r#type = "lora".to_string();
    }
    m
}

fn lora(spec: &mut pb::JobSpec) -> &mut pb::LoraParams {
    method(spec).lora.get_or_insert_with(Default::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_searchable_field_can_be_patched_with_a_value_of_its_kind() {
        for (name, kind) in SEARCHABLE {
            let v = match kind {
                Kind::Real => Value::Real(0.5),
                Kind::Integer => Value::Real(4.0),
                Kind::Choice(Some(c)) => Value::Choice(c[0].to_string()),
                Kind::Choice(None) => Value::Choice("q_proj,v_proj".into()),
            };
            let mut spec = pb::JobSpec::default();
            apply(&mut spec, name, &v).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_ne!(spec, pb::JobSpec::default(), "{name} changed nothing");
        }
    }

    #[test]
    fn integers_round_and_choices_are_checked() {
        let mut spec = pb::JobSpec::default();
        apply(&mut spec, "method.lora.r", &Value::Real(7.6)).unwrap();
        assert_eq!(spec.method.unwrap().lora.unwrap().r, Some(8));
        let mut spec = pb::JobSpec::default();
        let e = apply(
            &mut spec,
            "hyperparameters.schedule",
            &Value::Choice("wavy".into()),
        )
        .unwrap_err();
        assert!(e.contains("unknown choice"), "{e}");
        assert!(apply(&mut spec, "hyperparameters.nope", &Value::Real(1.0)).is_err());
    }
}
