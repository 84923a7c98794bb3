//! The Prometheus endpoint of a real `tuna server` process, scraped with curl: the queue-depth
//! series count what the store holds, per state and device, and calls are counted by method
//! and code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use tuna_e2e::{ServerProcess, free_port};

fn scrape(addr: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of the series whose line starts with `series ` (exact labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_queued_jobs_by_state_and_device_and_calls_by_method() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    // No worker: jobs stay queued.
    let server = ServerProcess::start(dir.path(), &["--metrics-listen", &metrics]);
    let text = scrape(&metrics);
    assert_eq!(
        value(&text, r#"tuna_jobs{state="queued",device="any"}"#),
        Some(0.0),
        "{text}"
    );
    let model = dir.path().join("tiny");
    assert!(
        server
            .cli(&["models", "make-tiny", "--out", model.to_str().unwrap()])
            .status
            .success()
    );
    assert!(
        server
            .cli(&[
                "models",
                "register",
                "tiny",
                "--path",
                model.to_str().unwrap()
            ])
            .status
            .success()
    );
    let data = dir.path().join("train.jsonl");
    std::fs::write(&data, "{\"text\": \"one two three\"}\n".repeat(8)).unwrap();
    let file = server.json(&["files", "upload", data.to_str().unwrap()]);
    let file_id = file["id"].as_str().unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = server.json(&[
            "jobs",
            "create",
            "--model",
            "tiny",
            "--training-file",
            file_id,
            "--method",
            "lora",
            "--max-steps",
            "5",
        ]);
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    assert!(server.cli(&["jobs", "cancel", &ids[0]]).status.success());

    let text = scrape(&metrics);
    assert_eq!(
        value(&text, r#"tuna_jobs{state="queued",device="any"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"tuna_jobs{state="cancelled",device="any"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"tuna_jobs{state="running",device="any"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            r#"tuna_rpc_server_calls_total{method="/tuna.v1.JobService/CreateJob",code="Ok"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert!(text.contains("# TYPE tuna_claim_duration_seconds histogram"));
    assert!(text.contains("# TYPE tuna_job_retries counter"));
    assert!(text.contains("# TYPE tuna_leases_lost counter"));
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    assert!(server.terminate());
}
