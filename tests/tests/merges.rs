//! Merge jobs end to end with real processes: a `tuna server` on PostgreSQL and a `tuna
//! worker` train three LoRA trials, a merge job (`--task merge`) merges them on the worker,
//! and what cannot be merged is refused at CreateJob naming the source.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tuna_client::{Client, ClientError, pb};
use tuna_e2e::{ServerProcess, Setup, TestDb, setup, worker};

/// Trains a LoRA of rank 4 at learning rate `lr` for `steps` steps; returns its id.
fn trial(server: &ServerProcess, s: &Setup, lr: &str, steps: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--validation-file",
        &s.valid,
        "--r",
        "4",
        "--learning-rate",
        lr,
        "--max-steps",
        steps,
        "--batch-size",
        "8",
        "--eval-every",
        "20",
        "--seed",
        "42",
    ];
    args.extend_from_slice(extra);
    s.create_job(server, &args)
}

/// Watches `id` to its end with `--output json`; returns the exit code and the last value of
/// each metric.
fn finish(
    server: &ServerProcess,
    id: &str,
) -> (Option<i32>, serde_json::Map<String, serde_json::Value>) {
    let out = server.cli(&["jobs", "watch", id, "--output", "json"]);
    let mut last = serde_json::Map::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(u) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(values) = u["values"].as_object() {
            last.extend(values.clone());
        }
    }
    (out.status.code(), last)
}

fn merge_spec(sources: &[&str], method: &str) -> pb::JobSpec {
    pb::JobSpec {
        base_model: "tiny".into(),
        task: "merge".into(),
        merge: Some(pb::Merge {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            method: method.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The INVALID_ARGUMENT message of a refused CreateJob.
async fn refused(client: &Client, spec: pb::JobSpec) -> String {
    match client.create_job(spec, None).await {
        Err(ClientError::Rpc(s)) => {
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{}", s.message());
            s.message().to_string()
        }
        other => panic!("accepted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_stock_merge_of_three_trials_runs_on_a_worker_and_what_cannot_merge_is_refused() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--database-url", &db.url]);
    let client = Client::connect(&server.url, None).await.unwrap();
    let s = setup(&server, dir.path());
    let trials: Vec<String> = ["0.005", "0.01", "0.02"]
        .iter()
        .map(|lr| trial(&server, &s, lr, "20", &[]))
        .collect();
    let ids: Vec<&str> = trials.iter().map(String::as_str).collect();

    // Before any worker runs them, the trials are queued: nothing to merge yet.
    let message = refused(&client, merge_spec(&ids, "model_stock")).await;
    assert!(
        message.contains("spec.merge.sources[0]") && message.contains("queued"),
        "{message}"
    );

    let _w = worker(&server, dir.path(), "w1");
    let mut losses = Vec::new();
    for id in &trials {
        let (code, last) = finish(&server, id);
        assert_eq!(code, Some(0), "trial {id}: {last:?}");
        losses.push(last["eval_loss"].as_f64().unwrap());
    }

    // The merge job, through the CLI, with the merged model exported too.
    let mut args = vec![
        "jobs",
        "create",
        "--task",
        "merge",
        "--model",
        "tiny",
        "--merge-method",
        "model_stock",
        "--validation-file",
        &s.valid,
        "--export-merged",
    ];
    for id in &ids {
        args.extend(["--merge-source", id]);
    }
    let merge = server.json(&args)["id"].as_str().unwrap().to_string();
    let (code, last) = finish(&server, &merge);
    assert_eq!(code, Some(0), "merge: {last:?}\n{}", server.log_text());
    let merged = last["eval_loss"].as_f64().unwrap();
    let ratio = last["model_stock_ratio"].as_f64().unwrap();
    let error = last["merge_reconstruction_error"].as_f64().unwrap();
    let mean = losses.iter().sum::<f64>() / 3.0;
    println!(
        "model stock merge on a worker (eval loss): trials {:.4} {:.4} {:.4} (mean {mean:.4}), merged {merged:.4}; mean t {ratio:.4}, reconstruction error {error:.2e}",
        losses[0], losses[1], losses[2]
    );
    assert!(merged <= mean, "merged {merged} > mean {mean}");
    assert!((0.0..=1.0).contains(&ratio));
    assert!(error < 1e-6, "rank 12 holds three rank-4 deltas: {error}");

    // Its adapter is a PEFT LoRA of rank 3 × 4; the merged model is an HF folder.
    let out = dir.path().join("merged-adapter");
    server.json(&[
        "artifacts",
        "download",
        &merge,
        "--out",
        out.to_str().unwrap(),
    ]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (config["peft_type"].as_str(), config["r"].as_i64()),
        (Some("LORA"), Some(12))
    );
    let model = dir.path().join("merged-model");
    server.json(&[
        "artifacts",
        "download",
        &merge,
        "--kind",
        "merged",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(model.join("config.json").exists() && model.join("model.safetensors").exists());

    // A merge of merges is a merge of LoRA adapters too.
    let again = client
        .create_job(merge_spec(&[&merge, &trials[0]], "average"), None)
        .await
        .unwrap();
    assert_eq!(finish(&server, &again.id).0, Some(0));

    // What cannot be merged is refused naming the source.
    let dora = trial(&server, &s, "0.01", "2", &["--method", "dora"]);
    assert_eq!(finish(&server, &dora).0, Some(0));
    let message = refused(&client, merge_spec(&[&trials[0], &dora], "average")).await;
    assert!(
        message.contains("spec.merge.sources[1]") && message.contains("dora"),
        "{message}"
    );
    let message = refused(
        &client,
        merge_spec(
            &[&trials[0], "job_00000000000000000000000000000000"],
            "average",
        ),
    )
    .await;
    assert!(
        message.contains("spec.merge.sources[1]") && message.contains("does not exist"),
        "{message}"
    );
    server.json(&[
        "models",
        "register",
        "other",
        "--path",
        dir.path().join("tiny").to_str().unwrap(),
    ]);
    let mut other = merge_spec(&ids[..2], "average");
    other.base_model = "other".into();
    let message = refused(&client, other).await;
    assert!(
        message.contains("spec.merge.sources[0]") && message.contains("\"tiny\""),
        "{message}"
    );
    let mut with_data = merge_spec(&ids, "average");
    with_data.training_file = s.train.clone();
    let message = refused(&client, with_data).await;
    assert!(message.contains("spec.training_file"), "{message}");
    drop(server);
    db.drop_db().await;
}
