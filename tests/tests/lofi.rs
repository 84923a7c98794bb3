//! lo-fi jobs end to end with real processes: a `tuna server` on PostgreSQL and three `tuna
//! worker` processes run a `replicas = 3` job's shards, one worker is killed mid-shard and
//! its shard resumes elsewhere, and the merge step averages the shards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tuna_e2e::{ServerProcess, Setup, TestDb, setup, worker};

/// Steps per shard and of the one-worker run: enough to learn the task, few enough that the
/// shards stay in one basin (lo-fi's premise): at 60 steps the merge is within 2.3 % of one
/// run (deterministic); at lr 0.01 and 80+ steps on 33 lines each shard overfits its lines.
const STEPS: &str = "60";

/// A LoRA job of `steps` steps (rank 4, lr 0.01, batch 8, a checkpoint every 5 steps) on
/// `replicas` shards.
fn create(server: &ServerProcess, s: &Setup, replicas: &str, steps: &str) -> String {
    s.create_job(
        server,
        &[
            "--validation-file",
            &s.valid,
            "--r",
            "4",
            "--learning-rate",
            "0.01",
            "--max-steps",
            steps,
            "--batch-size",
            "8",
            "--eval-every",
            steps,
            "--checkpoint-every",
            "5",
            "--seed",
            "42",
            "--replicas",
            replicas,
        ],
    )
}

/// Watches `id` to its end; returns the exit code and every update.
fn history(server: &ServerProcess, id: &str) -> (Option<i32>, Vec<serde_json::Value>) {
    let out = server.cli(&["jobs", "watch", id, "--output", "json"]);
    let updates = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.code(), updates)
}

/// The last value of metric `name` in `updates`.
fn last(updates: &[serde_json::Value], name: &str) -> Option<f64> {
    updates
        .iter()
        .rev()
        .find_map(|u| u["values"][name].as_f64())
}

