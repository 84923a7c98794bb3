//! End to end with real processes: a `tuna server` on PostgreSQL and `tuna worker`
//! processes train a LoRA adapter on a generated tiny model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tuna_e2e::{ServerProcess, Setup, TestDb, Worker, dataset, setup, tuna_bin, worker};

fn create(server: &ServerProcess, s: &Setup, steps: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--validation-file",
        &s.valid,
        "--r",
        "8",
        "--learning-rate",
        "0.01",
        "--max-steps",
        steps,
        "--batch-size",
        "8",
        "--eval-every",
        "10",
        "--seed",
        "42",
    ];
    args.extend_from_slice(extra);
    s.create_job(server, &args)
}

/// The first training step an attempt reported (where it started or resumed).
fn first_training_step(updates: &[serde_json::Value], attempt: i64) -> i64 {
    updates
        .iter()
        .filter(|u| {
            u["type"] == "metrics" && u["attempt"] == attempt && u["values"]["loss"].is_number()
        })
        .filter_map(|u| u["step"].as_i64())
        .min()
        .expect("the attempt reported training steps")
}

/// Watches with `--output json` and returns the updates (one JSON object per line).
fn history(server: &ServerProcess, id: &str) -> (Option<i32>, Vec<serde_json::Value>) {
    let out = server.cli(&["jobs", "watch", id, "--output", "json"]);
    let updates = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.code(), updates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_job_runs_on_a_worker_process_and_its_adapter_and_merged_model_download_intact() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--database-url", &db.url]);
    let s = setup(&server, dir.path());
    let w = worker(&server, dir.path(), "w1");
    let id = create(&server, &s, "30", &["--export-merged"]);
    let (code, updates) = history(&server, &id);
    assert_eq!(code, Some(0), "job did not succeed: {updates:?}");
    let seqs: Vec<i64> = updates.iter().map(|u| u["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "contiguous seq"
    );
    let states: Vec<&str> = updates.iter().filter_map(|u| u["state"].as_str()).collect();
    assert!(
        states.contains(&"queued") && states.contains(&"running") && states.contains(&"succeeded")
    );
    let evals: Vec<f64> = updates
        .iter()
        .filter_map(|u| u["values"]["eval_loss"].as_f64())
        .collect();
    assert!(evals.len() >= 3, "{evals:?}");
    assert!(
        evals.last().unwrap() < &evals[0],
        "eval loss fell: {evals:?}"
    );

    let out = dir.path().join("adapter");
    let got = server.json(&["artifacts", "download", &id, "--out", out.to_str().unwrap()]);
    let listed = server.json(&["artifacts", "list", &id]);
    assert_eq!(
        got["artifact"]["sha256"],
        listed["artifacts"].as_array().unwrap().last().unwrap()["sha256"]
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert!(out.join("adapter_model.safetensors").exists());

    // The merged model: an HF folder whose logits are the base model's with the adapter.
    let merged = dir.path().join("merged");
    let got = server.json(&[
        "artifacts",
        "download",
        &id,
        "--kind",
        "merged",
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(got["artifact"]["kind"], "merged", "{got}");
    use candle_core::{DType, Device, Tensor};
    use tuna_worker::engine::adapters::Mode;
    use tuna_worker::engine::model::Llama;
    let ids = Tensor::from_vec(vec![3u32, 9, 27, 81, 40, 7], (1, 6), &Device::Cpu).unwrap();
    let mut base = Llama::from_dir(&dir.path().join("tiny"), DType::F32, &Device::Cpu).unwrap();
    tuna_worker::engine::export::load_adapter(&out, &mut base).unwrap();
    let want = base.forward(&ids, &Mode::Eval).unwrap();
    let got = Llama::from_dir(&merged, DType::F32, &Device::Cpu)
        .unwrap()
        .forward(&ids, &Mode::Eval)
        .unwrap();
    let d = (want - got)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-4, "merged model differs from base + adapter by {d}");
    drop(w);
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_job_resumes_from_its_checkpoint_on_another_worker() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database-url", &db.url, "--lease-ms", "1500"],
    );
    let s = setup(&server, dir.path());
    let id = create(&server, &s, "400", &["--label", "kill=me"]);
    let mut w1 = worker(&server, dir.path(), "w1");
    // Wait for a committed checkpoint (every 100 steps by default), then kill -9.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ckpts = server.json(&["artifacts", "list", &id]);
        if ckpts["artifacts"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint within 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    w1.kill().unwrap();
    let _ = w1.wait();
    let w2 = worker(&server, dir.path(), "w2");
    let (code, updates) = history(&server, &id);
    assert_eq!(
        code,
        Some(0),
        "job did not succeed after the crash: {updates:?}"
    );
    let job = server.json(&["jobs", "get", &id]);
    assert_eq!(job["attempt"], 2, "one reclaim");
    // Steps of attempt 2 continue from the checkpoint instead of restarting at 1.
    let first_step_2 = first_training_step(&updates, 2);
    assert!(
        first_step_2 > 100,
        "attempt 2 started at step {first_step_2}"
    );
    // Nothing the first attempt reported was lost.
    let attempt1 = updates
        .iter()
        .filter(|u| u["type"] == "metrics" && u["attempt"] == 1)
        .count();
    let sample: Vec<_> = updates.iter().take(12).collect();
    assert!(
        attempt1 >= 100,
        "attempt 1 metrics kept: {attempt1}; first updates: {sample:?}"
    );
    drop(w2);
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_worker_server_runs_a_job_to_success_for_create_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--embedded-worker"]);
    let s = setup(&server, dir.path());
    let out = server.cli(&[
        "jobs",
        "create",
        "--model",
        &s.model,
        "--training-file",
        &s.train,
        "--validation-file",
        &s.valid,
        "--max-steps",
        "20",
        "--learning-rate",
        "0.01",
        "--eval-every",
        "10",
        "--wait",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("succeeded"));
    assert!(
        server.terminate(),
        "the worker drains, then the server stops"
    );
}

/// Polls `tuna jobs get` until `pred` holds for the job JSON.
fn wait_for(
    server: &ServerProcess,
    id: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = server.json(&["jobs", "get", id]);
        if pred(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {job}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The highest training step the job has reported.
fn last_step(server: &ServerProcess, id: &str) -> i64 {
    let (_, updates) = history_now(server, id);
    updates
        .iter()
        .filter(|u| u["type"] == "metrics")
        .filter_map(|u| u["step"].as_i64())
        .max()
        .unwrap_or(0)
}

/// Reads the history so far without waiting for the end (watch with a timeout).
fn history_now(server: &ServerProcess, id: &str) -> (Option<i32>, Vec<serde_json::Value>) {
    let child = Command::new(tuna_bin())
        .args(["jobs", "watch", id, "--output", "json"])
        .env("TUNA_SERVER", &server.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let out = child.wait_with_output().unwrap();
    let updates = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.code(), updates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_training_promptly_and_pause_resume_continues_from_the_pause_checkpoint() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database-url", &db.url, "--lease-ms", "3000"],
    );
    let s = setup(&server, dir.path());
    let w = worker(&server, dir.path(), "w1");

    // Cancel: the worker stops within 2 s of its next heartbeat (every lease/3 = 1 s).
    let id = create(&server, &s, "100000", &[]);
    wait_for(&server, &id, "running", |j| j["state"] == "running");
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    server.json(&["jobs", "cancel", &id]);
    wait_for(&server, &id, "cancelled", |j| j["state"] == "cancelled");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "cancel took {:?}",
        asked.elapsed()
    );

    // Pause: the worker checkpoints and releases; resume continues from that checkpoint.
    let id = create(&server, &s, "400", &[]);
    wait_for(&server, &id, "running", |j| j["state"] == "running");
    std::thread::sleep(Duration::from_millis(1500));
    server.json(&["jobs", "pause", &id]);
    wait_for(&server, &id, "paused", |j| j["state"] == "paused");
    let paused_at = last_step(&server, &id);
    let ckpts = server.json(&["artifacts", "list", &id]);
    let pause_ckpt = ckpts["artifacts"].as_array().unwrap().last().unwrap()["step"]
        .as_i64()
        .unwrap();
    assert!(
        pause_ckpt > 0 && pause_ckpt >= paused_at - 1,
        "pause checkpoint at {pause_ckpt}, last step {paused_at}"
    );
    server.json(&["jobs", "resume", &id]);
    let (code, updates) = history(&server, &id);
    assert_eq!(code, Some(0));
    let resumed_first = first_training_step(&updates, 2);
    assert_eq!(
        resumed_first,
        pause_ckpt + 1,
        "attempt 2 continues right after the pause checkpoint"
    );
    drop(w);
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_run_does_not_stop_the_job() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database-url", &db.url, "--lease-ms", "6000"],
    );
    let s = setup(&server, dir.path());
    let url = server.url.clone();
    let w = worker(&server, dir.path(), "w1");
    let id = create(&server, &s, "300", &[]);
    wait_for(&server, &id, "running", |j| j["state"] == "running");
    std::thread::sleep(Duration::from_millis(1000));
    assert!(server.terminate());
    std::thread::sleep(Duration::from_millis(1000));
    // Same address, same database: the worker's heartbeats and reports resume.
    let port = url.rsplit(':').next().unwrap().to_string();
    let server = ServerProcess::start_on(
        dir.path(),
        &port,
        &["--database-url", &db.url, "--lease-ms", "6000"],
    );
    let (code, _) = history(&server, &id);
    assert_eq!(code, Some(0), "the job completed after the restart");
    assert_eq!(
        server.json(&["jobs", "get", &id])["attempt"],
        1,
        "no reclaim was needed"
    );
    drop(w);
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_server_stops_on_its_own_and_the_job_finishes_elsewhere() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--database-url", db.url.as_str(), "--lease-ms", "2000"];
    let server = ServerProcess::start(dir.path(), &args);
    let s = setup(&server, dir.path());
    let url = server.url.clone();
    let mut w1 = worker(&server, dir.path(), "w1");
    let id = create(&server, &s, "400", &[]);
    wait_for(&server, &id, "running", |j| j["state"] == "running");
    // Training is under way (not just the downloads) before the server goes away.
    let deadline = Instant::now() + Duration::from_secs(60);
    while last_step(&server, &id) < 5 {
        assert!(Instant::now() < deadline, "training did not start");
    }
    assert!(server.terminate());
    // Longer than the lease: the worker must give the job up by itself.
    let log = dir.path().join("w1.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("lease expired without a renewal")
    {
        assert!(
            Instant::now() < deadline,
            "w1 kept training without a lease; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    w1.kill().unwrap();
    let _ = w1.wait();
    let port = url.rsplit(':').next().unwrap().to_string();
    let server = ServerProcess::start_on(dir.path(), &port, &args);
    let w2 = worker(&server, dir.path(), "w2");
    let (code, _) = history(&server, &id);
    assert_eq!(code, Some(0), "the job completed on the second worker");
    let job = server.json(&["jobs", "get", &id]);
    assert_eq!(job["attempt"], 2);
    drop(w2);
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_run_twenty_jobs_exactly_once_in_priority_order() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--database-url", &db.url]);
    let s = setup(&server, dir.path());
    let mut ids = Vec::new();
    for i in 0..20 {
        let priority = ((i * 7) % 5 * 10).to_string();
        let id = create(&server, &s, "3", &["--priority", &priority]);
        ids.push(id);
    }
    let workers: Vec<Worker> = (0..4)
        .map(|i| worker(&server, dir.path(), &format!("w{i}")))
        .collect();
    let mut jobs = Vec::new();
    for id in &ids {
        jobs.push(wait_for(&server, id, "success", |j| {
            j["state"] == "succeeded"
        }));
    }
    for j in &jobs {
        assert_eq!(j["attempt"], 1, "ran exactly once: {j}");
        let adapters = server.json(&["artifacts", "list", j["id"].as_str().unwrap()]);
        assert_eq!(
            adapters["artifacts"].as_array().unwrap().len(),
            1,
            "one adapter per job"
        );
    }
    // Claims follow priority: a job that started strictly earlier never has lower priority.
    for a in &jobs {
        for b in &jobs {
            let (sa, sb) = (
                a["started_at_ms"].as_i64().unwrap(),
                b["started_at_ms"].as_i64().unwrap(),
            );
            if sa < sb {
                assert!(
                    a["priority"].as_i64() >= b["priority"].as_i64(),
                    "{} (p{}) started before {} (p{})",
                    a["id"],
                    a["priority"],
                    b["id"],
                    b["priority"]
                );
            }
        }
    }
    drop(workers);
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_worker_checkpoint_release_exit_and_the_next_worker_continues() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--database-url", &db.url]);
    let s = setup(&server, dir.path());
    let mut w1 = worker(&server, dir.path(), "w1");
    let id = create(&server, &s, "300", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while last_step(&server, &id) < 5 {
        assert!(Instant::now() < deadline, "training did not start");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &w1.id().to_string()])
        .status();
    let status = w1.wait().unwrap();
    assert!(
        status.success(),
        "the worker exits cleanly after draining: {status:?}"
    );
    let job = server.json(&["jobs", "get", &id]);
    assert_eq!(
        job["state"], "queued",
        "the lease was released, not left to expire"
    );
    let ckpts = server.json(&["artifacts", "list", &id]);
    let drained_at = ckpts["artifacts"].as_array().unwrap().last().unwrap()["step"]
        .as_i64()
        .unwrap();
    assert!(
        drained_at >= 5,
        "a drain checkpoint was committed (step {drained_at})"
    );
    let w2 = worker(&server, dir.path(), "w2");
    let (code, updates) = history(&server, &id);
    assert_eq!(code, Some(0));
    let first = first_training_step(&updates, 2);
    assert_eq!(first, drained_at + 1);
    drop(w2);
    drop(server);
    db.drop_db().await;
}

#[test]
fn tuna_train_runs_the_engine_locally_and_writes_a_peft_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let data = dir.path().join("train.jsonl");
    std::fs::write(&data, dataset(1)).unwrap();
    let run = |args: &[&str]| Command::new(tuna_bin()).args(args).output().unwrap();
    assert!(
        run(&["models", "make-tiny", "--out", model.to_str().unwrap()])
            .status
            .success()
    );
    for method in ["lora", "dora", "ia3"] {
        let out = dir.path().join(format!("adapter-{method}"));
        let done = run(&[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--method",
            method,
            "--max-steps",
            "3",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            done.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        assert!(
            out.join("adapter_config.json").exists()
                && out.join("adapter_model.safetensors").exists()
        );
    }
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\":\"ok\"}\n{\"text\":3}\n").unwrap();
    let failed = run(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        bad.to_str().unwrap(),
    ]);
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
}
