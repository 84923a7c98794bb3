//! Two `tuna server` replicas on one PostgreSQL database and one S3 bucket (a real
//! S3-compatible server), with clients and workers spread over both: a file uploaded through
//! replica A trains on a worker connected to replica B, A's watch sees B's metrics live, the
//! adapter B stored downloads through A, and the sweep controller runs on exactly one replica
//! and moves to the other when that one is killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sqlx::Connection;
use tuna_e2e::{S3Server, ServerProcess, TestDb, setup, tuna_bin, worker};

async fn controller_holder(db: &TestDb) -> Option<String> {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query_scalar(
        "SELECT holder FROM leader_leases WHERE name = 'sweep-controller' AND expires_at > \
         (extract(epoch from now()) * 1000)::bigint",
    )
    .fetch_optional(&mut conn)
    .await
    .unwrap()
}

fn pid_of(holder: &str) -> u32 {
    holder.split('-').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_database_and_bucket_and_the_sweep_controller_fails_over() {
    let Some(s3) = S3Server::start() else { return };
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let url = s3.url("replicas");
    let mut env: Vec<(String, String)> = s3.env();
    env.push(("TUNA_BLOB_URL".into(), url));
    env.push(("TUNA_POLL_INTERVAL_MS".into(), "200".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args = ["--database-url", db.url.as_str(), "--lease-ms", "6000"];
    let a = ServerProcess::start_with_env(&dir_a, &args, &env);
    let b = ServerProcess::start_with_env(&dir_b, &args, &env);

    // Uploaded through A (into the bucket), trained by a worker of B.
    let s = setup(&a, dir.path());
    let _wb = worker(&b, dir.path(), "wb");
    let id = s.create_job(
        &a,
        &[
            "--validation-file",
            &s.valid,
            "--r",
            "4",
            "--max-steps",
            "300",
        ],
    );

    // A's watch sees the metrics B records while the job still runs.
    let mut watch = Command::new(tuna_bin())
        .args(["jobs", "watch", &id, "--output", "json"])
        .env("TUNA_SERVER", &a.url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut live_metrics = false;
    let mut last = serde_json::Value::Null;
    while let Ok(update) = rx.recv_timeout(Duration::from_secs(120)) {
        if update["type"] == "metrics" && !live_metrics {
            let now = b.json(&["jobs", "get", &id]);
            live_metrics = now["state"] == "running";
        }
        last = update;
    }
    assert!(watch.wait().unwrap().success(), "watch ended with {last}");
    assert!(
        live_metrics,
        "no metrics reached A's watch while the job ran on B"
    );
    let done = a.json(&["jobs", "get", &id]);
    assert_eq!(done["state"], "succeeded", "{done}");
    let listed = b.json(&["artifacts", "list", &id]);
    let adapter = listed["artifacts"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let out = dir.path().join("adapter");
    let got = a.json(&["artifacts", "download", &id, "--out", out.to_str().unwrap()]);
    assert_eq!(got["artifact"]["sha256"], adapter["sha256"]);
    assert!(out.join("adapter_model.safetensors").exists());

    // Exactly one replica drives sweeps.
    let _wa = worker(&a, dir.path(), "wa");
    let sweep = a.json(&[
        "sweeps",
        "create",
        &format!("{}/../examples/sweep.toml", env!("CARGO_MANIFEST_DIR")),
        "--model",
        &s.model,
        "--training-file",
        &s.train,
        "--validation-file",
        &s.valid,
    ]);
    let sweep_id = sweep["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let leader = loop {
        let finished = a.json(&["sweeps", "get", &sweep_id])["trials_finished"]
            .as_i64()
            .unwrap();
        if finished >= 1 {
            break controller_holder(&db).await.expect("a replica leads");
        }
        assert!(Instant::now() < deadline, "no trial finished in time");
        std::thread::sleep(Duration::from_millis(300));
    };
    let (pa, pb) = (a.pid(), b.pid());
    let leader_pid = pid_of(&leader);
    assert!(
        leader_pid == pa || leader_pid == pb,
        "{leader} is neither {pa} nor {pb}"
    );
    let logs = [a.log_text(), b.log_text()];
    let leading = logs
        .iter()
        .filter(|l| l.contains("sweep controller leadership changed") && l.contains("leads=true"))
        .count();
    assert_eq!(leading, 1, "exactly one replica ever led so far");

    // Kill -9 the leader: the survivor takes the role over and finishes the sweep.
    let survivor = if leader_pid == pa {
        a.kill9();
        b
    } else {
        b.kill9();
        a
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(h) = controller_holder(&db).await
            && pid_of(&h) == survivor.pid()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor never took the controller over"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = survivor.cli(&["sweeps", "watch", &sweep_id, "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "watch: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        survivor.log_text()
    );
    let sweep = survivor.json(&["sweeps", "get", &sweep_id]);
    assert_eq!(sweep["state"], "succeeded", "{sweep}");
    assert_eq!(sweep["trials_created"], 8, "{sweep}");

    // Deleting the job removes its artifacts from the bucket too; a sweep trial stays.
    let trial_job = survivor.json(&["sweeps", "trials", &sweep_id])["trials"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = survivor.cli(&["jobs", "delete", &trial_job]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("FailedPrecondition"));
    survivor.json(&["jobs", "delete", &id]);
    assert!(!survivor.cli(&["jobs", "get", &id]).status.success());
    let blobs = tuna_server::blobs::Blobs::s3_with_env(&s3.url("replicas"), s3.env()).unwrap();
    let left = blobs.list(&format!("artifacts/{id}")).await.unwrap();
    assert!(
        left.is_empty(),
        "artifact blobs left in the bucket: {left:?}"
    );
    drop(survivor);
    db.drop_db().await;
}
