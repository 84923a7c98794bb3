//! The agent's content-addressed cache against a real control plane over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tuna_proto::v1 as pb;
use tuna_proto::v1::file_service_client::FileServiceClient;
use tuna_server::api::Limits;
use tuna_server::blobs::Blobs;
use tuna_server::config::Config;
use tuna_server::domain::ModelFormat;
use tuna_server::serve::ControlPlane;
use tuna_server::store::{NewJob, QueuePolicy, Store, SystemClock, sqlite::SqliteStore};
use tuna_worker::agent::cache::{Cache, CacheError, LeaseRef};
use tuna_worker::agent::conn::Conn;

async fn serve(dir: &std::path::Path) -> (String, Blobs, Arc<dyn Store>) {
    let url = format!("sqlite://{}", dir.join("tuna.db").display());
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::connect(&url, QueuePolicy::default(), Arc::new(SystemClock))
            .await
            .unwrap(),
    );
    let blobs = Blobs::local(&dir.join("blobs")).unwrap();
    let plane = ControlPlane::new(
        store.clone(),
        blobs.clone(),
        Limits::default(),
        &Config::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(plane.serve_on(listener, std::future::pending()));
    (format!("http://{addr}"), blobs, store)
}

async fn upload(url: &str, name: &str, body: &[u8]) -> pb::File {
    upload_as(url, name, body, pb::FilePurpose::Model).await
}

async fn upload_as(url: &str, name: &str, body: &[u8], purpose: pb::FilePurpose) -> pb::File {
    let header = pb::UploadFileRequest {
        data: Some(pb::upload_file_request::Data::Header(
            pb::UploadFileHeader {
                name: name.into(),
                purpose: purpose as i32,
                size_bytes: body.len() as i64,
                sha256: hex::encode(Sha256::digest(body)),
                format: 0,
            },
        )),
    };
    let chunk = pb::UploadFileRequest {
        data: Some(pb::upload_file_request::Data::Chunk(body.to_vec())),
    };
    FileServiceClient::connect(url.to_string())
        .await
        .unwrap()
        .upload(futures::stream::iter(vec![header, chunk]))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn files_are_downloaded_once_verified_and_assembled_into_model_folders() {
    let server_dir = tempfile::tempdir().unwrap();
    let (url, blobs, store) = serve(server_dir.path()).await;
    let config = upload(&url, "config.json", b"{\"hidden_size\": 8}").await;
    let weights = upload(&url, "model.safetensors", &vec![3u8; 3_000_000]).await;
    let data = b"{\"prompt\":\"1+1=\",\"completion\":\"2\"}\n";
    let dataset = upload_as(&url, "train.jsonl", data, pb::FilePurpose::Dataset).await;
    // Downloads go through a lease: a job on this model and dataset, claimed by a worker.
    store
        .insert_model(
            "default",
            "tiny",
            ModelFormat::Hf,
            &[
                ("config.json".into(), config.id.clone()),
                ("model.safetensors".into(), weights.id.clone()),
            ],
        )
        .await
        .unwrap();
    let spec = pb::JobSpec {
        base_model: "tiny".into(),
        training_file: dataset.id.clone(),
        method: Some(pb::Method {
            r#type: "lora".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    store
        .create_job(NewJob {
            tenant: "default".into(),
            spec: tuna_spec::JobSpec::from_proto(Some(&spec)).unwrap(),
            request_id: None,
            sweep_id: None,
            resume_from_job: None,
            trace_context: None,
        })
        .await
        .unwrap();
    let conn = Conn::new(&url, None, None).unwrap();
    let mut worker = conn.worker();
    let worker_id = worker
        .register_worker(pb::RegisterWorkerRequest {
            name: "w".into(),
            capabilities: Some(pb::WorkerCapabilities {
                device: "cpu".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let lease = worker
        .acquire_job(pb::AcquireJobRequest {
            worker_id,
            wait_ms: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    let held = LeaseRef {
        job_id: &lease.job_id,
        token: &lease.lease_token,
    };

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(cache_dir.path()).unwrap();
    assert_eq!(
        std::fs::read(cache.file(&conn, held, &dataset).await.unwrap()).unwrap(),
        data
    );
    let path = cache.file(&conn, held, &weights).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap().len(), 3_000_000);

    let model = pb::Model {
        name: "tiny".into(),
        format: pb::ModelFormat::Hf as i32,
        files: [("config.json", &config), ("model.safetensors", &weights)]
            .into_iter()
            .map(|(p, f)| pb::ModelFile {
                path: p.into(),
                file_id: f.id.clone(),
                sha256: f.sha256.clone(),
                size_bytes: f.size_bytes,
            })
            .collect(),
        created_at: None,
    };
    let dir = cache.model(&conn, held, &model).await.unwrap();
    assert_eq!(
        std::fs::read(dir.join("config.json")).unwrap(),
        b"{\"hidden_size\": 8}"
    );
    assert_eq!(cache.cached_models().len(), 1);

    // Cached by content: the server losing its copy does not matter any more.
    blobs
        .delete(&format!("files/{}", weights.id))
        .await
        .unwrap();
    assert_eq!(cache.file(&conn, held, &weights).await.unwrap(), path);
    assert_eq!(cache.model(&conn, held, &model).await.unwrap(), dir);

    // A file the lease does not name (here: one that does not exist) is the job's problem
    // (USER), not a retryable one.
    let mut ghost = weights.clone();
    ghost.id = "file_0123456789abcdef0123456789abcdef".into();
    ghost.sha256 = "0".repeat(64);
    assert!(matches!(
        cache.file(&conn, held, &ghost).await,
        Err(CacheError::Missing(_))
    ));
    // Bytes that do not match the expected digest are refused and not cached.
    let mut lied = config.clone();
    lied.sha256 = "f".repeat(64);
    assert!(matches!(
        cache.file(&conn, held, &lied).await,
        Err(CacheError::Corrupt { .. })
    ));
    assert!(!cache_dir.path().join("blobs").join(&lied.sha256).exists());
}
