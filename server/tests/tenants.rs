//! Tenants and API keys over loopback gRPC: every resource belongs to the tenant of the key
//! that created it, another tenant's ids answer exactly like missing ones (NOT_FOUND), keys
//! are stored only as digests and a revocation holds on the next call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;
use tuna_proto::v1 as pb;
use tuna_proto::v1::admin_service_client::AdminServiceClient;
use tuna_proto::v1::artifact_service_client::ArtifactServiceClient;
use tuna_proto::v1::file_service_client::FileServiceClient;
use tuna_proto::v1::job_service_client::JobServiceClient;
use tuna_proto::v1::model_service_client::ModelServiceClient;
use tuna_proto::v1::sweep_service_client::SweepServiceClient;
use tuna_proto::v1::worker_service_client::WorkerServiceClient;
use tuna_server::api::Limits;
use tuna_server::config::Config;
use tuna_server::domain::ArtifactKind;
use tuna_server::store::{Fence, NewArtifact};

use support::grpc::Harness;
use support::{DATASET_ID, MODEL_NAME, proto_spec};

const ROOT: &str = "root-secret";

fn req<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

async fn harness(pool: sqlx::PgPool) -> Harness {
    harness_with(pool, Limits::default(), Config::default()).await
}

/// A server whose configured API key is [`ROOT`] (the `default` tenant's admin).
async fn harness_with(pool: sqlx::PgPool, limits: Limits, mut config: Config) -> Harness {
    let store = tuna_server::store::postgres::PgStore::from_pool(
        pool,
        support::policy(),
        std::sync::Arc::new(tuna_server::store::SystemClock),
    )
    .await
    .unwrap();
    config.api.api_key = ROOT.into();
    config.api.worker_token = "fleet-token".into();
    Harness::start(std::sync::Arc::new(store), limits, config).await
}

async fn new_key(ch: &Channel, tenant: &str, role: pb::ApiKeyRole) -> (String, pb::ApiKey) {
    let r = AdminServiceClient::new(ch.clone())
        .create_api_key(req(
            pb::CreateApiKeyRequest {
                tenant: tenant.into(),
                role: role as i32,
                name: format!("{tenant} test key"),
            },
            ROOT,
        ))
        .await
        .unwrap()
        .into_inner();
    (r.secret, r.key.unwrap())
}

async fn upload(
    ch: &Channel,
    key: &str,
    name: &str,
    body: &[u8],
    purpose: pb::FilePurpose,
) -> pb::File {
    let header = pb::UploadFileHeader {
        name: name.into(),
        purpose: purpose as i32,
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
    FileServiceClient::new(ch.clone())
        .upload(req(tokio_stream::iter(messages), key))
        .await
        .unwrap()
        .into_inner()
}

fn sweep_spec() -> pb::SweepSpec {
    pb::SweepSpec {
        parameters: vec![pb::Parameter {
            name: "hyperparameters.learning_rate".into(),
            scale: "log".into(),
            min: 1e-4,
            max: 1e-1,
            ..Default::default()
        }],
        objective: Some(pb::Objective {
            metric: "loss".into(),
            direction: 0,
        }),
        algorithm: Some(pb::Algorithm {
            name: "random".into(),
            ..Default::default()
        }),
        max_trials: Some(2),
        parallelism: Some(1),
        template: Some(proto_spec(0, 0)),
        seed: 1,
        ..Default::default()
    }
}

fn assert_not_found<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    match r {
        Err(s) => assert_eq!(s.code(), Code::NotFound, "{what}: {s:?}"),
        Ok(v) => panic!("{what}: another tenant's resource answered {v:?}"),
    }
}

