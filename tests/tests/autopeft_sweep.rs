//! The AutoPEFT-style example sweep (`examples/autopeft-sweep.toml`) runs end to end: a bandit
//! with CARBS per context searches the method (LoRA, DoRA, IA3, prefix tuning), the
//! conditional LoRA rank and target modules and prefix length, the optimizer and the learning
//! rate; every trial trains, the conditional parameters appear only on their methods' trials,
//! and the best trial is the lowest eval loss.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use tuna_e2e::{ServerProcess, setup};

#[test]
fn the_autopeft_example_searches_methods_and_their_structure() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--embedded-worker"]);
    let s = setup(&server, dir.path());
    let example = format!(
        "{}/../examples/autopeft-sweep.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let created = server.json(&[
        "sweeps",
        "create",
        &example,
        "--model",
        &s.model,
        "--training-file",
        &s.train,
        "--validation-file",
        &s.valid,
    ]);
    let id = created["id"].as_str().unwrap().to_string();
    let out = server.cli(&["sweeps", "watch", &id, "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "watch: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    let sweep = server.json(&["sweeps", "get", &id]);
    assert_eq!(sweep["state"], "succeeded", "{sweep}");
    let trials = server.json(&["sweeps", "trials", &id])["trials"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(trials.len(), 10, "{trials:?}");
    let mut methods = BTreeSet::new();
    for t in &trials {
        assert_eq!(t["job_state"], "succeeded", "{t}");
        let p = &t["params"];
        let method = p["method.type"].as_str().unwrap().to_string();
        let lora_family = method == "lora" || method == "dora";
        assert_eq!(
            p.get("method.lora.r").is_some(),
            lora_family,
            "the rank is searched for LoRA and DoRA only: {t}"
        );
        assert_eq!(
            p.get("method.lora.target_modules").is_some(),
            lora_family,
            "{t}"
        );
        assert_eq!(
            p.get("method.prefix_tuning.num_virtual_tokens").is_some(),
            method == "prefix_tuning",
            "{t}"
        );
        let optimizer = p["hyperparameters.optimizer"].as_str().unwrap();
        assert!(["adamw", "adafactor"].contains(&optimizer), "{t}");
        methods.insert(method);
    }
    println!("methods tried: {methods:?}");
    assert!(methods.len() >= 2, "one method only: {trials:?}");
    let min = trials
        .iter()
        .filter_map(|t| t["objective"].as_f64())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(
        sweep["best_trial"]["objective"].as_f64().unwrap(),
        min,
        "{sweep}"
    );
}