/// The lo-fi job's shards, by shard index.
fn shards(server: &ServerProcess, parent: &str) -> Vec<serde_json::Value> {
    let listed = server.json(&["jobs", "list", "--page-size", "1000"]);
    let mut shards: Vec<serde_json::Value> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["parent_job_id"] == parent)
        .cloned()
        .collect();
    shards.sort_by_key(|j| j["shard_index"].as_i64().unwrap_or(0));
    shards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lofi_job_survives_a_killed_worker_and_averages_to_within_five_percent_of_one_run() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database-url", &db.url, "--lease-ms", "1500"],
    );
    let s = setup(&server, dir.path());
    let client = tuna_client::Client::connect(&server.url, None)
        .await
        .unwrap();
    let id = create(&server, &s, "3", STEPS);
    let ids: Vec<String> = shards(&server, &id)
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "three shard jobs");
    let mut workers: Vec<Option<tuna_e2e::Worker>> = ["w0", "w1", "w2"]
        .iter()
        .map(|name| Some(worker(&server, dir.path(), name)))
        .collect();
    // Each worker holds one shard (the lo-fi job waits for them). As soon as a shard has
    // committed a checkpoint, kill -9 the worker that runs it.
    let deadline = Instant::now() + Duration::from_secs(300);
    let (victim, shard) = 'found: loop {
        assert!(Instant::now() < deadline, "no checkpoint within 300 s");
        let fleet = client
            .fleet()
            .list_workers(tuna_client::pb::ListWorkersRequest::default())
            .await
            .unwrap()
            .into_inner();
        for w in &fleet.workers {
            let has_checkpoint = ids.contains(&w.current_job_id)
                && server.json(&["artifacts", "list", &w.current_job_id])["artifacts"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty());
            if has_checkpoint {
                let index: usize = w.name[1..].parse().unwrap();
                break 'found (index, w.current_job_id.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut killed = workers[victim].take().unwrap();
    killed.kill().unwrap();
    let _ = killed.wait();

    let (code, updates) = history(&server, &id);
    assert_eq!(
        code,
        Some(0),
        "lo-fi job: {updates:?}\n{}",
        server.log_text()
    );
    // The killed worker's shard was reclaimed by another worker and continued from its
    // checkpoint; the other shards ran once.
    let attempts: Vec<i64> = ids
        .iter()
        .map(|s| {
            server.json(&["jobs", "get", s])["attempt"]
                .as_i64()
                .unwrap()
        })
        .collect();
    for (s, attempt) in ids.iter().zip(&attempts) {
        assert_eq!(*attempt, if *s == shard { 2 } else { 1 }, "{attempts:?}");
    }
    let (_, shard_updates) = history(&server, &shard);
    let first_step_2 = shard_updates
        .iter()
        .filter(|u| u["attempt"] == 2 && u["values"]["loss"].is_number())
        .filter_map(|u| u["step"].as_i64())
        .min()
        .unwrap();
    assert!(
        first_step_2 > 5,
        "the resumed shard restarted at {first_step_2}"
    );
    let claimed_by: Vec<&str> = shard_updates
        .iter()
        .filter(|u| u["kind"] == "claimed")
        .filter_map(|u| u["message"].as_str())
        .collect();
    assert_eq!(claimed_by.len(), 2, "{claimed_by:?}");
    assert!(
        !claimed_by[1].contains(&format!("(w{victim})")),
        "{claimed_by:?}"
    );

    // Watching the lo-fi job follows its shards: three first claims, the reclaim of the killed
    // worker's shard, and three successes, as events of the job itself.
    let shard_events: Vec<&str> = updates
        .iter()
        .filter(|u| u["kind"] == "shard")
        .filter_map(|u| u["message"].as_str())
        .collect();
    let count = |what: &str| shard_events.iter().filter(|m| m.contains(what)).count();
    assert_eq!(count("claimed"), 4, "{shard_events:?}");
    assert_eq!(count("ended: succeeded"), 3, "{shard_events:?}");

    let merged = last(&updates, "eval_loss").unwrap();
    let per_shard: Vec<f64> = (0..3)
        .map(|i| last(&updates, &format!("source{i}_eval_loss")).unwrap())
        .collect();
    assert!(last(&updates, "merge_reconstruction_error").unwrap() < 1e-6);

    // The same spec on one replica, for comparison.
    let single = create(&server, &s, "1", STEPS);
    let (code, single_updates) = history(&server, &single);
    assert_eq!(code, Some(0));
    let whole = last(&single_updates, "eval_loss").unwrap();
    println!(
        "lo-fi replicas=3 ({STEPS} steps per shard, worker w{victim} killed mid-shard) eval loss \
         {merged:.4} (shards {:.4} {:.4} {:.4}); one worker, same spec: {whole:.4}",
        per_shard[0], per_shard[1], per_shard[2]
    );
    assert!(
        (merged - whole).abs() <= 0.05 * whole,
        "lo-fi {merged} vs one run {whole}"
    );
    let out = dir.path().join("lofi-adapter");
    server.json(&["artifacts", "download", &id, "--out", out.to_str().unwrap()]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["r"], 12, "three rank-4 shards averaged exactly");
    drop(workers);
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_pause_and_resume_of_a_lofi_job_reach_its_shards_and_a_failed_shard_fails_it() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--database-url", &db.url]);
    let s = setup(&server, dir.path());
    let states = |parent: &str| -> Vec<String> {
        shards(&server, parent)
            .iter()
            .map(|j| j["state"].as_str().unwrap().to_string())
            .collect()
    };
    // No worker: everything stays queued, and the user's actions reach every shard.
    let id = create(&server, &s, "2", "5");
    server.json(&["jobs", "pause", &id]);
    assert!(
        states(&id).iter().all(|st| st == "paused"),
        "{:?}",
        states(&id)
    );
    server.json(&["jobs", "resume", &id]);
    assert!(
        states(&id).iter().all(|st| st == "queued"),
        "{:?}",
        states(&id)
    );
    server.json(&["jobs", "cancel", &id]);
    assert!(
        states(&id).iter().all(|st| st == "cancelled"),
        "{:?}",
        states(&id)
    );
    // A shard cannot be deleted on its own; the lo-fi job goes with its shards.
    let shard = shards(&server, &id)[0]["id"].as_str().unwrap().to_string();
    let out = server.cli(&["jobs", "delete", &shard]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&id));
    server.json(&["jobs", "delete", &id]);
    assert!(!server.cli(&["jobs", "get", &shard]).status.success());

    // Two lines for three shards: shard 2 has nothing to train on and fails, which fails the
    // lo-fi job naming it (its other shards are cancelled or finish).
    let tiny = dir.path().join("two.jsonl");
    std::fs::write(&tiny, tuna_e2e::dataset(50)).unwrap();
    let two = server.json(&["files", "upload", tiny.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let small = Setup {
        model: s.model.clone(),
        train: two,
        valid: s.valid.clone(),
    };
    let id = create(&server, &small, "3", "2");
    let _w = worker(&server, dir.path(), "w1");
    let (code, updates) = history(&server, &id);
    assert_eq!(code, Some(3), "{updates:?}");
    let job = server.json(&["jobs", "get", &id]);
    let message = job["failure"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("shard 2") && message.contains("no training examples"),
        "{job}"
    );
    drop(server);
    db.drop_db().await;
}
