//! The gRPC API over loopback: real tonic server and clients, real PostgreSQL, real files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use tuna_proto::v1 as pb;
use tuna_proto::v1::artifact_service_client::ArtifactServiceClient;
use tuna_proto::v1::file_service_client::FileServiceClient;
use tuna_proto::v1::job_service_client::JobServiceClient;
use tuna_proto::v1::worker_service_client::WorkerServiceClient;
use tuna_server::api::Limits;
use tuna_server::config::Config;
use tuna_server::store::{Fence, MetricInput};

use support::grpc::Harness;
use support::proto_spec;

async fn harness(pool: sqlx::PgPool) -> Harness {
    harness_with(pool, Limits::default(), Config::default()).await
}

async fn harness_with(pool: sqlx::PgPool, limits: Limits, config: Config) -> Harness {
    let store = tuna_server::store::postgres::PgStore::from_pool(
        pool,
        support::policy(),
        std::sync::Arc::new(tuna_server::store::SystemClock),
    )
    .await
    .unwrap();
    Harness::start(std::sync::Arc::new(store), limits, config).await
}

fn jobs(ch: &Channel) -> JobServiceClient<Channel> {
    JobServiceClient::new(ch.clone())
}

fn files(ch: &Channel) -> FileServiceClient<Channel> {
    FileServiceClient::new(ch.clone())
}

