//! A real sweep end to end: a `tuna server` on PostgreSQL, two `tuna worker` processes, the
//! tiny model; 8 LoRA trials over learning rate (log) and rank (integer) with ASHA stopping on
//! eval loss, 2 at a time; the server is killed mid-sweep and restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tuna_e2e::{ServerProcess, TestDb, setup, worker};

fn example() -> String {
    format!("{}/../examples/sweep.toml", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_sweep_with_asha_survives_a_server_kill_and_yields_a_downloadable_best_adapter() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--database-url", db.url.as_str(), "--lease-ms", "6000"];
    // The tiny model trains a trial in about 2 s: the controller ticks every 200 ms so its
    // stop decisions land (through the workers' metrics replies) while trials still run.
    let env = [("TUNA_POLL_INTERVAL_MS", "200")];
    let server = ServerProcess::start_with_env(dir.path(), &args, &env);
    let s = setup(&server, dir.path());
    let _w1 = worker(&server, dir.path(), "w1");
    let _w2 = worker(&server, dir.path(), "w2");
    let created = server.json(&[
        "sweeps",
        "create",
        &example(),
        "--model",
        &s.model,
        "--training-file",
        &s.train,
        "--validation-file",
        &s.valid,
    ]);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["state"], "running");
    assert_eq!(created["parallelism"], 2);

    // Kill -9 the server once some trials finished and others are still to come.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let sweep = server.json(&["sweeps", "get", &id]);
        let finished = sweep["trials_finished"].as_i64().unwrap();
        assert!(sweep["trials_running"].as_i64().unwrap() <= 2, "{sweep}");
        if finished >= 2 {
            assert!(finished < 8, "the sweep finished before the kill: {sweep}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no trial finished in time: {sweep}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let before = server.json(&["sweeps", "trials", &id]);
    drop(server); // SIGKILL
    std::thread::sleep(Duration::from_millis(500));
    let server = ServerProcess::start_on_with_env(dir.path(), &port, &args, &env);

    // Follow it to the end: exit code 0 means SUCCEEDED.
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
    assert_eq!(sweep["trials_created"], 8, "{sweep}");

    let trials = server.json(&["sweeps", "trials", &id])["trials"]
        .as_array()
        .unwrap()
        .clone();
    // No trial lost or duplicated across the kill: 8 trials, each with one job, every trial
    // seen before the kill still there with the same job.
    let ids: BTreeSet<i64> = trials
        .iter()
        .map(|t| t["trial"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (0..8).collect(), "{trials:?}");
    assert_eq!(trials.len(), 8, "one run per trial: {trials:?}");
    let jobs: BTreeSet<&str> = trials
        .iter()
        .map(|t| t["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(jobs.len(), 8);
    for t in before["trials"].as_array().unwrap() {
        assert!(jobs.contains(t["job_id"].as_str().unwrap()), "lost {t}");
    }
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE sweep_id = $1")
            .bind(&id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 8, "trial jobs in the database");
    }
    assert!(
        trials.iter().all(|t| t["job_state"] == "succeeded"),
        "{trials:?}"
    );
    let listed = server.json(&["jobs", "list", "--sweep", &id, "--page-size", "100"]);
    let listed = listed["jobs"].as_array().unwrap();
    assert_eq!(listed.len(), 8, "jobs list --sweep");
    assert!(listed.iter().all(|j| j["sweep_id"] == id.as_str()));
    let stopped: Vec<_> = trials
        .iter()
        .filter(|t| t["stopped_early"] == true && t["steps"].as_i64().unwrap() < 24)
        .collect();
    assert!(
        !stopped.is_empty(),
        "no trial was stopped early: {trials:?}"
    );
    for t in &trials {
        let r = t["params"]["method.lora.r"].as_f64().unwrap();
        assert_eq!(r, r.round(), "rank is an integer: {t}");
        let lr = t["params"]["hyperparameters.learning_rate"]
            .as_f64()
            .unwrap();
        assert!((1e-3..=0.5).contains(&lr), "{t}");
    }

    // The best trial is the lowest final eval loss, and its adapter downloads.
    let best = &sweep["best_trial"];
    let min = trials
        .iter()
        .filter_map(|t| t["objective"].as_f64())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(best["objective"].as_f64().unwrap(), min, "{sweep}");
    let out = dir.path().join("best");
    server.json(&[
        "artifacts",
        "download",
        best["job_id"].as_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(
        config["r"].as_f64().unwrap(),
        best["params"]["method.lora.r"].as_f64().unwrap()
    );
    drop(server);
    db.drop_db().await;
}
