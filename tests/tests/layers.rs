//! The architecture's rules, checked on the source tree: what each crate may link, modules
//! without import cycles, files small enough to read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Package names in `cargo tree -p package` (normal, build and dev edges).
fn tree(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo())
        .args([
            "tree",
            "--locked",
            "--offline",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn assert_links_none(package: &str, forbidden: &[&str]) {
    let deps = tree(package);
    assert!(
        deps.contains(package),
        "{package} is in its own tree: {deps:?}"
    );
    for f in forbidden {
        assert!(
            !deps
                .iter()
                .any(|d| d == f || d.starts_with(&format!("{f}-"))),
            "{package} must not depend on {f} (directly or not)"
        );
    }
}

#[test]
fn the_sdk_links_no_database_tensor_library_or_tokenizer() {
    assert_links_none(
        "tuna-client",
        &[
            "sqlx",
            "candle-core",
            "tokenizers",
            "tuna-server",
            "tuna-worker",
        ],
    );
}

#[test]
fn the_spec_is_a_leaf() {
    assert_links_none(
        "tuna-spec",
        &[
            "sqlx",
            "candle-core",
            "tokenizers",
            "tuna-server",
            "tuna-worker",
            "tonic-health",
        ],
    );
}

#[test]
fn the_worker_links_no_database() {
    assert_links_none("tuna-worker", &["sqlx", "tuna-server"]);
}

/// `a::b::c` of a source file relative to its crate's `src/`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Path segments after `prefix` (`crate::a::b` → `[a, b]`).
fn paths_after<'t>(text: &'t str, prefix: &str) -> Vec<Vec<&'t str>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before_ok = i == 0
            || !rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let tail = &rest[i + prefix.len()..];
        if before_ok {
            let mut segs: Vec<&str> = Vec::new();
            for seg in tail.split("::") {
                let end = seg
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(seg.len());
                if end > 0 {
                    segs.push(&seg[..end]);
                }
                if end < seg.len() || end == 0 {
                    break;
                }
            }
            if !segs.is_empty() {
                out.push(segs);
            }
        }
        rest = tail;
    }
    out
}

/// Edges between sibling modules: a use of `crate::x::y` from `a::b` counts as `a → x` when
/// the paths part at the top, `a::b → a::y`-style below a common parent. Test modules and
/// comments are left out.
fn sibling_edges(crate_dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let src = crate_dir.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let from = module_of(&src, &f);
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let code: String = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut targets: Vec<Vec<String>> = paths_after(&code, "crate::")
            .into_iter()
            .map(|p| p.into_iter().map(str::to_string).collect())
            .collect();
        for p in paths_after(&code, "super::") {
            if p[0] == "super" {
                continue;
            }
            let mut t: Vec<String> = from[..from.len().saturating_sub(1)].to_vec();
            t.push(p[0].to_string());
            targets.push(t);
        }
        for to in targets {
            let k = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if k < from.len() && k < to.len() {
                edges
                    .entry(from[..=k].join("::"))
                    .or_default()
                    .insert(to[..=k].join("::"));
            }
        }
    }
    edges
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n.as_str())
            && let Some(c) = visit(n, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let root = repo();
    for krate in [
        "spec", "client", "cli", "server", "worker", "bench", "tests",
    ] {
        let edges = sibling_edges(&root.join(krate));
        assert!(!edges.is_empty() || krate == "tests" || krate == "spec" || krate == "client");
        if let Some(cycle) = find_cycle(&edges) {
            panic!("{krate}: modules import each other: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let edges = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let paths = paths_after("use crate::engine::model::ops; x_crate::y", "crate::");
    assert_eq!(paths, vec![vec!["engine", "model", "ops"]]);
}

#[test]
fn no_hand_written_file_of_the_server_or_worker_passes_800_lines() {
    let root = repo();
    let mut files = Vec::new();
    rust_files(&root.join("server/src"), &mut files);
    rust_files(&root.join("worker/src"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > 800).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by concern: {long:?}");
}
