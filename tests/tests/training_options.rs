//! The second-wave training options through the real CLI and server: a job with D-Adapt Adam
//! chosen by `--auto-learning-rate`, a WSD schedule and a prompt-loss weight trains to the end
//! on the embedded worker, its spec reads back with every default explicit, and each step
//! reports the step size the optimizer chose; a learning rate next to `--auto-learning-rate`
//! is refused naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tuna_e2e::{ServerProcess, setup};

#[test]
fn a_learning_rate_free_wsd_job_with_prompt_loss_trains_and_reports_its_step_size() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--embedded-worker"]);
    let s = setup(&server, dir.path());

    let refused = server.cli(&s.create_args(&["--auto-learning-rate", "--learning-rate", "0.1"]));
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("spec.hyperparameters.learning_rate") && err.contains("auto_learning_rate"),
        "{err}"
    );

    let id = s.create_job(
        &server,
        &[
            "--auto-learning-rate",
            "--optimizer",
            "dadapt_adam",
            "--schedule",
            "wsd",
            "--warmup-steps",
            "2",
            "--prompt-loss-weight",
            "0.5",
            "--max-steps",
            "12",
            "--r",
            "4",
        ],
    );
    let out = server.cli(&["jobs", "watch", &id, "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    let job = server.json(&["jobs", "get", &id]);
    assert_eq!(job["state"], "succeeded", "{job}");
    let h = &job["spec"]["hyperparameters"];
    assert_eq!(h["optimizer"], "dadapt_adam", "{h}");
    assert_eq!(h["auto_learning_rate"], true, "{h}");
    assert_eq!(h["schedule"], "wsd", "{h}");
    assert_eq!(h["decay_shape"], "1-sqrt", "{h}");
    assert_eq!(h["decay_fraction"], 0.2, "{h}");
    assert_eq!(h["prompt_loss_weight"], 0.5, "{h}");
    assert!(h.get("learning_rate").is_none_or(|v| v.is_null()), "{h}");

    // The reported lr is D-Adapt's d·lr: it starts at d₀ = 1e-6 times the warmup factor and
    // grows as d adapts, unlike any fixed schedule.
    let lrs: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|u| u["type"] == "metrics")
        .filter_map(|u| u["values"]["lr"].as_f64())
        .collect();
    assert_eq!(lrs.len(), 12, "{lrs:?}");
    assert_eq!(lrs[0], 0.0, "warmup starts at 0: {lrs:?}");
    assert!((lrs[1] - 0.5e-6).abs() < 1e-12, "{lrs:?}");
    let top = lrs.iter().copied().fold(0.0, f64::max);
    assert!(top > 2.0 * lrs[1], "d grows: {lrs:?}");
}

/// A worker never advertises a device its engine does not train on: `--device cuda` is
/// refused at start-up with the reason (this build has no CUDA, or the engine runs on the CPU
/// only), and an unknown device is refused naming the accepted ones.
#[test]
fn a_worker_refuses_a_device_it_cannot_train_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    for (device, expect) in [
        ("cuda", "cuda:0"),
        ("cuda:1", "cuda:1"),
        ("tpu", "expected cpu, cuda or cuda:N"),
    ] {
        let cache = dir.path().join(format!("cache-{device}"));
        let out = server.cli(&[
            "worker",
            "--device",
            device,
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{device}: the worker started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{device}: {err}");
        assert!(
            err.contains("--device cpu") || device == "tpu",
            "{device}: {err}"
        );
    }
}
