//! A sweep's final merge (`SweepSpec.final_merge`): when the sweep succeeds, a merge job over
//! its best trials (docs/design.md §5.6). Checked at `CreateSweep`; the controller builds the
//! job from the stored spec with the same function, so both read it one way.

use std::collections::BTreeSet;

use tuna_proto::v1 as pb;

use crate::domain::spec::{FieldViolation, JobSpec, MethodKind};

/// Label on the merge job naming its sweep (`tuna jobs list --label final_merge_of=…`).
pub const LABEL: &str = "final_merge_of";

const DEFAULT_TOP_K: i32 = 3;

/// The final merge of `spec` (`None` when it asks for none), or the field that makes it
/// impossible.
pub fn parse(spec: &pb::SweepSpec) -> Result<Option<pb::FinalMerge>, FieldViolation> {
    let Some(fm) = &spec.final_merge else {
        return Ok(None);
    };
    let f = |name: &str| format!("spec.final_merge.{name}");
    let top_k = if fm.top_k == 0 {
        DEFAULT_TOP_K
    } else {
        fm.top_k
    };
    if !(2..=tuna_spec::MAX_MERGE_SOURCES as i32).contains(&top_k) {
        return Err(FieldViolation::new(
            &f("top_k"),
            format!(
                "must be between 2 and {}, got {top_k}",
                tuna_spec::MAX_MERGE_SOURCES
            ),
        ));
    }
    let template = spec.template.clone().unwrap_or_default();
    let method = template.method.as_ref().map_or("", |m| m.r#type.as_str());
    let chosen = spec.parameters.iter().any(|p| {
        p.name == "method.type" || p.name.starts_with("method.") && p.name.ends_with(".type")
    });
    if MethodKind::parse(method) != Some(MethodKind::Lora) || chosen {
        return Err(FieldViolation::new(
            "spec.final_merge",
            "merges LoRA trials: the template's method must be lora and no parameter may \
             choose method.type",
        ));
    }
    let out = pb::FinalMerge {
        top_k,
        method: if fm.method.is_empty() {
            tuna_spec::MergeMethod::ModelStock.as_str().to_string()
        } else {
            fm.method.clone()
        },
        ..fm.clone()
    };
    // The merge spec itself is validated as a job would be, with placeholder sources.
    let sources: Vec<String> = (0..top_k).map(|i| format!("job_{i:032x}")).collect();
    JobSpec::from_proto(Some(&merge_spec(&template, &out, &sources, "swp_check"))).map_err(
        |v| {
            let first = v.into_iter().next();
            let (field, why) = first.map(|v| (v.field, v.description)).unwrap_or_default();
            FieldViolation::new(&field.replace("spec.merge.", "spec.final_merge."), why)
        },
    )?;
    Ok(Some(out))
}

/// The merge job's spec: the template's base model, validation file, batch size and seed, the
/// trials' jobs as sources (best first).
pub fn merge_spec(
    template: &pb::JobSpec,
    fm: &pb::FinalMerge,
    sources: &[String],
    sweep_id: &str,
) -> pb::JobSpec {
    let h = template.hyperparameters.clone().unwrap_or_default();
    pb::JobSpec {
        base_model: template.base_model.clone(),
        validation_file: template.validation_file.clone(),
        task: tuna_spec::Task::Merge.as_str().to_string(),
        merge: Some(pb::Merge {
            sources: sources.to_vec(),
            method: fm.method.clone(),
            weights: Vec::new(),
            rank: fm.rank,
            density: fm.density,
        }),
        export_merged: fm.export_merged,
        hyperparameters: Some(pb::Hyperparameters {
            batch_size: h.batch_size,
            max_seq_len: h.max_seq_len,
            seed: h.seed,
            ..Default::default()
        }),
        resources: template.resources.clone(),
        priority: template.priority,
        labels: [(LABEL.to_string(), sweep_id.to_string())].into(),
        ..Default::default()
    }
}

/// The `k` best succeeded runs' jobs, best first, one run per trial (its best), from
/// `(trial, job, objective)` in a stable order.
pub fn top_k(runs: &[(i64, String, f64)], k: usize, maximize: bool) -> Vec<String> {
    let mut ranked: Vec<&(i64, String, f64)> = runs.iter().filter(|r| r.2.is_finite()).collect();
    ranked.sort_by(|a, b| {
        let order = a.2.total_cmp(&b.2);
        if maximize { order.reverse() } else { order }
    });
    let mut seen = BTreeSet::new();
    ranked
        .into_iter()
        .filter(|r| seen.insert(r.0))
        .take(k)
        .map(|r| r.1.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_run_of_each_trial_is_taken_best_first() {
        let runs = vec![
            (0, "a0".to_string(), 0.5),
            (0, "a1".to_string(), 0.3),
            (1, "b0".to_string(), 0.4),
            (2, "c0".to_string(), f64::NAN),
            (3, "d0".to_string(), 0.9),
        ];
        assert_eq!(top_k(&runs, 2, false), ["a1", "b0"]);
        assert_eq!(top_k(&runs, 5, false), ["a1", "b0", "d0"]);
        assert_eq!(top_k(&runs, 2, true), ["d0", "a0"]);
    }
}
