//! Field violations, collected so one response names every bad field at once.

use std::collections::HashMap;

/// One invalid request field (`google.rpc.BadRequest.FieldViolation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: &str, description: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            description: description.into(),
        }
    }
}

/// Largest `resources.min_memory_bytes` (16 TiB): beyond any machine a worker runs on, so
/// a larger value only makes a job that can never be claimed.
pub const MAX_MIN_MEMORY_BYTES: i64 = 16 << 40;
/// Most entries of a `target_modules` list: a model has a few dozen distinct linear layer
/// names, and every entry is stored with the job and returned by every listing.
pub const MAX_TARGET_MODULES: usize = 64;

/// The violations found so far.
#[derive(Default)]
pub(crate) struct Check(pub(crate) Vec<FieldViolation>);

impl Check {
    pub(crate) fn fail(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    pub(crate) fn range_i64(&mut self, field: &str, v: i64, lo: i64, hi: i64) -> i64 {
        if !(lo..=hi).contains(&v) {
            self.fail(field, format!("must be between {lo} and {hi}, got {v}"));
        }
        v
    }

    pub(crate) fn range_i32(&mut self, field: &str, v: i32, lo: i32, hi: i32) -> i32 {
        self.range_i64(field, i64::from(v), i64::from(lo), i64::from(hi));
        v
    }

    /// `parse(v)`, the default for an empty value, or a violation listing `names`.
    pub(crate) fn named<T: Copy>(
        &mut self,
        field: &str,
        v: &str,
        parse: fn(&str) -> Option<T>,
        names: &[&str],
        default: T,
    ) -> T {
        if v.is_empty() {
            return default;
        }
        match parse(v) {
            Some(t) => t,
            None => {
                let shown: String = v.chars().take(64).collect();
                self.fail(
                    field,
                    format!(
                        "unknown value {shown:?}; expected one of {}",
                        crate::names::list(names)
                    ),
                );
                default
            }
        }
    }

    /// A module list; empty means "the architecture's default" (`None`).
    pub(crate) fn modules(&mut self, field: &str, modules: &[String]) -> Option<Vec<String>> {
        if modules.is_empty() {
            return None;
        }
        // Refused before the per-entry checks, so a huge list costs no per-entry violations.
        if modules.len() > MAX_TARGET_MODULES {
            self.fail(
                field,
                format!(
                    "at most {} entries, got {}",
                    MAX_TARGET_MODULES,
                    modules.len()
                ),
            );
            return None;
        }
        for (i, m) in modules.iter().enumerate() {
            let ok = !m.is_empty()
                && m.len() <= 128
                && m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                let shown: String = m.chars().take(64).collect();
                self.fail(
                    &format!("{field}[{i}]"),
                    format!("{shown:?} is not a module name (at most 128 letters, digits, _ . -)"),
                );
            }
        }
        if modules.len() > 1 && modules.iter().any(|m| m == "all-linear") {
            self.fail(field, "\"all-linear\" must be the only entry");
        }
        Some(modules.to_vec())
    }

    pub(crate) fn finite(&mut self, field: &str, v: f64) -> bool {
        if !v.is_finite() {
            self.fail(field, format!("must be a finite number, got {v}"));
            return false;
        }
        true
    }

    pub(crate) fn id(&mut self, field: &str, v: &str, required: bool) {
        if v.is_empty() {
            if required {
                self.fail(field, "is required");
            }
        } else if v.len() > 256 || v.chars().any(|c| c.is_control()) {
            self.fail(field, "must be at most 256 printable characters");
        }
    }

    pub(crate) fn labels(&mut self, labels: &HashMap<String, String>) {
        if labels.len() > 32 {
            self.fail(
                "spec.labels",
                format!("at most 32 labels, got {}", labels.len()),
            );
        }
        for (k, v) in labels {
            if !is_label_key(k) {
                self.fail(
                    &format!("spec.labels[{k:?}]"),
                    "label keys are 1..=63 characters of [a-z0-9_.-]",
                );
            }
            if v.len() > 256 {
                self.fail(
                    &format!("spec.labels[{k:?}]"),
                    "label values are at most 256 bytes",
                );
            }
        }
    }
}

/// Whether `key` can be a job label's key: 1..=63 characters of `[a-z0-9_.-]`. Label filters
/// use the same rule, so a filter no job could match is refused rather than answered empty.
pub fn is_label_key(key: &str) -> bool {
    (1..=63).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}
