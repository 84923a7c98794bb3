//! Matching `target_modules` against module paths the way PEFT does for a list of names.

use super::{AdapterError, TargetModules};

/// PEFT's rule: a module matches a name if its path equals it or ends with `.name`.
pub fn matches_name(path: &str, name: &str) -> bool {
    path == name || path.ends_with(&format!(".{name}"))
}

/// The subset of `paths` that `targets` selects, in input order. Each listed name must
/// match at least one module, so a typo (`q_prj`) is an error naming it, not a no-op.
pub fn select(
    paths: &[String],
    outputs: &[String],
    targets: &TargetModules,
) -> Result<Vec<String>, AdapterError> {
    match targets {
        TargetModules::Keyword(_) => Ok(paths
            .iter()
            .filter(|p| !outputs.contains(p))
            .cloned()
            .collect()),
        TargetModules::Names(names) => {
            for name in names {
                if !paths.iter().any(|p| matches_name(p, name)) {
                    return Err(AdapterError::UnknownTarget {
                        target: name.clone(),
                        available: short_names(paths),
                    });
                }
            }
            Ok(paths
                .iter()
                .filter(|p| names.iter().any(|n| matches_name(p, n)))
                .cloned()
                .collect())
        }
    }
}

/// Distinct last path components, e.g. `q_proj, k_proj, ..., lm_head`.
fn short_names(paths: &[String]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for p in paths {
        let last = p.rsplit('.').next().unwrap_or(p);
        if !seen.contains(&last) {
            seen.push(last);
        }
    }
    seen.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> Vec<String> {
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.mlp.up_proj",
            "lm_head",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn names_match_suffixes_and_all_linear_skips_heads() {
        let sel = select(
            &paths(),
            &["lm_head".into()],
            &TargetModules::names(["q_proj"]),
        )
        .unwrap();
        assert_eq!(sel, vec!["model.layers.0.self_attn.q_proj"]);
        let all = select(&paths(), &["lm_head".into()], &TargetModules::all_linear()).unwrap();
        assert_eq!(all.len(), 2);
        assert!(!matches_name("model.layers.0.self_attn.xq_proj", "q_proj"));
    }

    #[test]
    fn unknown_target_is_named() {
        let err = select(&paths(), &[], &TargetModules::names(["q_proj", "qq_proj"])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`qq_proj`") && msg.contains("up_proj"),
            "{msg}"
        );
    }
}