#[sqlx::test(migrations = false)]
async fn one_tenant_cannot_reach_another_tenants_jobs_files_models_artifacts_or_sweeps(
    pool: sqlx::PgPool,
) {
    let h = harness(pool).await;
    let ch = &h.channel;
    // Tenant A is `default`: the harness registered its dataset and model there.
    let (a, _) = new_key(ch, "default", pb::ApiKeyRole::Client).await;
    let (b, _) = new_key(ch, "tenant-b", pb::ApiKeyRole::Client).await;

    let job = JobServiceClient::new(ch.clone())
        .create_job(req(
            pb::CreateJobRequest {
                spec: Some(proto_spec(0, 0)),
                request_id: "shared-request-id".into(),
            },
            &a,
        ))
        .await
        .unwrap()
        .into_inner();
    let sweep = SweepServiceClient::new(ch.clone())
        .create_sweep(req(
            pb::CreateSweepRequest {
                spec: Some(sweep_spec()),
                request_id: String::new(),
            },
            &a,
        ))
        .await
        .unwrap()
        .into_inner();
    let a_file = upload(
        ch,
        &a,
        "a.jsonl",
        b"{\"text\":\"a\"}\n",
        pb::FilePurpose::Dataset,
    )
    .await;
    // An artifact of A's job, committed by the lease holder.
    let worker = support::worker(&h.store, "w").await;
    let lease = loop {
        let l = h.store.claim_job(&worker).await.unwrap().unwrap();
        if l.job.id == job.id {
            break l;
        }
    };
    let artifact = h
        .store
        .insert_artifact(
            Fence {
                job_id: &job.id,
                lease_token: &lease.lease_token,
            },
            &NewArtifact {
                id: "art_0000000000000000000000000000000a".into(),
                kind: ArtifactKind::Checkpoint,
                step: 1,
                name: "checkpoint-1.tar".into(),
                size_bytes: 1,
                sha256: "0".repeat(64),
                blob_key: "artifacts/x".into(),
            },
        )
        .await
        .unwrap();

    // B: every read, write and stream of A's ids answers NOT_FOUND.
    let mut jobs = JobServiceClient::new(ch.clone());
    let id = || job.id.clone();
    assert_not_found(
        "get job",
        jobs.get_job(req(pb::GetJobRequest { id: id() }, &b)).await,
    );
    assert_not_found(
        "watch job",
        jobs.watch_job(req(
            pb::WatchJobRequest {
                id: id(),
                after_seq: 0,
            },
            &b,
        ))
        .await,
    );
    assert_not_found(
        "cancel job",
        jobs.cancel_job(req(pb::CancelJobRequest { id: id() }, &b))
            .await,
    );
    assert_not_found(
        "pause job",
        jobs.pause_job(req(pb::PauseJobRequest { id: id() }, &b))
            .await,
    );
    assert_not_found(
        "resume job",
        jobs.resume_job(req(pb::ResumeJobRequest { id: id() }, &b))
            .await,
    );
    assert_not_found(
        "delete job",
        jobs.delete_job(req(pb::DeleteJobRequest { id: id() }, &b))
            .await,
    );
    assert_not_found(
        "job events",
        jobs.list_job_events(req(
            pb::ListJobEventsRequest {
                job_id: id(),
                ..Default::default()
            },
            &b,
        ))
        .await,
    );
    assert_not_found(
        "checkpoints",
        jobs.list_checkpoints(req(pb::ListCheckpointsRequest { job_id: id() }, &b))
            .await,
    );
    let mut files = FileServiceClient::new(ch.clone());
    for f in [a_file.id.clone(), DATASET_ID.to_string()] {
        assert_not_found(
            "get file",
            files
                .get_file(req(pb::GetFileRequest { id: f.clone() }, &b))
                .await,
        );
        assert_not_found(
            "download file",
            files
                .download(req(pb::DownloadFileRequest { id: f.clone() }, &b))
                .await,
        );
        assert_not_found(
            "delete file",
            files
                .delete_file(req(pb::DeleteFileRequest { id: f }, &b))
                .await,
        );
    }
    let mut models = ModelServiceClient::new(ch.clone());
    assert_not_found(
        "get model",
        models
            .get_model(req(
                pb::GetModelRequest {
                    name: MODEL_NAME.into(),
                },
                &b,
            ))
            .await,
    );
    assert_not_found(
        "delete model",
        models
            .delete_model(req(
                pb::DeleteModelRequest {
                    name: MODEL_NAME.into(),
                },
                &b,
            ))
            .await,
    );
    let mut artifacts = ArtifactServiceClient::new(ch.clone());
    assert_not_found(
        "get artifact",
        artifacts
            .get_artifact(req(
                pb::GetArtifactRequest {
                    id: artifact.id.clone(),
                },
                &b,
            ))
            .await,
    );
    assert_not_found(
        "download artifact",
        artifacts
            .download(req(
                pb::DownloadRequest {
                    artifact_id: artifact.id.clone(),
                },
                &b,
            ))
            .await,
    );
    assert_not_found(
        "list artifacts",
        artifacts
            .list_artifacts(req(
                pb::ListArtifactsRequest {
                    job_id: id(),
                    kind: 0,
                },
                &b,
            ))
            .await,
    );
    let mut sweeps = SweepServiceClient::new(ch.clone());
    let sid = || sweep.id.clone();
    assert_not_found(
        "get sweep",
        sweeps
            .get_sweep(req(pb::GetSweepRequest { id: sid() }, &b))
            .await,
    );
    assert_not_found(
        "sweep trials",
        sweeps
            .list_trials(req(pb::ListTrialsRequest { sweep_id: sid() }, &b))
            .await,
    );
    assert_not_found(
        "cancel sweep",
        sweeps
            .cancel_sweep(req(pb::CancelSweepRequest { id: sid() }, &b))
            .await,
    );
    assert_not_found(
        "watch sweep",
        sweeps
            .watch_sweep(req(pb::WatchSweepRequest { id: sid() }, &b))
            .await,
    );

    // B's listings are empty, and A's files cannot be named in B's jobs.
    let listed = jobs
        .list_jobs(req(pb::ListJobsRequest::default(), &b))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "{listed:?}");
    let listed = files
        .list_files(req(pb::ListFilesRequest::default(), &b))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.files.is_empty(), "{listed:?}");
    let listed = models
        .list_models(req(pb::ListModelsRequest::default(), &b))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.models.is_empty(), "{listed:?}");
    let listed = sweeps
        .list_sweeps(req(pb::ListSweepsRequest::default(), &b))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.sweeps.is_empty(), "{listed:?}");
    let err = jobs
        .create_job(req(
            pb::CreateJobRequest {
                spec: Some(proto_spec(0, 0)),
                request_id: String::new(),
            },
            &b,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("does not exist"), "{err:?}");

    // Names and idempotency keys are per tenant: B registers its own `tiny-llama` from its
    // own files, and reusing A's request id creates B's own job.
    let config = upload(ch, &b, "config.json", b"{}", pb::FilePurpose::Model).await;
    let weights = upload(ch, &b, "model.safetensors", b"\0", pb::FilePurpose::Model).await;
    let b_data = upload(
        ch,
        &b,
        "b.jsonl",
        b"{\"text\":\"b\"}\n",
        pb::FilePurpose::Dataset,
    )
    .await;
    models
        .register_model(req(
            pb::RegisterModelRequest {
                name: MODEL_NAME.into(),
                format: pb::ModelFormat::Hf as i32,
                files: vec![
                    pb::ModelFile {
                        path: "config.json".into(),
                        file_id: config.id.clone(),
                        ..Default::default()
                    },
                    pb::ModelFile {
                        path: "model.safetensors".into(),
                        file_id: weights.id.clone(),
                        ..Default::default()
                    },
                ],
            },
            &b,
        ))
        .await
        .unwrap();
    let mut spec = proto_spec(0, 0);
    spec.training_file = b_data.id.clone();
    let b_job = jobs
        .create_job(req(
            pb::CreateJobRequest {
                spec: Some(spec),
                request_id: "shared-request-id".into(),
            },
            &b,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(b_job.id, job.id);
    // ... and A, in turn, does not see B's.
    assert_not_found(
        "A gets B's job",
        jobs.get_job(req(
            pb::GetJobRequest {
                id: b_job.id.clone(),
            },
            &a,
        ))
        .await,
    );
    let a_models = models
        .list_models(req(pb::ListModelsRequest::default(), &a))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a_models.models.len(), 1);
    assert_eq!(a_models.models[0].files.len(), 2);
    assert!(
        a_models.models[0]
            .files
            .iter()
            .all(|f| f.file_id != config.id && f.file_id != weights.id)
    );
    // A still reaches everything of its own.
    jobs.get_job(req(pb::GetJobRequest { id: id() }, &a))
        .await
        .unwrap();
    artifacts
        .get_artifact(req(
            pb::GetArtifactRequest {
                id: artifact.id.clone(),
            },
            &a,
        ))
        .await
        .unwrap();
    sweeps
        .get_sweep(req(pb::GetSweepRequest { id: sid() }, &a))
        .await
        .unwrap();
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn keys_are_stored_as_digests_and_a_revoked_key_fails_on_its_next_call(pool: sqlx::PgPool) {
    let h = harness(pool.clone()).await;
    let ch = &h.channel;
    let (secret, key) = new_key(ch, "tenant-c", pb::ApiKeyRole::Client).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    jobs.list_jobs(req(pb::ListJobsRequest::default(), &secret))
        .await
        .unwrap();

    // Nothing in the table holds the secret; its digest is what is kept.
    let (_, secret_part) = secret.rsplit_once('_').unwrap();
    let rows: Vec<(String, String, String, String, String)> =
        sqlx::query_as("SELECT id, tenant, role, name, secret_sha256 FROM api_keys")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    for column in [&row.0, &row.1, &row.2, &row.3, &row.4] {
        assert!(
            !column.contains(secret_part),
            "secret stored in clear: {column}"
        );
    }
    assert_eq!(row.4, hex::encode(Sha256::digest(secret_part.as_bytes())));

    // A listing shows the key without any secret; a wrong secret for its id is refused.
    let listed = AdminServiceClient::new(ch.clone())
        .list_api_keys(req(pb::ListApiKeysRequest::default(), ROOT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys, vec![key.clone()]);
    let forged = format!("tuna_{}_{}", key.id, "0".repeat(64));
    let err = jobs
        .list_jobs(req(pb::ListJobsRequest::default(), &forged))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let revoked = AdminServiceClient::new(ch.clone())
        .revoke_api_key(req(pb::RevokeApiKeyRequest { id: key.id.clone() }, ROOT))
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked_at.is_some());
    let err = jobs
        .list_jobs(req(pb::ListJobsRequest::default(), &secret))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{err:?}");
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn each_role_reaches_only_its_services_and_a_worker_acts_only_as_itself(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let ch = &h.channel;
    let (client, _) = new_key(ch, "default", pb::ApiKeyRole::Client).await;
    let (w1, _) = new_key(ch, "default", pb::ApiKeyRole::Worker).await;
    let (w2, _) = new_key(ch, "default", pb::ApiKeyRole::Worker).await;
    let (admin, _) = new_key(ch, "default", pb::ApiKeyRole::Admin).await;

    let denied = |r: Result<tonic::Response<_>, tonic::Status>, what: &str| match r {
        Err(s) => assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}"),
        Ok(_) => panic!("{what} was allowed"),
    };
    let mut admin_api = AdminServiceClient::new(ch.clone());
    denied(
        admin_api
            .list_api_keys(req(pb::ListApiKeysRequest::default(), &client))
            .await
            .map(|r| r.map(drop)),
        "a client key managing keys",
    );
    denied(
        admin_api
            .list_api_keys(req(pb::ListApiKeysRequest::default(), &w1))
            .await
            .map(|r| r.map(drop)),
        "a worker key managing keys",
    );
    admin_api
        .list_api_keys(req(pb::ListApiKeysRequest::default(), &admin))
        .await
        .unwrap();
    let mut jobs = JobServiceClient::new(ch.clone());
    denied(
        jobs.list_jobs(req(pb::ListJobsRequest::default(), &w1))
            .await
            .map(|r| r.map(drop)),
        "a worker key listing jobs",
    );
    jobs.list_jobs(req(pb::ListJobsRequest::default(), &admin))
        .await
        .unwrap();

    let mut workers = WorkerServiceClient::new(ch.clone());
    let register = pb::RegisterWorkerRequest {
        name: "w1".into(),
        capabilities: Some(pb::WorkerCapabilities {
            device: "cpu".into(),
            memory_bytes: 1 << 30,
            ..Default::default()
        }),
    };
    denied(
        workers
            .register_worker(req(register.clone(), &client))
            .await
            .map(|r| r.map(drop)),
        "a client key registering a worker",
    );
    let worker_id = workers
        .register_worker(req(register, &w1))
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let acquire = || pb::AcquireJobRequest {
        worker_id: worker_id.clone(),
        wait_ms: 0,
    };
    denied(
        workers
            .acquire_job(req(acquire(), &w2))
            .await
            .map(|r| r.map(drop)),
        "another worker key acting as w1",
    );
    denied(
        workers
            .acquire_job(req(acquire(), "fleet-token"))
            .await
            .map(|r| r.map(drop)),
        "the shared worker token acting as w1",
    );
    workers.acquire_job(req(acquire(), &w1)).await.unwrap();
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn one_key_flooding_is_refused_while_another_keys_calls_go_on(pool: sqlx::PgPool) {
    let mut config = Config::default();
    config.api.rate_limit_per_key = 5;
    config.api.rate_limit_burst = 5;
    let h = harness_with(pool, Limits::default(), config).await;
    let (a, _) = new_key(&h.channel, "tenant-a", pb::ApiKeyRole::Client).await;
    let (b, _) = new_key(&h.channel, "tenant-b", pb::ApiKeyRole::Client).await;
    let mut jobs = JobServiceClient::new(h.channel.clone());
    let mut refused = 0;
    for i in 0..40 {
        match jobs
            .list_jobs(req(pb::ListJobsRequest::default(), &a))
            .await
        {
            Ok(_) => {}
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("api.rate_limit_per_key"), "{s:?}");
                assert!(s.metadata().get("retry-after").is_some());
                refused += 1;
            }
        }
        // B's calls interleave with the flood and are never refused.
        if i % 8 == 0 {
            jobs.list_jobs(req(pb::ListJobsRequest::default(), &b))
                .await
                .unwrap();
        }
    }
    // 40 calls in well under a second against a burst of 5 and 5/s.
    assert!(
        refused >= 25,
        "only {refused} of 40 flood calls were refused"
    );
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_tenant_past_its_quotas_is_refused_naming_the_limit_and_others_are_not(
    pool: sqlx::PgPool,
) {
    let limits = Limits {
        max_queued_jobs_per_tenant: 2,
        max_stored_bytes_per_tenant: 100,
        ..Limits::default()
    };
    let h = harness_with(pool, limits, Config::default()).await;
    let ch = &h.channel;
    let (a, _) = new_key(ch, "default", pb::ApiKeyRole::Client).await;
    let (b, _) = new_key(ch, "tenant-b", pb::ApiKeyRole::Client).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let create = |key: &str| {
        req(
            pb::CreateJobRequest {
                spec: Some(proto_spec(0, 0)),
                request_id: String::new(),
            },
            key,
        )
    };
    // The harness's fixture files (3 bytes) count toward `default`.
    for _ in 0..2 {
        jobs.create_job(create(&a)).await.unwrap();
    }
    let err = jobs.create_job(create(&a)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("api.max_queued_jobs_per_tenant"),
        "{err:?}"
    );

    let line = |n: usize| format!("{{\"text\":\"{}\"}}\n", "x".repeat(n)).into_bytes();
    upload(ch, &a, "a.jsonl", &line(60), pb::FilePurpose::Dataset).await;
    let big = line(40);
    let header = pb::UploadFileHeader {
        name: "b.jsonl".into(),
        purpose: pb::FilePurpose::Dataset as i32,
        size_bytes: big.len() as i64,
        sha256: hex::encode(Sha256::digest(&big)),
        format: 0,
    };
    let messages = vec![
        pb::UploadFileRequest {
            data: Some(pb::upload_file_request::Data::Header(header)),
        },
        pb::UploadFileRequest {
            data: Some(pb::upload_file_request::Data::Chunk(big.clone())),
        },
    ];
    let err = FileServiceClient::new(ch.clone())
        .upload(req(tokio_stream::iter(messages), &a))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("api.max_stored_bytes_per_tenant"),
        "{err:?}"
    );

    // Tenant B has its own quotas.
    upload(ch, &b, "b.jsonl", &big, pb::FilePurpose::Dataset).await;
    h.stop().await;
}

#[sqlx::test(migrations = false)]
async fn one_key_cannot_take_every_upload_slot(pool: sqlx::PgPool) {
    let limits = Limits {
        max_uploads_per_key: 1,
        upload_idle_timeout_ms: 5_000,
        ..Limits::default()
    };
    let h = harness_with(pool, limits, Config::default()).await;
    let (a, _) = new_key(&h.channel, "tenant-a", pb::ApiKeyRole::Client).await;
    let (b, _) = new_key(&h.channel, "tenant-b", pb::ApiKeyRole::Client).await;
    // A's first upload stays open (header sent, no bytes yet).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::UploadFileRequest {
        data: Some(pb::upload_file_request::Data::Header(
            pb::UploadFileHeader {
                name: "slow.jsonl".into(),
                purpose: pb::FilePurpose::Dataset as i32,
                size_bytes: 100,
                sha256: "0".repeat(64),
                format: 0,
            },
        )),
    })
    .await
    .unwrap();
    let mut client = FileServiceClient::new(h.channel.clone());
    let key = a.clone();
    let open = tokio::spawn(async move {
        client
            .upload(req(tokio_stream::wrappers::ReceiverStream::new(rx), &key))
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let body = b"{\"text\":\"a\"}\n".to_vec();
    let header = pb::UploadFileHeader {
        name: "second.jsonl".into(),
        purpose: pb::FilePurpose::Dataset as i32,
        size_bytes: body.len() as i64,
        sha256: hex::encode(Sha256::digest(&body)),
        format: 0,
    };
    let messages = vec![
        pb::UploadFileRequest {
            data: Some(pb::upload_file_request::Data::Header(header)),
        },
        pb::UploadFileRequest {
            data: Some(pb::upload_file_request::Data::Chunk(body.clone())),
        },
    ];
    let err = FileServiceClient::new(h.channel.clone())
        .upload(req(tokio_stream::iter(messages), &a))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("api.max_uploads_per_key"), "{err:?}");
    // Another key still uploads.
    upload(&h.channel, &b, "b.jsonl", &body, pb::FilePurpose::Dataset).await;
    // A's slot comes back when its upload ends.
    drop(tx);
    let _ = open.await.unwrap();
    upload(
        &h.channel,
        &a,
        "third.jsonl",
        &body,
        pb::FilePurpose::Dataset,
    )
    .await;
    h.stop().await;
}

