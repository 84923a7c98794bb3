//! Hostile request sizes over real gRPC on loopback and a real PostgreSQL: every one is
//! refused quickly with `INVALID_ARGUMENT` naming the field and the limit, before the server
//! builds anything proportional to the hostile size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;
use tuna_proto::v1 as pb;
use tuna_proto::v1::job_service_client::JobServiceClient;
use tuna_proto::v1::sweep_service_client::SweepServiceClient;
use tuna_server::api::Limits;
use tuna_server::config::Config;
use tuna_server::sweeps::SweepPlan;

use support::grpc::Harness;
use support::{DATASET_ID, MODEL_NAME, proto_spec};

async fn harness(pool: sqlx::PgPool) -> Harness {
    let store = tuna_server::store::postgres::PgStore::from_pool(
        pool,
        support::policy(),
        Arc::new(tuna_server::store::SystemClock),
    )
    .await
    .unwrap();
    Harness::start(Arc::new(store), Limits::default(), Config::default()).await
}

fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

fn real(name: &str, min: f64, max: f64) -> pb::Parameter {
    pb::Parameter {
        name: name.into(),
        scale: "linear".into(),
        min,
        max,
        ..Default::default()
    }
}

fn sweep(algorithm: &str, parameters: Vec<pb::Parameter>, max_trials: i32) -> pb::SweepSpec {
    pb::SweepSpec {
        parameters,
        objective: Some(pb::Objective {
            metric: "loss".into(),
            direction: 0,
        }),
        algorithm: Some(pb::Algorithm {
            name: algorithm.into(),
            grid_levels: Some(100),
            ..Default::default()
        }),
        max_trials: Some(max_trials),
        parallelism: Some(1),
        template: Some(pb::JobSpec {
            base_model: MODEL_NAME.into(),
            training_file: DATASET_ID.into(),
            method: Some(pb::Method {
                r#type: "lora".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Four real parameters at 100 levels: 10^8 points (the 288-byte request that took 7 GB).
fn four_by_hundred() -> Vec<pb::Parameter> {
    vec![
        real("hyperparameters.learning_rate", 1e-5, 1e-2),
        real("hyperparameters.weight_decay", 0.0, 0.5),
        real("hyperparameters.max_grad_norm", 0.1, 10.0),
        real("method.lora.dropout", 0.0, 0.5),
    ]
}

async fn create_sweep(h: &Harness, spec: pb::SweepSpec) -> Result<pb::Sweep, tonic::Status> {
    SweepServiceClient::new(h.channel.clone())
        .create_sweep(pb::CreateSweepRequest {
            spec: Some(spec),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

#[sqlx::test(migrations = false)]
async fn a_grid_sweep_larger_than_max_trials_is_refused_without_allocating(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    for (params, trials) in [
        (four_by_hundred(), 10_000),
        (four_by_hundred()[..3].to_vec(), 10_000),
        (four_by_hundred()[..2].to_vec(), 9_999),
    ] {
        let n = params.len();
        let started = Instant::now();
        let err = create_sweep(&h, sweep("grid", params, trials))
            .await
            .expect_err("a grid past max_trials");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{n} x 100 took {:?}",
            started.elapsed()
        );
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let v = violations(&err);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0, "spec.max_trials");
        assert!(
            v[0].1.contains(&format!("more than {trials} points")),
            "{v:?}"
        );
    }
    // Exactly max_trials points is accepted.
    let ok = create_sweep(&h, sweep("grid", four_by_hundred()[..2].to_vec(), 10_000))
        .await
        .unwrap();
    assert_eq!(ok.state, pb::SweepState::Running as i32);
    // A huge grid stored by an older server is refused by the controller's decoder too, so
    // it is never rebuilt at a restart.
    let stored = sweep("grid", four_by_hundred(), 10_000).encode_to_vec();
    let started = Instant::now();
    let err = SweepPlan::decode(&stored).expect_err("a stored huge grid");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.contains("spec.max_trials"), "{err}");
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_huge_categorical_parameter_is_refused_in_linear_time(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let categorical = |choices: Vec<String>| pb::Parameter {
        name: "method.lora.target_modules".into(),
        scale: "categorical".into(),
        choices,
        ..Default::default()
    };
    // 200k choices, 1.8 MB: once held a core for minutes.
    let huge: Vec<String> = (0..200_000).map(|i| format!("q_proj{i}")).collect();
    let started = Instant::now();
    let err = create_sweep(&h, sweep("random", vec![categorical(huge)], 10))
        .await
        .expect_err("200k choices");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = violations(&err);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].0, "spec.parameters[0].choices");
    assert!(v[0].1.contains("at most 256 choices"), "{v:?}");
    // Within the count but past the total size.
    let fat: Vec<String> = (0..200)
        .map(|i| format!("{i:04}{}", "m".repeat(400)))
        .collect();
    let err = create_sweep(&h, sweep("random", vec![categorical(fat)], 10))
        .await
        .expect_err("80 KB of choices");
    let v = violations(&err);
    assert_eq!(v[0].0, "spec.parameters[0].choices", "{v:?}");
    assert!(v[0].1.contains("bytes of choices"), "{v:?}");
    // A duplicate among the maximum number of choices is found (by hash, not by scanning).
    let mut dup: Vec<String> = (0..256).map(|i| format!("q_proj,m{i}")).collect();
    dup[255] = dup[3].clone();
    let err = create_sweep(&h, sweep("random", vec![categorical(dup.clone())], 10))
        .await
        .expect_err("a duplicate");
    let v = violations(&err);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].1.contains("appears twice"), "{v:?}");
    // The maximum number of distinct choices is accepted, each validated as a trial once.
    dup[255] = "q_proj,last".into();
    let started = Instant::now();
    create_sweep(&h, sweep("random", vec![categorical(dup)], 10))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn oversized_lists_and_values_are_refused_naming_the_limit(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let mut jobs = JobServiceClient::new(h.channel.clone());
    let create = |spec: pb::JobSpec| pb::CreateJobRequest {
        spec: Some(spec),
        request_id: String::new(),
    };
    // 200k target modules (and 100k bad ones): one violation naming the list and the limit.
    for name in ["q_proj", "bad name!"] {
        let mut spec = proto_spec(0, 0);
        spec.method.as_mut().unwrap().lora = Some(pb::LoraParams {
            target_modules: (0..200_000).map(|i| format!("{name}{i}")).collect(),
            ..Default::default()
        });
        let err = jobs.create_job(create(spec)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let v = violations(&err);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0, "spec.method.lora.target_modules");
        assert!(v[0].1.contains("at most 64 entries"), "{v:?}");
        assert!(err.message().len() < 1024, "{}", err.message().len());
    }
    // A job no worker could ever claim.
    let mut spec = proto_spec(0, 0);
    spec.resources = Some(pb::Resources {
        device: String::new(),
        min_memory_bytes: i64::MAX,
        ..Default::default()
    });
    let err = jobs.create_job(create(spec)).await.unwrap_err();
    let v = violations(&err);
    assert_eq!(v[0].0, "spec.resources.min_memory_bytes", "{v:?}");
    assert!(
        v[0].1
            .contains(&tuna_spec::MAX_MIN_MEMORY_BYTES.to_string()),
        "{v:?}"
    );
    // Label filters are capped (999 once made SQLite answer INTERNAL).
    let labels = (0..999)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let err = jobs
        .list_jobs(pb::ListJobsRequest {
            labels,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = violations(&err);
    assert_eq!(v[0].0, "labels");
    assert!(v[0].1.contains("at most 16"), "{v:?}");
    let labels = (0..16)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let page = jobs
        .list_jobs(pb::ListJobsRequest {
            labels,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.jobs.is_empty());
    // A filter key no job could carry is refused, not answered with an empty page.
    let err = jobs
        .list_jobs(pb::ListJobsRequest {
            labels: [("BAD KEY".to_string(), "x".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err)[0].0, "labels[\"BAD KEY\"]");
    // Many bad values give a bounded error: at most 32 violations and one counting the rest.
    let bad: Vec<String> = (0..256).map(|i| format!("schedule{i}")).collect();
    let err = create_sweep(
        &h,
        sweep(
            "random",
            vec![pb::Parameter {
                name: "hyperparameters.schedule".into(),
                scale: "categorical".into(),
                choices: bad,
                ..Default::default()
            }],
            10,
        ),
    )
    .await
    .unwrap_err();
    let v = violations(&err);
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        (2..=tuna_server::error::MAX_VIOLATIONS + 1).contains(&v.len()),
        "{}",
        v.len()
    );
    let last = &v[v.len() - 1].1;
    assert!(last.contains("more violations not shown"), "{last}");
    assert!(err.message().len() < 64 << 10, "{}", err.message().len());
    h.stop().await;
}

/// An upload stream that sent its header and then stays open, silent.
fn silent_upload(
    channel: &tonic::transport::Channel,
) -> (
    tokio::sync::mpsc::Sender<pb::UploadFileRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::File>, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let header = pb::UploadFileRequest {
        data: Some(pb::upload_file_request::Data::Header(
            pb::UploadFileHeader {
                name: "slow.jsonl".into(),
                purpose: pb::FilePurpose::Dataset as i32,
                size_bytes: 100,
                sha256: "0".repeat(64),
                format: 0,
            },
        )),
    };
    let mut client = tuna_proto::v1::file_service_client::FileServiceClient::new(channel.clone());
    let task = tokio::spawn(async move {
        client
            .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let sender = tx.clone();
    tokio::spawn(async move {
        let _ = sender.send(header).await;
    });
    (tx, task)
}

#[sqlx::test(migrations = false)]
async fn idle_uploads_are_abandoned_and_never_hold_more_than_the_upload_slots(pool: sqlx::PgPool) {
    let store = tuna_server::store::postgres::PgStore::from_pool(
        pool,
        support::policy(),
        Arc::new(tuna_server::store::SystemClock),
    )
    .await
    .unwrap();
    let limits = Limits {
        max_concurrent_uploads: 2,
        upload_idle_timeout_ms: 500,
        ..Limits::default()
    };
    let h = Harness::start(Arc::new(store), limits, Config::default()).await;
    let (_keep_a, a) = silent_upload(&h.channel);
    let (_keep_b, b) = silent_upload(&h.channel);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Both slots are taken: a third upload is refused at once, naming the limit.
    let (_keep_c, c) = silent_upload(&h.channel);
    let started = Instant::now();
    let refused = c.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("max_concurrent_uploads"));
    assert!(started.elapsed() < Duration::from_millis(400));
    // The silent ones are abandoned after the idle deadline, though their streams stay open.
    for task in [a, b] {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert!(err.message().contains("upload_idle_timeout_ms"));
    }
    // Their slots and partial uploads are released.
    assert_eq!(h.blobs.remove_stale_staging(Duration::ZERO).unwrap(), 0);
    // A new upload gets a slot again: ending it after the header is judged on its content.
    let (tx, d) = silent_upload(&h.channel);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(tx);
    let err = d.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}