/// Creates a valid job with `priority` and no request id.
async fn create(ch: &Channel, priority: i32) -> pb::Job {
    jobs(ch)
        .create_job(pb::CreateJobRequest {
            spec: Some(proto_spec(priority, 0)),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// A registration request of a CPU worker.
fn register_request(name: &str) -> pb::RegisterWorkerRequest {
    pb::RegisterWorkerRequest {
        name: name.into(),
        capabilities: Some(pb::WorkerCapabilities {
            device: "cpu".into(),
            memory_bytes: 1 << 30,
            ..Default::default()
        }),
    }
}

fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

fn upload_messages(
    header: pb::UploadFileHeader,
    body: &[u8],
    chunk: usize,
) -> Vec<pb::UploadFileRequest> {
    let mut msgs = vec![pb::UploadFileRequest {
        data: Some(pb::upload_file_request::Data::Header(header)),
    }];
    for c in body.chunks(chunk) {
        msgs.push(pb::UploadFileRequest {
            data: Some(pb::upload_file_request::Data::Chunk(c.to_vec())),
        });
    }
    msgs
}

fn header(name: &str, body: &[u8]) -> pb::UploadFileHeader {
    pb::UploadFileHeader {
        name: name.into(),
        purpose: pb::FilePurpose::Dataset as i32,
        size_bytes: body.len() as i64,
        sha256: hex::encode(Sha256::digest(body)),
        format: 0,
    }
}

async fn upload_model_file(h: &Harness, name: &str, body: &[u8]) -> pb::File {
    let mut hd = header(name, body);
    hd.purpose = pb::FilePurpose::Model as i32;
    files(&h.channel)
        .upload(tokio_stream::iter(upload_messages(hd, body, 3)))
        .await
        .unwrap()
        .into_inner()
}

/// Asserts that a refused upload left no file row and no blob, committed or temporary.
async fn assert_nothing_stored(h: &Harness) {
    let listed = files(&h.channel)
        .list_files(pb::ListFilesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let left: Vec<_> = listed
        .files
        .iter()
        .filter(|f| {
            ![
                support::DATASET_ID,
                support::MODEL_CONFIG_ID,
                support::MODEL_WEIGHTS_ID,
            ]
            .contains(&f.id.as_str())
        })
        .collect();
    assert!(left.is_empty(), "file rows left: {left:?}");
    assert_eq!(
        h.blobs.count("files").await.unwrap(),
        0,
        "committed blobs left"
    );
    assert_eq!(
        h.blobs
            .remove_stale_staging(std::time::Duration::ZERO)
            .unwrap(),
        0,
        "partial uploads left"
    );
}

#[sqlx::test(migrations = false)]
async fn create_get_list_paginate_and_watch_over_grpc(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let mut client = jobs(&h.channel);
    let mut ids = Vec::new();
    for p in 0..5 {
        let job = create(&h.channel, p).await;
        assert_eq!(job.state(), pb::JobState::Queued);
        assert_eq!(job.max_attempts, 3, "defaults are filled in");
        ids.push(job.id);
    }
    let got = client
        .get_job(pb::GetJobRequest { id: ids[0].clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.id, ids[0]);
    assert_eq!(got.spec.unwrap().method.unwrap().lora.unwrap().r, Some(8));

    // Pages of 2, newest first; the token round-trips until the end.
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let resp = client
            .list_jobs(pb::ListJobsRequest {
                page_size: 2,
                page_token: token.clone(),
                states: vec![pb::JobState::Queued as i32],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        listed.extend(resp.jobs.into_iter().map(|j| j.id));
        if resp.next_page_token.is_empty() {
            break;
        }
        token = resp.next_page_token;
        // A token used with other filters is refused.
        let err = client
            .list_jobs(pb::ListJobsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&err), vec!["page_token"]);
    }
    assert_eq!(pages, 3);
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(listed, expected);

    // Watch: replays the QUEUED creation event, then receives what the store records live.
    let id = ids[4].clone();
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            id: id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match first.kind {
        Some(pb::job_update::Kind::Event(e)) => {
            assert_eq!(e.kind, "created");
            assert_eq!(e.state(), pb::JobState::Queued);
        }
        other => panic!("first update {other:?}"),
    }
    let worker = h
        .store
        .register_worker("test-key", "w", "cpu", 1 << 30, "{}")
        .await
        .unwrap();
    let lease = h.store.claim_job(&worker).await.unwrap().unwrap();
    assert_eq!(lease.job.id, id, "highest priority first");
    let fence = Fence {
        job_id: &id,
        lease_token: &lease.lease_token,
    };
    let point = MetricInput {
        step: 1,
        values: [("loss".to_string(), 2.5)].into_iter().collect(),
        time: None,
    };
    h.store.record_metrics(fence, &[point]).await.unwrap();
    h.store
        .complete_job(fence, tuna_server::domain::Outcome::Succeeded)
        .await
        .unwrap();
    let mut rest = Vec::new();
    while let Some(u) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the watch must end after the terminal event")
    {
        rest.push(u.unwrap());
    }
    let seqs: Vec<i64> = std::iter::once(first.seq)
        .chain(rest.iter().map(|u| u.seq))
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "contiguous seq"
    );
    assert!(rest.iter().any(|u| matches!(&u.kind,
        Some(pb::job_update::Kind::Metrics(m)) if m.values.get("loss") == Some(&2.5))));
    assert!(rest.iter().any(|u| matches!(&u.kind,
        Some(pb::job_update::Kind::Event(e)) if e.state() == pb::JobState::Succeeded)));

    // Resuming from the middle replays only what came after.
    let mid = seqs[1];
    let replay: Vec<_> = client
        .watch_job(pb::WatchJobRequest {
            id: id.clone(),
            after_seq: mid,
        })
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(replay.first().map(|u| u.seq), Some(mid + 1));
    assert_eq!(replay.len() as i64, *seqs.last().unwrap() - mid);
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn same_request_id_over_grpc_returns_the_first_job(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let mut client = jobs(&h.channel);
    let req = pb::CreateJobRequest {
        spec: Some(proto_spec(0, 0)),
        request_id: "ci-build-42".into(),
    };
    let a = client.create_job(req.clone()).await.unwrap().into_inner();
    let b = client.create_job(req).await.unwrap().into_inner();
    assert_eq!(a.id, b.id);
    let err = client
        .create_job(pb::CreateJobRequest {
            spec: Some(proto_spec(7, 0)),
            request_id: "ci-build-42".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn upload_with_wrong_sha256_fails_and_leaves_nothing(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let body = b"{\"text\":\"hello\"}\n{\"text\":\"world\"}\n";
    let mut hd = header("train.jsonl", body);
    hd.sha256 = hex::encode(Sha256::digest(b"something else"));
    let err = files(&h.channel)
        .upload(tokio_stream::iter(upload_messages(hd, body, 7)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    assert!(
        err.message().contains("sha256 mismatch"),
        "{}",
        err.message()
    );
    assert_nothing_stored(&h).await;

    // The same bytes with the right digest are accepted.
    let ok = files(&h.channel)
        .upload(tokio_stream::iter(upload_messages(
            header("train.jsonl", body),
            body,
            7,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.line_count, 2);
    assert_eq!(ok.format(), pb::DatasetFormat::Text);
    assert!(h.blobs.exists(&format!("files/{}", ok.id)).await.unwrap());
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn oversize_uploads_are_refused_and_leave_nothing(pool: sqlx::PgPool) {
    let limits = Limits {
        max_upload_bytes: 64,
        ..Limits::default()
    };
    let h = harness_with(pool, limits, Config::default()).await;
    let body = "{\"text\":\"0123456789\"}\n".repeat(10);
    // Declared over the limit: refused from the header.
    let err = files(&h.channel)
        .upload(tokio_stream::iter(upload_messages(
            header("big.jsonl", body.as_bytes()),
            body.as_bytes(),
            16,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), vec!["header.size_bytes"]);
    assert!(
        err.message().contains("exceeds the maximum upload size"),
        "{}",
        err.message()
    );
    // Declared small, but more bytes arrive: refused while streaming.
    let mut lying = header("big.jsonl", body.as_bytes());
    lying.size_bytes = 40;
    let err = files(&h.channel)
        .upload(tokio_stream::iter(upload_messages(
            lying,
            body.as_bytes(),
            16,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("more than the declared"),
        "{}",
        err.message()
    );
    assert_nothing_stored(&h).await;
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn jsonl_with_a_bad_line_3_is_refused_naming_the_line(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let body = b"{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\":\"c\",\"completion\":\"d\"}\n{\"prompt\":\"e\"}\n{\"prompt\":\"f\",\"completion\":\"g\"}\n";
    let err = files(&h.channel)
        .upload(tokio_stream::iter(upload_messages(
            header("bad.jsonl", body),
            body,
            5,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("line 3"), "{}", err.message());
    assert!(err.message().contains("completion"), "{}", err.message());
    assert_nothing_stored(&h).await;
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn bad_requests_are_invalid_argument_naming_the_field(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let mut client = jobs(&h.channel);
    let cases: Vec<(&str, pb::JobSpec)> = vec![
        ("spec.base_model", {
            let mut s = proto_spec(0, 0);
            s.base_model = String::new();
            s
        }),
        ("spec.hyperparameters.learning_rate", {
            let mut s = proto_spec(0, 0);
            s.hyperparameters = Some(pb::Hyperparameters {
                learning_rate: Some(-0.001),
                ..Default::default()
            });
            s
        }),
        ("spec.method.lora.r", {
            let mut s = proto_spec(0, 0);
            s.method.as_mut().unwrap().lora = Some(pb::LoraParams {
                r: Some(0),
                ..Default::default()
            });
            s
        }),
        ("spec.method.type", {
            let mut s = proto_spec(0, 0);
            s.method.as_mut().unwrap().r#type = "qlora-ultra".into();
            s
        }),
    ];
    for (field, spec) in cases {
        let err = client
            .create_job(pb::CreateJobRequest {
                spec: Some(spec),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert_eq!(
            bad_fields(&err),
            vec![field.to_string()],
            "{}",
            err.message()
        );
        assert!(err.message().contains(field), "{}", err.message());
    }
    for (field, file, message) in [
        (
            "spec.training_file",
            "file_0123456789abcdef0123456789abcdef",
            "does not exist",
        ),
        ("spec.training_file", "train.jsonl", "not a valid id"),
    ] {
        let mut spec = proto_spec(0, 0);
        spec.training_file = file.into();
        let err = client
            .create_job(pb::CreateJobRequest {
                spec: Some(spec),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&err), vec![field.to_string()]);
        assert!(err.message().contains(message), "{}", err.message());
    }
    let err = client
        .list_jobs(pb::ListJobsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), vec!["page_size"]);
    let err = client
        .get_job(pb::GetJobRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .get_job(pb::GetJobRequest {
            id: "job_00000000000000000000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Nothing was stored by the refused creates.
    let all = client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.jobs.is_empty());
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn disallowed_transitions_are_failed_precondition(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let mut client = jobs(&h.channel);
    let job = create(&h.channel, 0).await;
    let err = client
        .resume_job(pb::ResumeJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let paused = client
        .pause_job(pb::PauseJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.state(), pb::JobState::Paused);
    let resumed = client
        .resume_job(pb::ResumeJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.state(), pb::JobState::Queued);
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn worker_flow_with_fencing_and_artifact_round_trip(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let mut w = WorkerServiceClient::new(h.channel.clone());
    let job = create(&h.channel, 0).await;
    let reg = w
        .register_worker(register_request("gpu-0"))
        .await
        .unwrap()
        .into_inner();
    assert!(reg.heartbeat_interval_ms < reg.lease_duration_ms);
    let lease = w
        .acquire_job(pb::AcquireJobRequest {
            worker_id: reg.worker_id.clone(),
            wait_ms: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!((lease.job_id.as_str(), lease.attempt), (job.id.as_str(), 1));

    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let sha = hex::encode(Sha256::digest(&body));
    let mut msgs = vec![pb::UploadArtifactRequest {
        data: Some(pb::upload_artifact_request::Data::Header(
            pb::UploadArtifactHeader {
                job_id: job.id.clone(),
                lease_token: lease.lease_token.clone(),
                kind: pb::ArtifactKind::Adapter as i32,
                step: 10,
                name: "adapter.tar".into(),
                size_bytes: body.len() as i64,
                sha256: sha.clone(),
            },
        )),
    }];
    msgs.extend(
        body.chunks(tuna_proto::CHUNK_SIZE)
            .map(|c| pb::UploadArtifactRequest {
                data: Some(pb::upload_artifact_request::Data::Chunk(c.to_vec())),
            }),
    );
    let art = w
        .upload_artifact(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(art.sha256, sha);

    let mut download = ArtifactServiceClient::new(h.channel.clone())
        .download(pb::DownloadRequest {
            artifact_id: art.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let mut meta = None;
    while let Some(m) = download.next().await {
        match m.unwrap().data {
            Some(pb::download_response::Data::Artifact(a)) => meta = Some(a),
            Some(pb::download_response::Data::Chunk(c)) => {
                assert!(c.len() <= tuna_proto::CHUNK_SIZE);
                got.extend(c);
            }
            None => {}
        }
    }
    assert_eq!(meta.unwrap().sha256, sha);
    assert_eq!(hex::encode(Sha256::digest(&got)), sha);

    let done = w
        .complete_job(pb::CompleteJobRequest {
            job_id: job.id.clone(),
            lease_token: lease.lease_token.clone(),
            outcome: pb::Outcome::Succeeded as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state(), pb::JobState::Succeeded);
    // The lease is gone: every further write is fenced off.
    let err = w
        .heartbeat(pb::HeartbeatRequest {
            job_id: job.id.clone(),
            lease_token: lease.lease_token.clone(),
            step: 11,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.get_details_error_info().map(|i| i.reason),
        Some("LEASE_LOST".to_string())
    );
    let err = w
        .report_metrics(pb::ReportMetricsRequest {
            job_id: job.id.clone(),
            lease_token: lease.lease_token.clone(),
            points: vec![pb::MetricPoint {
                step: 12,
                values: [("loss".to_string(), 1.0)].into_iter().collect(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn acquire_long_poll_wakes_when_a_job_is_created(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let mut w = WorkerServiceClient::new(h.channel.clone());
    let reg = w
        .register_worker(register_request("w"))
        .await
        .unwrap()
        .into_inner();
    let worker_id = reg.worker_id.clone();
    let waiting = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let lease = w
            .acquire_job(pb::AcquireJobRequest {
                worker_id,
                wait_ms: 20_000,
            })
            .await
            .unwrap()
            .into_inner()
            .lease;
        (lease, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = create(&h.channel, 0).await;
    let (lease, waited) = waiting.await.unwrap();
    assert_eq!(lease.unwrap().job_id, job.id);
    assert!(
        waited < Duration::from_secs(10),
        "woken by the create, not the timeout"
    );
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn worker_service_requires_the_worker_token_when_configured(pool: sqlx::PgPool) {
    let mut config = Config::default();
    config.api.worker_token = "s3cret".into();
    let h = harness_with(pool, Limits::default(), config).await;
    let mut w = WorkerServiceClient::new(h.channel.clone());
    let req = || register_request("w");
    let err = w.register_worker(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut authed = tonic::Request::new(req());
    authed
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    w.register_worker(authed).await.unwrap();
    // Client services stay open (no API key configured).
    jobs(&h.channel)
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap();
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn health_is_serving_and_reflection_lists_the_tuna_services(pool: sqlx::PgPool) {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let h = harness(pool).await;
    let mut health = HealthClient::new(h.channel.clone());
    for service in ["", "tuna.v1.JobService", "tuna.v1.WorkerService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let mut reflection = ServerReflectionClient::new(h.channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection reply {msg:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "tuna.v1.JobService",
        "tuna.v1.FileService",
        "tuna.v1.ArtifactService",
        "tuna.v1.WorkerService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&s.to_string()), "{s} missing from {names:?}");
    }
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn jobs_naming_unknown_models_fail_at_acquire_as_user_errors_without_retry(
    pool: sqlx::PgPool,
) {
    let h = harness(pool).await;
    let mut unknown = proto_spec(5, 3);
    unknown.base_model = "no-such-model".into();
    let doomed = jobs(&h.channel)
        .create_job(pb::CreateJobRequest {
            spec: Some(unknown),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let runnable = create(&h.channel, 0).await;
    let mut w = WorkerServiceClient::new(h.channel.clone());
    let reg = w
        .register_worker(register_request("w"))
        .await
        .unwrap()
        .into_inner();
    let lease = w
        .acquire_job(pb::AcquireJobRequest {
            worker_id: reg.worker_id.clone(),
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .expect("the runnable job is handed out");
    assert_eq!(
        lease.job_id, runnable.id,
        "the higher-priority doomed job is skipped"
    );
    let model = lease.model.expect("the lease carries the model");
    assert_eq!(model.name, support::MODEL_NAME);
    assert_eq!(model.files.len(), 2);
    assert_eq!(lease.training_file.unwrap().id, support::DATASET_ID);

    let doomed = h.store.get_job(&doomed.id).await.unwrap();
    assert_eq!(doomed.state, tuna_server::domain::JobState::Failed);
    assert_eq!(doomed.attempt, 1, "no retry");
    let (kind, message) = doomed.failure.unwrap();
    assert_eq!(kind, tuna_server::domain::FailureKind::User);
    assert!(message.contains("no-such-model"), "{message}");
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn models_register_from_uploaded_files_and_files_download_verified(pool: sqlx::PgPool) {
    use tuna_proto::v1::model_service_client::ModelServiceClient;
    let h = harness(pool).await;
    let config = upload_model_file(&h, "config.json", b"{\"hidden_size\": 8}").await;
    let weights = upload_model_file(&h, "model.safetensors", b"not really weights").await;
    let mut models = ModelServiceClient::new(h.channel.clone());
    let file = |path: &str, id: &str| pb::ModelFile {
        path: path.into(),
        file_id: id.into(),
        ..Default::default()
    };
    // Not a loadable layout: no weights.
    let err = models
        .register_model(pb::RegisterModelRequest {
            name: "mini".into(),
            format: pb::ModelFormat::Hf as i32,
            files: vec![file("config.json", &config.id)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), vec!["files"]);
    // A dataset is not a model file.
    let err = models
        .register_model(pb::RegisterModelRequest {
            name: "mini".into(),
            format: pb::ModelFormat::Hf as i32,
            files: vec![
                file("config.json", &config.id),
                file("model.safetensors", support::DATASET_ID),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), vec!["files[1].file_id"]);
    let err = models
        .register_model(pb::RegisterModelRequest {
            name: "Bad Name".into(),
            format: pb::ModelFormat::Hf as i32,
            files: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), vec!["name"]);
    let model = models
        .register_model(pb::RegisterModelRequest {
            name: "mini".into(),
            format: pb::ModelFormat::Hf as i32,
            files: vec![
                file("config.json", &config.id),
                file("model.safetensors", &weights.id),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.files[1].sha256, weights.sha256);
    let err = models
        .register_model(pb::RegisterModelRequest {
            name: "mini".into(),
            format: pb::ModelFormat::Hf as i32,
            files: vec![
                file("config.json", &config.id),
                file("model.safetensors", &weights.id),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // Files of a registered model cannot be deleted.
    let err = files(&h.channel)
        .delete_file(pb::DeleteFileRequest {
            id: weights.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("registered model mini"),
        "{}",
        err.message()
    );

    let mut stream = files(&h.channel)
        .download(pb::DownloadFileRequest {
            id: weights.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut body = Vec::new();
    let mut meta = None;
    while let Some(m) = stream.next().await {
        match m.unwrap().data {
            Some(pb::download_file_response::Data::File(f)) => meta = Some(f),
            Some(pb::download_file_response::Data::Chunk(c)) => body.extend(c),
            None => {}
        }
    }
    assert_eq!(body, b"not really weights");
    assert_eq!(meta.unwrap().sha256, weights.sha256);
    h.stop().await;
}

/// Streams a DownloadInput answer; the header's id and the bytes.
async fn download_input(
    w: &mut WorkerServiceClient<Channel>,
    job_id: &str,
    token: &str,
    input: pb::download_input_request::Input,
) -> Result<(String, Vec<u8>), tonic::Status> {
    let mut stream = w
        .download_input(pb::DownloadInputRequest {
            job_id: job_id.into(),
            lease_token: token.into(),
            input: Some(input),
        })
        .await?
        .into_inner();
    let (mut id, mut bytes) = (String::new(), Vec::new());
    while let Some(m) = stream.next().await {
        match m?.data {
            Some(pb::download_input_response::Data::File(f)) => id = f.id,
            Some(pb::download_input_response::Data::Artifact(a)) => id = a.id,
            Some(pb::download_input_response::Data::Chunk(c)) => bytes.extend(c),
            None => {}
        }
    }
    Ok((id, bytes))
}

#[sqlx::test(migrations = false)]
async fn a_worker_downloads_only_the_inputs_of_the_lease_it_holds(pool: sqlx::PgPool) {
    use pb::download_input_request::Input;
    let h = harness(pool).await;
    // The harness registers rows for the dataset and the model; give them bytes.
    for id in [support::DATASET_ID, support::MODEL_WEIGHTS_ID] {
        let key = h.store.get_file(id).await.unwrap().blob_key;
        let mut writer = h.blobs.begin(&key).await.unwrap();
        writer.write(id.as_bytes()).await.unwrap();
        writer.finish().await.unwrap();
    }
    let outside = upload_model_file(&h, "other.bin", b"not this job's").await;
    let mut w = WorkerServiceClient::new(h.channel.clone());
    let job = create(&h.channel, 0).await;
    let reg = w
        .register_worker(register_request("w"))
        .await
        .unwrap()
        .into_inner();
    let lease = w
        .acquire_job(pb::AcquireJobRequest {
            worker_id: reg.worker_id,
            wait_ms: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    let token = lease.lease_token.clone();

    // Its training file and its model's files come through the lease, worker token only.
    for id in [support::DATASET_ID, support::MODEL_WEIGHTS_ID] {
        let (got, bytes) = download_input(&mut w, &job.id, &token, Input::FileId(id.into()))
            .await
            .unwrap();
        assert_eq!((got.as_str(), bytes.as_slice()), (id, id.as_bytes()));
    }
    // Another file exists but is not an input of this lease: NOT_FOUND, as if it did not.
    let err = download_input(&mut w, &job.id, &token, Input::FileId(outside.id.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // A wrong token is a lost lease.
    let err = download_input(
        &mut w,
        &job.id,
        "stolen",
        Input::FileId(support::DATASET_ID.into()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // Its own checkpoint comes back; once the attempt ended nothing does.
    let body = b"checkpoint bytes".to_vec();
    let art = w
        .upload_artifact(tokio_stream::iter(vec![
            pb::UploadArtifactRequest {
                data: Some(pb::upload_artifact_request::Data::Header(
                    pb::UploadArtifactHeader {
                        job_id: job.id.clone(),
                        lease_token: token.clone(),
                        kind: pb::ArtifactKind::Checkpoint as i32,
                        step: 1,
                        name: "ckpt.tar".into(),
                        size_bytes: body.len() as i64,
                        sha256: hex::encode(Sha256::digest(&body)),
                    },
                )),
            },
            pb::UploadArtifactRequest {
                data: Some(pb::upload_artifact_request::Data::Chunk(body.clone())),
            },
        ]))
        .await
        .unwrap()
        .into_inner();
    let (got, bytes) = download_input(&mut w, &job.id, &token, Input::ArtifactId(art.id.clone()))
        .await
        .unwrap();
    assert_eq!((got, bytes), (art.id.clone(), body));
    // The worker gives the job back: the attempt ends (a success would need an adapter).
    w.complete_job(pb::CompleteJobRequest {
        job_id: job.id.clone(),
        lease_token: token.clone(),
        outcome: pb::Outcome::Released as i32,
    })
    .await
    .unwrap();
    let err = download_input(
        &mut w,
        &job.id,
        &token,
        Input::FileId(support::DATASET_ID.into()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    h.stop().await;
}

#[sqlx::test(migrations = "../migrations/postgres")]
async fn workers_report_their_device_name_and_free_memory(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let mut w = WorkerServiceClient::new(h.channel.clone());
    let mut req = register_request("gpu-host");
    if let Some(c) = req.capabilities.as_mut() {
        c.device = "cuda".into();
        c.device_name = "NVIDIA H200".into();
        c.memory_bytes = 150_000_000_000;
        c.free_memory_bytes = 149_000_000_000;
    }
    let id = w
        .register_worker(req.clone())
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let mut fleet =
        tuna_proto::v1::fleet_service_client::FleetServiceClient::new(h.channel.clone());
    let workers = fleet
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    let me = workers.iter().find(|x| x.id == id).unwrap();
    assert_eq!(
        (me.device.as_str(), me.device_name.as_str()),
        ("cuda", "NVIDIA H200")
    );
    assert_eq!(
        (me.memory_bytes, me.free_memory_bytes),
        (150_000_000_000, 149_000_000_000)
    );
    // Hostile values are refused naming the field.
    for (field, edit) in [
        (
            "capabilities.device_name",
            Box::new(|c: &mut pb::WorkerCapabilities| c.device_name = "x".repeat(129))
                as Box<dyn Fn(&mut pb::WorkerCapabilities)>,
        ),
        (
            "capabilities.free_memory_bytes",
            Box::new(|c: &mut pb::WorkerCapabilities| c.free_memory_bytes = -1),
        ),
    ] {
        let mut bad = req.clone();
        if let Some(c) = bad.capabilities.as_mut() {
            edit(c);
        }
        let err = w.register_worker(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&err), [field]);
    }
}