async fn upload_artifact(
    w: &mut WorkerServiceClient<Channel>,
    key: &str,
    lease: &pb::Lease,
    kind: pb::ArtifactKind,
) -> pb::Artifact {
    let body = b"artifact bytes".to_vec();
    let messages = vec![
        pb::UploadArtifactRequest {
            data: Some(pb::upload_artifact_request::Data::Header(
                pb::UploadArtifactHeader {
                    job_id: lease.job_id.clone(),
                    lease_token: lease.lease_token.clone(),
                    kind: kind as i32,
                    step: 1,
                    name: "a.tar".into(),
                    size_bytes: body.len() as i64,
                    sha256: hex::encode(Sha256::digest(&body)),
                },
            )),
        },
        pb::UploadArtifactRequest {
            data: Some(pb::upload_artifact_request::Data::Chunk(body)),
        },
    ];
    w.upload_artifact(req(tokio_stream::iter(messages), key))
        .await
        .unwrap()
        .into_inner()
}

#[sqlx::test(migrations = false)]
async fn a_job_cannot_succeed_without_its_final_adapter(pool: sqlx::PgPool) {
    let h = harness(pool).await;
    let ch = &h.channel;
    let (client, _) = new_key(ch, "default", pb::ApiKeyRole::Client).await;
    let (worker_key, _) = new_key(ch, "default", pb::ApiKeyRole::Worker).await;
    let job = JobServiceClient::new(ch.clone())
        .create_job(req(
            pb::CreateJobRequest {
                spec: Some(proto_spec(0, 0)),
                request_id: String::new(),
            },
            &client,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut w = WorkerServiceClient::new(ch.clone());
    let worker_id = w
        .register_worker(req(
            pb::RegisterWorkerRequest {
                name: "w".into(),
                capabilities: Some(pb::WorkerCapabilities {
                    device: "cpu".into(),
                    memory_bytes: 1 << 30,
                    ..Default::default()
                }),
            },
            &worker_key,
        ))
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let lease = w
        .acquire_job(req(
            pb::AcquireJobRequest {
                worker_id,
                wait_ms: 0,
            },
            &worker_key,
        ))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(lease.job_id, job.id);
    let complete = |lease: &pb::Lease| {
        req(
            pb::CompleteJobRequest {
                job_id: lease.job_id.clone(),
                lease_token: lease.lease_token.clone(),
                outcome: pb::Outcome::Succeeded as i32,
            },
            &worker_key,
        )
    };
    let state = || async {
        JobServiceClient::new(ch.clone())
            .get_job(req(pb::GetJobRequest { id: job.id.clone() }, &client))
            .await
            .unwrap()
            .into_inner()
            .state()
    };
    // Nothing uploaded, then only a checkpoint: both refused, the job keeps running.
    for kind in [None, Some(pb::ArtifactKind::Checkpoint)] {
        if let Some(kind) = kind {
            upload_artifact(&mut w, &worker_key, &lease, kind).await;
        }
        let err = w.complete_job(complete(&lease)).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("no final adapter"), "{err:?}");
        assert_eq!(state().await, pb::JobState::Running);
    }
    // With its adapter the success lands.
    upload_artifact(&mut w, &worker_key, &lease, pb::ArtifactKind::Adapter).await;
    let done = w.complete_job(complete(&lease)).await.unwrap().into_inner();
    assert_eq!(done.state(), pb::JobState::Succeeded);
    assert_eq!(state().await, pb::JobState::Succeeded);
    h.stop().await;
}
