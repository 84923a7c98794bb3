//! The edge stack and error hygiene over loopback gRPC: authentication by path, the unary
//! deadline (and its exemptions), the concurrency cap, and INTERNAL errors that carry a
//! correlation id instead of database or file-system text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tuna_proto::v1 as pb;
use tuna_proto::v1::file_service_client::FileServiceClient;
use tuna_proto::v1::job_service_client::JobServiceClient;
use tuna_proto::v1::model_service_client::ModelServiceClient;
use tuna_proto::v1::worker_service_client::WorkerServiceClient;
use tuna_server::api::Limits;
use tuna_server::config::Config;
use tuna_server::error::CORRELATION_ID_KEY;

use support::grpc::Harness;
use support::proto_spec;

async fn harness(pool: sqlx::PgPool, config: Config) -> Harness {
    let store = tuna_server::store::postgres::PgStore::from_pool(
        pool,
        support::policy(),
        std::sync::Arc::new(tuna_server::store::SystemClock),
    )
    .await
    .unwrap();
    Harness::start(std::sync::Arc::new(store), Limits::default(), config).await
}

fn jobs(ch: &Channel) -> JobServiceClient<Channel> {
    JobServiceClient::new(ch.clone())
}

async fn create(ch: &Channel) -> pb::Job {
    jobs(ch)
        .create_job(pb::CreateJobRequest {
            spec: Some(proto_spec(0, 0)),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn with_auth<T>(msg: T, value: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", value.parse().unwrap());
    req
}

/// Asserts `status` is INTERNAL with only a well-formed correlation id, also in the metadata.
fn assert_sanitized_internal(status: &tonic::Status, leaks: &[&str]) {
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let message = status.message();
    let id = status
        .metadata()
        .get(CORRELATION_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .expect("the correlation id in the metadata");
    assert_eq!(message, format!("internal error (correlation id {id})"));
    let hex = id.strip_prefix("err_").expect("err_ prefix");
    assert!(
        hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    for leak in leaks {
        assert!(
            !message.to_lowercase().contains(&leak.to_lowercase()),
            "{leak:?} leaked into {message:?}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn database_failures_reach_clients_as_a_correlation_id_only(pool: sqlx::PgPool) {
    let h = harness(pool.clone(), Config::default()).await;
    let job = create(&h.channel).await;
    // Break the schema under the running server: every query on jobs now fails in SQL.
    sqlx::query("ALTER TABLE jobs RENAME TO jobs_elsewhere")
        .execute(&pool)
        .await
        .unwrap();
    let err = jobs(&h.channel)
        .get_job(pb::GetJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_sanitized_internal(
        &err,
        &["jobs", "does not exist", "sql", "database", "select"],
    );
    // Two failures, two ids: each one finds its own log line.
    let again = jobs(&h.channel)
        .get_job(pb::GetJobRequest { id: job.id })
        .await
        .unwrap_err();
    assert_ne!(again.message(), err.message());
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn blob_store_failures_reach_clients_as_a_correlation_id_only(pool: sqlx::PgPool) {
    let h = harness(pool, Config::default()).await;
    // The blob directory becomes a plain file: every write under it fails in the file system.
    std::fs::remove_dir_all(&h.blob_dir).unwrap();
    std::fs::write(&h.blob_dir, b"not a directory").unwrap();
    let body = b"{\"text\": \"hello\"}\n";
    let header = pb::UploadFileHeader {
        name: "train.jsonl".into(),
        purpose: pb::FilePurpose::Dataset as i32,
        size_bytes: body.len() as i64,
        sha256: hex::encode(Sha256::digest(body)),
        format: 0,
    };
    let messages = vec![
        pb::UploadFileRequest {
            data: Some(pb::upload_file_request::Data::Header(header)),
        },
        pb::UploadFileRequest {
            data: Some(pb::upload_file_request::Data::Chunk(body.to_vec())),
        },
    ];
    let err = FileServiceClient::new(h.channel.clone())
        .upload(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    let dir = h.blob_dir.display().to_string();
    assert_sanitized_internal(&err, &[&dir, "blobs", "directory", "tmp/", "os error"]);
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn each_service_needs_its_own_token_and_health_needs_none(pool: sqlx::PgPool) {
    let mut config = Config::default();
    config.api.api_key = "client-key".into();
    config.api.worker_token = "worker-token".into();
    let h = harness(pool, config).await;
    let list = || pb::ListJobsRequest::default();

    let err = jobs(&h.channel).list_jobs(list()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        jobs(&h.channel)
            .list_jobs(with_auth(list(), &format!("{scheme} client-key")))
            .await
            .unwrap();
    }
    // The worker token opens only WorkerService, the API key only the client services: the
    // other credential is known but not allowed there.
    let err = jobs(&h.channel)
        .list_jobs(with_auth(list(), "Bearer worker-token"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut w = WorkerServiceClient::new(h.channel.clone());
    let register = || pb::RegisterWorkerRequest {
        name: "w".into(),
        capabilities: Some(pb::WorkerCapabilities {
            device: "cpu".into(),
            memory_bytes: 1 << 30,
            ..Default::default()
        }),
    };
    let err = w
        .register_worker(with_auth(register(), "Bearer client-key"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    w.register_worker(with_auth(register(), "bearer worker-token"))
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn unary_calls_have_a_deadline_but_streams_and_long_polls_do_not(pool: sqlx::PgPool) {
    let mut config = Config::default();
    config.api.unary_timeout_ms = 300;
    let h = harness(pool.clone(), config).await;
    let job = create(&h.channel).await;

    // A watch outlives the unary deadline and still sees the job's next change.
    let mut watch = jobs(&h.channel)
        .watch_job(pb::WatchJobRequest {
            id: job.id.clone(),
            after_seq: job.last_seq,
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(700)).await;
    jobs(&h.channel)
        .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap();
    let update = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap();
    assert!(update.unwrap().is_ok());

    // A long-poll may wait longer than the unary deadline.
    let mut w = WorkerServiceClient::new(h.channel.clone());
    let worker_id = w
        .register_worker(pb::RegisterWorkerRequest {
            name: "w".into(),
            capabilities: Some(pb::WorkerCapabilities {
                device: "cpu".into(),
                memory_bytes: 1 << 30,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let started = std::time::Instant::now();
    let reply = w
        .acquire_job(pb::AcquireJobRequest {
            worker_id,
            wait_ms: 1_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.lease.is_none());
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A unary call stuck behind a lock is cut at the deadline.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = jobs(&h.channel)
        .get_job(pb::GetJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    tx.rollback().await.unwrap();
    jobs(&h.channel)
        .get_job(pb::GetJobRequest { id: job.id })
        .await
        .unwrap();
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn calls_beyond_the_concurrency_limit_wait_for_a_slot(pool: sqlx::PgPool) {
    let mut config = Config::default();
    config.api.concurrency_limit = 1;
    config.api.unary_timeout_ms = 500;
    let h = harness(pool.clone(), config).await;
    let job = create(&h.channel).await;

    // A watch's opening read blocks on the lock and holds the only slot (streams have no
    // deadline).
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let ch = h.channel.clone();
    let id = job.id.clone();
    let holder = tokio::spawn(async move {
        jobs(&ch)
            .watch_job(pb::WatchJobRequest { id, after_seq: 0 })
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A call that touches nothing locked still waits for the slot, until its deadline.
    let err = ModelServiceClient::new(h.channel.clone())
        .list_models(pb::ListModelsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // Health checks bypass the cap.
    tonic_health::pb::health_client::HealthClient::new(h.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();

    tx.rollback().await.unwrap();
    holder.await.unwrap().unwrap();
    ModelServiceClient::new(h.channel.clone())
        .list_models(pb::ListModelsRequest::default())
        .await
        .unwrap();
    h.stop().await;
}

/// Serves `config` on a listener bound to every interface (reached over loopback only).
async fn serve_public(
    config: &Config,
) -> Result<(std::net::SocketAddr, tokio::sync::oneshot::Sender<()>), String> {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = support::sqlite_store(&dir).await;
    let blobs = tuna_server::blobs::Blobs::local(&dir.path().join("blobs")).unwrap();
    let plane = tuna_server::serve::ControlPlane::new(store, blobs, Limits::default(), config);
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _dir = dir;
        plane
            .serve_on(listener, async {
                let _ = stopped.await;
            })
            .await
    });
    // A refusal ends the task at once; a server keeps running.
    match tokio::time::timeout(Duration::from_millis(500), task).await {
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(other) => panic!("the server ended without an error: {other:?}"),
        Err(_) => Ok((([127, 0, 0, 1], port).into(), stop)),
    }
}

#[tokio::test]
async fn a_server_on_a_public_address_refuses_to_start_without_credentials() {
    let with = |key: &str, token: &str, insecure: bool| {
        let mut c = Config::default();
        c.api.api_key = key.into();
        c.api.worker_token = token.into();
        c.api.insecure = insecure;
        c
    };
    for (key, token, missing) in [
        ("", "", "API key and worker token and TLS"),
        ("k3y", "", "worker token and TLS"),
        ("", "t0ken", "API key and TLS"),
        // Whitespace is no secret: no bearer header can carry it.
        ("  ", "t0ken", "API key and TLS"),
        // Both secrets, but they would cross the network in clear.
        ("k3y", "t0ken", "TLS"),
    ] {
        let err = serve_public(&with(key, token, false)).await.unwrap_err();
        assert!(
            err.contains(&format!("without {missing}:")) && err.contains("--insecure"),
            "{key:?}/{token:?}: {err}"
        );
    }
    // Both secrets with TLS ended in front (--insecure): it serves, and checks them.
    let (addr, stop) = serve_public(&with("k3y", "t0ken", true)).await.unwrap();
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = jobs(&ch)
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    jobs(&ch)
        .list_jobs(with_auth(pb::ListJobsRequest::default(), "Bearer k3y"))
        .await
        .unwrap();
    let _ = stop.send(());
    // --insecure asks for an open server on purpose.
    let (addr, stop) = serve_public(&with("", "", true)).await.unwrap();
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    jobs(&ch)
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap();
    let _ = stop.send(());
}

/// A message whose field 1 is a varint where `GetJobRequest.id` is a string: bytes that do
/// not decode as the request.
#[derive(Clone, PartialEq, prost::Message)]
struct Undecodable {
    #[prost(uint64, tag = "1")]
    id: u64,
}

#[sqlx::test(migrations = false)]
async fn a_malformed_protobuf_request_is_invalid_argument_not_internal(pool: sqlx::PgPool) {
    let h = harness(pool, Config::default()).await;
    let mut grpc = tonic::client::Grpc::new(h.channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/tuna.v1.JobService/GetJob");
    let err = grpc
        .unary::<Undecodable, pb::Job, _>(
            tonic::Request::new(Undecodable { id: 7 }),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("decode"), "{}", err.message());
    // The server is fine afterwards.
    create(&h.channel).await;
    h.stop().await;
}
