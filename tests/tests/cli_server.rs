//! End to end: a real `tuna server` process on PostgreSQL (and on the embedded SQLite default),
//! driven by the real `tuna` CLI over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tuna_e2e::{ServerProcess, TestDb};

const DATASET: &str =
    "{\"prompt\":\"2+2=\",\"completion\":\"4\"}\n{\"prompt\":\"3+3=\",\"completion\":\"6\"}\n";
const BAD_DATASET: &str = "{\"text\":\"a\"}\n{\"text\":\"b\"}\n{\"text\":7}\n";

/// A gRPC worker client registered as `name` with `device`, and its worker id.
async fn register_worker(
    url: &str,
    name: &str,
    device: &str,
) -> (
    tuna_proto::v1::worker_service_client::WorkerServiceClient<tonic::transport::Channel>,
    String,
) {
    use tuna_proto::v1 as pb;
    let mut w =
        tuna_proto::v1::worker_service_client::WorkerServiceClient::connect(url.to_string())
            .await
            .unwrap();
    let reg = w
        .register_worker(pb::RegisterWorkerRequest {
            name: name.into(),
            capabilities: Some(pb::WorkerCapabilities {
                device: device.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    (w, reg.worker_id)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drives_a_postgres_backed_server_and_state_survives_a_restart() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    std::fs::write(&data, DATASET).unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, BAD_DATASET).unwrap();
    let data = data.display().to_string();
    let bad = bad.display().to_string();

    let server = ServerProcess::start(dir.path(), &["--database-url", &db.url]);
    let file = server.json(&["files", "upload", &data]);
    assert_eq!(file["line_count"], 2);
    assert_eq!(file["format"], "prompt_completion");
    let file_id = file["id"].as_str().unwrap().to_string();

    let out = server.cli(&["files", "upload", &bad]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 3"), "{}", stderr(&out));

    let create = [
        "jobs",
        "create",
        "--model",
        "tiny-llama",
        "--training-file",
        &file_id,
        "--r",
        "16",
        "--learning-rate",
        "0.001",
        "--request-id",
        "ci-run-1",
        "--label",
        "team=nlp",
    ];
    let job = server.json(&create);
    let again = server.json(&create);
    assert_eq!(job["id"], again["id"], "same request id, same job");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["lora_r"], 16);
    let id = job["id"].as_str().unwrap().to_string();

    let out = server.cli(&["jobs", "create", "--model", "", "--training-file", &file_id]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("InvalidArgument") && stderr(&out).contains("spec.base_model"),
        "{}",
        stderr(&out)
    );
    let out = server.cli(&[
        "jobs",
        "create",
        "--model",
        "m",
        "--training-file",
        &file_id,
        "--method",
        "magic",
    ]);
    assert!(
        stderr(&out).contains("spec.method.type"),
        "{}",
        stderr(&out)
    );

    let listed = server.json(&["jobs", "list", "--label", "team=nlp"]);
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(server.json(&["jobs", "get", &id])["state"], "queued");
    let out = server.cli(&["files", "delete", &file_id]);
    assert!(
        !out.status.success(),
        "a file in use by a queued job must not be deleted"
    );
    assert!(
        stderr(&out).contains("FailedPrecondition"),
        "{}",
        stderr(&out)
    );

    assert_eq!(server.json(&["jobs", "pause", &id])["state"], "paused");
    assert_eq!(server.json(&["jobs", "resume", &id])["state"], "queued");
    assert_eq!(server.json(&["jobs", "cancel", &id])["state"], "cancelled");
    let watch = server.cli(&["jobs", "watch", &id]);
    assert_eq!(
        watch.status.code(),
        Some(4),
        "watch of a cancelled job exits 4"
    );
    let printed = String::from_utf8_lossy(&watch.stdout);
    assert!(
        printed.contains("created") && printed.contains("cancelled"),
        "{printed}"
    );

    assert!(server.terminate(), "SIGTERM shuts the server down cleanly");

    // PostgreSQL keeps the state across a restart.
    let server = ServerProcess::start(dir.path(), &["--database-url", &db.url]);
    let job = server.json(&["jobs", "get", &id]);
    assert_eq!(job["state"], "cancelled");
    let events = server.cli(&["jobs", "events", &id, "--output", "json"]);
    let lines = String::from_utf8_lossy(&events.stdout).lines().count();
    assert_eq!(lines, 4, "created, paused, resumed, cancelled");
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_nonzero_when_the_job_fails_and_unknown_models_fail_fast() {
    use tuna_proto::v1 as pb;

    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    std::fs::write(&data, DATASET).unwrap();
    let model_dir = dir.path().join("tiny-model");
    std::fs::create_dir(&model_dir).unwrap();
    std::fs::write(model_dir.join("config.json"), "{\"hidden_size\": 8}").unwrap();
    std::fs::write(model_dir.join("model.safetensors"), b"weights").unwrap();
    std::fs::write(model_dir.join("README.md"), "not uploaded").unwrap();
    let server = ServerProcess::start(dir.path(), &["--database-url", &db.url]);
    let model = server.json(&[
        "models",
        "register",
        "tiny",
        "--path",
        &model_dir.display().to_string(),
    ]);
    assert_eq!(model["files"].as_array().unwrap().len(), 2, "{model}");
    assert_eq!(
        server.json(&["models", "list"])["models"][0]["name"],
        "tiny"
    );
    let file = server.json(&["files", "upload", &data.display().to_string()]);
    let file_id = file["id"].as_str().unwrap();
    let unknown = server.json(&[
        "jobs",
        "create",
        "--model",
        "nope",
        "--training-file",
        file_id,
    ]);
    let job = server.json(&[
        "jobs",
        "create",
        "--model",
        "tiny",
        "--training-file",
        file_id,
    ]);
    let id = job["id"].as_str().unwrap().to_string();

    // A worker takes the runnable job (the unknown-model job fails on the way) and fails it
    // for a USER reason (no retry).
    let (mut w, worker_id) = register_worker(&server.url, "e2e", "cpu").await;
    let lease = w
        .acquire_job(pb::AcquireJobRequest {
            worker_id,
            wait_ms: 5000,
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(lease.job_id, id);
    let watch = server.cli(&["jobs", "watch", unknown["id"].as_str().unwrap()]);
    assert_eq!(watch.status.code(), Some(3), "{}", stderr(&watch));
    let failed = server.json(&["jobs", "get", unknown["id"].as_str().unwrap()]);
    assert_eq!(failed["failure"]["kind"], "user");
    assert_eq!(failed["attempt"], 1);

    // The worker uploads an adapter (a tar of the PEFT folder); the CLI downloads, verifies
    // and unpacks it.
    let adapter = dir.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    std::fs::write(
        adapter.join("adapter_config.json"),
        "{\"peft_type\": \"LORA\"}",
    )
    .unwrap();
    std::fs::write(adapter.join("adapter_model.safetensors"), vec![1u8; 4096]).unwrap();
    let tar = dir.path().join("adapter.tar");
    tuna_client::pack::pack_dir(&adapter, &tar).unwrap();
    let bytes = std::fs::read(&tar).unwrap();
    use sha2::Digest;
    let header = pb::UploadArtifactRequest {
        data: Some(pb::upload_artifact_request::Data::Header(
            pb::UploadArtifactHeader {
                job_id: id.clone(),
                lease_token: lease.lease_token.clone(),
                kind: pb::ArtifactKind::Adapter as i32,
                step: 7,
                name: "adapter.tar".into(),
                size_bytes: bytes.len() as i64,
                sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            },
        )),
    };
    let chunk = pb::UploadArtifactRequest {
        data: Some(pb::upload_artifact_request::Data::Chunk(bytes)),
    };
    w.upload_artifact(tokio_stream::iter(vec![header, chunk]))
        .await
        .unwrap();
    let out = dir.path().join("downloaded");
    let got = server.json(&[
        "artifacts",
        "download",
        &id,
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(got["artifact"]["step"], 7);
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        vec![1u8; 4096]
    );
    assert!(out.join("adapter_config.json").exists());

    w.fail_job(pb::FailJobRequest {
        job_id: id.clone(),
        lease_token: lease.lease_token,
        kind: pb::FailureKind::User as i32,
        message: "line 2: label missing".into(),
    })
    .await
    .unwrap();
    let watch = server.cli(&["jobs", "watch", &id]);
    assert_eq!(watch.status.code(), Some(3), "{}", stderr(&watch));
    let job = server.json(&["jobs", "get", &id]);
    assert_eq!(job["state"], "failed");
    assert_eq!(job["failure"]["kind"], "user");

    // Model files download intact.
    let weights = model["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .unwrap();
    let out = dir.path().join("weights.out");
    let got = server.json(&[
        "files",
        "download",
        weights["file_id"].as_str().unwrap(),
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(got["file"]["sha256"], weights["sha256"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"weights");
    drop(server);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_server_runs_on_sqlite_without_a_database_url() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    std::fs::write(&data, DATASET).unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let file = server.json(&["files", "upload", &data.display().to_string()]);
    let job = server.json(&[
        "jobs",
        "create",
        "--model",
        "m",
        "--training-file",
        file["id"].as_str().unwrap(),
    ]);
    assert_eq!(job["state"], "queued");
    assert!(
        dir.path().join("tuna.db").exists(),
        "embedded database file created"
    );
    assert!(server.terminate());
    let server = ServerProcess::start(dir.path(), &[]);
    assert_eq!(
        server.json(&["jobs", "get", job["id"].as_str().unwrap()])["state"],
        "queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_watches_and_long_polls_promptly() {
    use tuna_proto::v1 as pb;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    std::fs::write(&data, DATASET).unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let file = server.json(&["files", "upload", &data.display().to_string()]);
    let job = server.json(&[
        "jobs",
        "create",
        "--model",
        "m",
        "--training-file",
        file["id"].as_str().unwrap(),
    ]);
    // A watcher that would otherwise wait forever on a queued job...
    let mut watcher = std::process::Command::new(tuna_e2e::tuna_bin())
        .args(["jobs", "watch", job["id"].as_str().unwrap()])
        .env("TUNA_SERVER", &server.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // ...and a worker long-polling for a minute.
    let (mut w, worker_id) = register_worker(&server.url, "idle", "cuda").await;
    let poll = tokio::spawn(async move {
        w.acquire_job(pb::AcquireJobRequest {
            worker_id,
            wait_ms: 60_000,
        })
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    assert!(server.terminate(), "graceful exit");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    let reply = poll.await.unwrap().unwrap().into_inner();
    assert!(reply.lease.is_none(), "the long-poll was answered empty");
    let _ = watcher.kill();
    let _ = watcher.wait();
}

/// `tuna server` on `0.0.0.0` refuses to start without both secrets (saying how to fix it),
/// and `--api-key` on its command line is honoured, not ignored.
#[test]
fn a_server_on_a_public_address_refuses_to_start_without_credentials() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let port = tuna_e2e::free_port();
    let listen = format!("0.0.0.0:{port}");
    let data = dir.path().display().to_string();
    // Built (if stale) before any timing.
    let bin = tuna_e2e::tuna_bin();
    let server = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(&bin);
        cmd.args(["server", "--listen", &listen, "--data-dir", &data])
            .args(extra)
            .env_remove("TUNA_API_KEY")
            .env_remove("TUNA_WORKER_TOKEN")
            .env_remove("TUNA_INSECURE")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    for (extra, env) in [
        (vec![], vec![]),
        (vec!["--api-key", "k3y"], vec![]),
        (vec![], vec![("TUNA_WORKER_TOKEN", "t0ken")]),
        // Both secrets but no TLS: they would cross the network in clear.
        (
            vec!["--api-key", "k3y"],
            vec![("TUNA_WORKER_TOKEN", "t0ken")],
        ),
    ] {
        let started = Instant::now();
        let out = server(&extra, &env).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} {env:?} started");
        assert!(
            stderr.contains("refusing to serve") && stderr.contains("--insecure"),
            "{stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    // With the key as a flag, the token from the environment and TLS ended in front of it
    // (--insecure), it serves and checks both; tls.rs covers TLS served by tuna itself.
    let mut child = server(
        &["--api-key", "k3y", "--insecure"],
        &[("TUNA_WORKER_TOKEN", "t0ken")],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let list = |key: Option<&str>| {
        let mut cmd = Command::new(&bin);
        cmd.args(["--server", &url, "jobs", "list"])
            .env_remove("TUNA_API_KEY");
        if let Some(k) = key {
            cmd.args(["--api-key", k]);
        }
        cmd.output().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !list(Some("k3y")).status.success() {
        assert!(Instant::now() < deadline, "the server did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let denied = list(None);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// `tuna worker --log-format json` writes one JSON object per line (as the server does with
/// the same flag), and text logs carry no ANSI colour codes when stderr is not a terminal.
#[test]
fn worker_logs_are_json_lines_on_request_and_plain_text_otherwise() {
    let dead = format!("http://127.0.0.1:{}", tuna_e2e::free_port());
    for format in ["json", "text"] {
        let mut child = std::process::Command::new(tuna_e2e::tuna_bin())
            .args(["worker", "--log-format", format, "--server-url", &dead])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stderr).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(!lines.is_empty(), "{format}: no log lines");
        assert!(!text.contains('\u{1b}'), "{format}: ANSI escapes in {text}");
        for line in lines {
            let parsed = serde_json::from_str::<serde_json::Value>(line);
            if format == "json" {
                let v = parsed.unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(
                    v["level"].is_string() && v["fields"]["message"].is_string(),
                    "{v}"
                );
            } else {
                assert!(parsed.is_err(), "text logs are not JSON: {line}");
            }
        }
    }
}
