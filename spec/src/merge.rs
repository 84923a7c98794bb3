//! The merge part of a spec (`task = merge`): decoded and validated here, once.
//!
//! Only what the spec itself can check lives here (sizes, names, ranges, duplicates); whether
//! each source exists, finished and fits the others is the server's check at `CreateJob`,
//! which can read the sources.

use std::collections::BTreeSet;

use tuna_proto::v1 as pb;

use crate::check::Check;
use crate::names::{MergeMethod, Task};
use crate::parts::{DEFAULT_TIES_DENSITY, MergeParams};

/// Most sources of one merge: beyond a few the deltas only dilute (Model Stock uses 2–3),
/// and each source's adapter is held in memory while the merge runs.
pub const MAX_MERGE_SOURCES: usize = 16;

/// Largest output rank: the SVD re-factoring is cubic in it.
pub const MAX_MERGE_RANK: i32 = 4096;

const F: &str = "spec.merge";

/// The merge of a merge job (defaults filled in); `None` for other tasks, which must not
/// name one.
pub(crate) fn merge_from_proto(
    c: &mut Check,
    task: Task,
    m: Option<&pb::Merge>,
) -> Option<MergeParams> {
    match task {
        Task::CausalLm | Task::Classification | Task::Preference => {
            if m.is_some() {
                c.fail(F, format!("is for task = merge, not {task}"));
            }
            return None;
        }
        Task::Merge => {}
    }
    let Some(m) = m else {
        c.fail(
            F,
            "is required for task = merge (merge.sources names the jobs)",
        );
        return None;
    };
    let sources = &m.sources;
    if !(2..=MAX_MERGE_SOURCES).contains(&sources.len()) {
        c.fail(
            &format!("{F}.sources"),
            format!(
                "names 2..={MAX_MERGE_SOURCES} finished jobs, got {}",
                sources.len()
            ),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, s) in sources.iter().enumerate().take(MAX_MERGE_SOURCES) {
        c.id(&format!("{F}.sources[{i}]"), s, true);
        if !seen.insert(s.as_str()) {
            c.fail(
                &format!("{F}.sources[{i}]"),
                "is named twice; weight it with task_arithmetic instead",
            );
        }
    }
    let method = c.named(
        &format!("{F}.method"),
        &m.method,
        MergeMethod::parse,
        MergeMethod::NAMES,
        MergeMethod::Average,
    );
    let weights = if method.weighted() {
        if m.weights.is_empty() {
            vec![1.0; sources.len()]
        } else {
            if m.weights.len() != sources.len() {
                c.fail(
                    &format!("{F}.weights"),
                    format!(
                        "has {} weights for {} sources; give one per source or none",
                        m.weights.len(),
                        sources.len()
                    ),
                );
            }
            for (i, w) in m.weights.iter().enumerate().take(MAX_MERGE_SOURCES) {
                let field = format!("{F}.weights[{i}]");
                if c.finite(&field, *w) && !(-10.0..=10.0).contains(w) {
                    c.fail(&field, format!("must be between -10 and 10, got {w}"));
                }
            }
            m.weights.clone()
        }
    } else {
        if !m.weights.is_empty() {
            c.fail(
                &format!("{F}.weights"),
                format!(
                    "{method} weighs its sources itself; weights are for task_arithmetic and ties"
                ),
            );
        }
        Vec::new()
    };
    let rank = match m.rank {
        0 => None,
        r => Some(c.range_i32(&format!("{F}.rank"), r, 0, MAX_MERGE_RANK)),
    };
    let density = match (method, m.density) {
        (MergeMethod::Ties, d) => {
            let d = d.unwrap_or(DEFAULT_TIES_DENSITY);
            let field = format!("{F}.density");
            if c.finite(&field, d) && !(d > 0.0 && d <= 1.0) {
                c.fail(&field, format!("must be > 0 and <= 1, got {d}"));
            }
            Some(d)
        }
        (_, Some(_)) => {
            c.fail(
                &format!("{F}.density"),
                format!("is a ties knob; {method} keeps every entry"),
            );
            None
        }
        (_, None) => None,
    };
    Some(MergeParams {
        sources: sources.clone(),
        method,
        weights,
        rank,
        density,
    })
}

/// The wire form of a stored merge.
pub(crate) fn merge_to_proto(m: &MergeParams) -> pb::Merge {
    pb::Merge {
        sources: m.sources.clone(),
        method: m.method.as_str().to_string(),
        weights: m.weights.clone(),
        rank: m.rank.unwrap_or(0),
        density: m.density,
    }
}
