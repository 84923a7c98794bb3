//! The JSON HTTP API and dashboard, driven by real `curl` processes against a real `tuna
//! server` process: the README's curl walkthrough end to end, the same errors as gRPC (HTTP
//! status + field violations), server-sent events that are gap-free and resumable, raw
//! uploads and downloads, hostile bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tuna_e2e::{ServerProcess, free_port, tuna_bin};

const KEY: &str = "http-test-key";

/// What curl returned: the HTTP status, the response headers and the body.
struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

fn curl(dir: &Path, args: &[&str]) -> Reply {
    let headers = dir.join(format!("headers-{}", uuid::Uuid::new_v4().simple()));
    let out = Command::new("curl")
        .args(["-sS", "-N", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut body = out.stdout;
    let cut = body.iter().rposition(|b| *b == b'\n').unwrap();
    let status = String::from_utf8_lossy(&body[cut + 1..]).parse().unwrap();
    body.truncate(cut);
    let headers = std::fs::read_to_string(&headers).unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

struct Api<'a> {
    url: String,
    dir: &'a Path,
}

impl Api<'_> {
    /// POSTs `body` to `/api/<rpc>` with the key.
    fn post(&self, rpc: &str, body: &str) -> Reply {
        let auth = format!("Authorization: Bearer {KEY}");
        let url = format!("{}/api/{rpc}", self.url);
        curl(
            self.dir,
            &[
                "-H",
                &auth,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
                &url,
            ],
        )
    }

    fn ok(&self, rpc: &str, body: &str) -> Value {
        let reply = self.post(rpc, body);
        assert_eq!(
            reply.status,
            200,
            "{rpc}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    }

    /// Uploads `path` raw, the header in Tuna-Header.
    fn upload(&self, path: &Path, purpose: &str, sha256: Option<&str>) -> Reply {
        let bytes = std::fs::read(path).unwrap();
        let sha = sha256.map_or_else(|| hex::encode(Sha256::digest(&bytes)), str::to_string);
        let header = format!(
            "Tuna-Header: {{\"name\":\"{}\",\"purpose\":\"{purpose}\",\"sizeBytes\":\"{}\",\"sha256\":\"{sha}\"}}",
            path.file_name().unwrap().to_string_lossy(),
            bytes.len()
        );
        let auth = format!("Authorization: Bearer {KEY}");
        let data = format!("@{}", path.display());
        let url = format!("{}/api/tuna.v1.FileService/Upload", self.url);
        curl(
            self.dir,
            &[
                "-H",
                &auth,
                "-H",
                "Content-Type: application/octet-stream",
                "-H",
                &header,
                "--data-binary",
                &data,
                &url,
            ],
        )
    }
}

fn violations(reply: &Reply) -> Vec<String> {
    reply.json()["fieldViolations"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|f| f["field"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The `data:` JSON of each `event: message` of an SSE body, and the last event's name.
fn events(body: &[u8]) -> (Vec<Value>, String) {
    let text = String::from_utf8_lossy(body);
    let mut messages = Vec::new();
    let mut last = String::new();
    for block in text.split("\n\n") {
        let mut event = "";
        let mut data = "";
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = e;
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = d;
            }
        }
        if event == "message" {
            messages.push(serde_json::from_str(data).unwrap());
        }
        if !event.is_empty() {
            last = event.to_string();
        }
    }
    (messages, last)
}

#[test]
fn the_curl_quickstart_trains_a_job_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("bash")
        .arg(root.join("examples/quickstart-curl.sh"))
        .env("TUNA_BIN", tuna_bin())
        .env("TUNA_PORT", free_port().to_string())
        .env("TUNA_DATA", dir.path())
        .env("TUNA_API_KEY", KEY)
        .env_remove("TUNA_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quickstart-curl.sh failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
    );
    assert!(stdout.contains("state: JOB_STATE_SUCCEEDED"), "{stdout}");
    assert!(
        stdout.contains("spec.hyperparameters.learning_rate"),
        "{stdout}"
    );
    assert!(stdout.contains("adapter_model.safetensors"), "{stdout}");
    assert!(stdout.contains("verified"), "{stdout}");
}

#[test]
fn http_calls_get_the_grpc_errors_streams_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with_env(dir.path(), &["--embedded-worker"], &[("TUNA_API_KEY", KEY)]);
    let api = Api {
        url: server.url.clone(),
        dir: dir.path(),
    };

    // Authentication is the gRPC edge's: no key → 401 with a challenge.
    let reply = curl(
        dir.path(),
        &[
            "-d",
            "{}",
            &format!("{}/api/tuna.v1.JobService/ListJobs", server.url),
        ],
    );
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["code"], "UNAUTHENTICATED");
    assert_eq!(reply.header("www-authenticate").as_deref(), Some("Bearer"));

    // The route table: unknown RPCs and the worker protocol are not routed; only GET/POST.
    assert_eq!(api.post("tuna.v1.JobService/NoSuch", "{}").status, 404);
    assert_eq!(
        api.post("tuna.v1.WorkerService/AcquireJob", "{}").status,
        404
    );
    let reply = curl(
        dir.path(),
        &[
            "-X",
            "DELETE",
            &format!("{}/api/tuna.v1.JobService/ListJobs", server.url),
        ],
    );
    assert_eq!(reply.status, 405);

    // Hostile bodies: not JSON, unknown fields, wrong types, too large.
    let reply = api.post("tuna.v1.JobService/ListJobs", "{not json");
    assert_eq!(reply.status, 400);
    assert_eq!(violations(&reply), ["body"]);
    let reply = api.post("tuna.v1.JobService/CreateJob", r#"{"spec":{"bogus":1}}"#);
    assert_eq!(reply.status, 400);
    assert!(
        violations(&reply)[0].contains("bogus"),
        "{:?}",
        reply.json()
    );
    let reply = api.post("tuna.v1.JobService/ListJobs", r#"{"pageSize":"many"}"#);
    assert_eq!(reply.status, 400);
    assert_eq!(violations(&reply), ["pageSize"]);
    let big = dir.path().join("big.json");
    std::fs::write(&big, format!("{{\"id\":\"{}\"}}", "x".repeat(5 << 20))).unwrap();
    let reply = curl(
        dir.path(),
        &[
            "-H",
            &format!("Authorization: Bearer {KEY}"),
            "--data-binary",
            &format!("@{}", big.display()),
            &format!("{}/api/tuna.v1.JobService/GetJob", server.url),
        ],
    );
    assert_eq!(reply.status, 429);
    assert_eq!(reply.json()["code"], "RESOURCE_EXHAUSTED");

    // A raw upload whose bytes do not hash to the header's sha256 stores nothing.
    let data = dir.path().join("train.jsonl");
    let lines: String = (0..40)
        .map(|i| format!("{{\"text\": \"{i} plus {i} is {}\"}}\n", 2 * i))
        .collect();
    std::fs::write(&data, &lines).unwrap();
    let reply = api.upload(&data, "FILE_PURPOSE_DATASET", Some(&"0".repeat(64)));
    assert_eq!(reply.json()["code"], "DATA_LOSS", "{:?}", reply.json());
    assert_eq!(
        api.ok("tuna.v1.FileService/ListFiles", "{}")["files"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    // A raw upload without its header names the header.
    let reply = curl(
        dir.path(),
        &[
            "-H",
            &format!("Authorization: Bearer {KEY}"),
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            "abc",
            &format!("{}/api/tuna.v1.FileService/Upload", server.url),
        ],
    );
    assert_eq!(reply.status, 400);
    assert_eq!(violations(&reply), ["Tuna-Header"]);
    // NDJSON uploads: a bad line is named by its number.
    let ndjson = dir.path().join("upload.ndjson");
    std::fs::write(
        &ndjson,
        "{\"header\":{\"name\":\"x.jsonl\",\"purpose\":\"FILE_PURPOSE_DATASET\",\"sizeBytes\":\"3\",\"sha256\":\"00\"}}\n{\"chunk\": 12}\n",
    )
    .unwrap();
    let reply = curl(
        dir.path(),
        &[
            "-H",
            &format!("Authorization: Bearer {KEY}"),
            "-H",
            "Content-Type: application/x-ndjson",
            "--data-binary",
            &format!("@{}", ndjson.display()),
            &format!("{}/api/tuna.v1.FileService/Upload", server.url),
        ],
    );
    assert_eq!(reply.status, 400);
    assert_eq!(violations(&reply), ["line 2"], "{:?}", reply.json());

    // A good upload, a model, a job.
    let file = api.upload(&data, "FILE_PURPOSE_DATASET", None).json();
    assert_eq!(file["lineCount"], "40");
    let model_dir = dir.path().join("tiny");
    let made = Command::new(tuna_bin())
        .args(["models", "make-tiny", "--out"])
        .arg(&model_dir)
        .output()
        .unwrap();
    assert!(made.status.success());
    let mut files = Vec::new();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        let f = api
            .upload(&model_dir.join(name), "FILE_PURPOSE_MODEL", None)
            .json();
        files.push(serde_json::json!({"path": name, "fileId": f["id"]}));
    }
    api.ok(
        "tuna.v1.ModelService/RegisterModel",
        &serde_json::json!({"name": "tiny", "format": "MODEL_FORMAT_HF", "files": files})
            .to_string(),
    );
    // The same field violations as gRPC, at HTTP 400.
    let bad = serde_json::json!({"spec": {"baseModel": "tiny", "trainingFile": file["id"],
        "method": {"type": "lora"}, "hyperparameters": {"learningRate": -1}}});
    let reply = api.post("tuna.v1.JobService/CreateJob", &bad.to_string());
    assert_eq!(reply.status, 400);
    assert_eq!(violations(&reply), ["spec.hyperparameters.learning_rate"]);
    let spec = serde_json::json!({"spec": {"baseModel": "tiny", "trainingFile": file["id"],
        "method": {"type": "lora", "lora": {"r": 4}},
        "hyperparameters": {"learningRate": 0.005, "maxSteps": 12, "batchSize": 4}}});
    let job = api.ok("tuna.v1.JobService/CreateJob", &spec.to_string());
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["state"], "JOB_STATE_QUEUED");

    // The watch as server-sent events: gap-free seqs from 1, ending with `end`.
    let reply = api.post(
        "tuna.v1.JobService/WatchJob",
        &format!("{{\"id\":\"{id}\"}}"),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let (updates, last) = events(&reply.body);
    assert_eq!(last, "end");
    let seqs: Vec<i64> = updates
        .iter()
        .map(|u| u["seq"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    assert!(
        updates
            .iter()
            .any(|u| u["metrics"]["values"]["loss"].is_number())
    );
    // Resuming after a seq replays exactly the rest; GET with query parameters works too.
    let reply = curl(
        dir.path(),
        &[
            "-H",
            &format!("Authorization: Bearer {KEY}"),
            &format!(
                "{}/api/tuna.v1.JobService/WatchJob?id={id}&afterSeq=5",
                server.url
            ),
        ],
    );
    let (rest, _) = events(&reply.body);
    assert_eq!(rest.len(), seqs.len() - 5);
    assert_eq!(rest[0]["seq"], "6");
    let job = api.ok("tuna.v1.JobService/GetJob", &format!("{{\"id\":\"{id}\"}}"));
    assert_eq!(job["state"], "JOB_STATE_SUCCEEDED");

    // The adapter as raw bytes whose sha256 is the one in Tuna-Header.
    let artifacts = api.ok(
        "tuna.v1.ArtifactService/ListArtifacts",
        &format!("{{\"jobId\":\"{id}\",\"kind\":\"ARTIFACT_KIND_ADAPTER\"}}"),
    );
    let artifact = &artifacts["artifacts"][0];
    let reply = curl(
        dir.path(),
        &[
            "-H",
            &format!("Authorization: Bearer {KEY}"),
            "-H",
            "Accept: application/octet-stream",
            &format!(
                "{}/api/tuna.v1.ArtifactService/Download?artifactId={}",
                server.url,
                artifact["id"].as_str().unwrap()
            ),
        ],
    );
    assert_eq!(reply.status, 200);
    let header: Value = serde_json::from_str(&reply.header("tuna-header").unwrap()).unwrap();
    assert_eq!(header["sha256"], artifact["sha256"]);
    assert_eq!(hex::encode(Sha256::digest(&reply.body)), artifact["sha256"]);
    assert_eq!(
        reply.body.len().to_string(),
        artifact["sizeBytes"].as_str().unwrap()
    );
    // Without Accept: octet-stream the same RPC is events with base64 chunks.
    let reply = api.post(
        "tuna.v1.ArtifactService/Download",
        &format!(
            "{{\"artifactId\":\"{}\"}}",
            artifact["id"].as_str().unwrap()
        ),
    );
    let (frames, last) = events(&reply.body);
    assert_eq!(last, "end");
    assert_eq!(frames[0]["artifact"]["id"], artifact["id"]);

    // The fleet: the embedded worker, seen recently.
    let fleet = api.ok("tuna.v1.FleetService/ListWorkers", "{}");
    assert_eq!(fleet["workers"][0]["device"], "cpu");

    // The OpenAPI document and the dashboard are served without a key.
    let reply = curl(dir.path(), &[&format!("{}/api/openapi.json", server.url)]);
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/tuna.v1.JobService/CreateJob"]["post"].is_object());
    let reply = curl(dir.path(), &[&format!("{}/", server.url)]);
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-security-policy").is_some());
    assert!(String::from_utf8_lossy(&reply.body).contains("ui/app.js"));
    assert!(server.terminate());
}
