//! A control plane served over loopback for gRPC tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tuna_server::api::Limits;
use tuna_server::blobs::Blobs;
use tuna_server::config::Config;
use tuna_server::domain::{DatasetFormat, FilePurpose, ModelFormat};
use tuna_server::serve::ControlPlane;
use tuna_server::store::{FileRecord, Store};

/// A running server and handles to its insides, so tests can check what was stored.
pub struct Harness {
    pub channel: Channel,
    pub store: Arc<dyn Store>,
    pub blobs: Blobs,
    pub addr: std::net::SocketAddr,
    /// The blob store's directory (tests break it to provoke internal errors).
    pub blob_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    pub async fn start(store: Arc<dyn Store>, limits: Limits, config: Config) -> Self {
        // The dataset `proto_spec` names, so jobs pass the file-existence check.
        store
            .insert_file(&FileRecord {
                tenant: "default".into(),
                id: super::DATASET_ID.into(),
                name: "train.jsonl".into(),
                purpose: FilePurpose::Dataset,
                format: Some(DatasetFormat::Text),
                size_bytes: 1,
                sha256: "0".repeat(64),
                line_count: 1,
                blob_key: "files/fixture".into(),
                created_at: 0,
            })
            .await
            .unwrap();
        // The base model `proto_spec` names, so acquired jobs resolve their model.
        for (id, name) in [
            (super::MODEL_CONFIG_ID, "config.json"),
            (super::MODEL_WEIGHTS_ID, "model.safetensors"),
        ] {
            store
                .insert_file(&FileRecord {
                    tenant: "default".into(),
                    id: id.into(),
                    name: name.into(),
                    purpose: FilePurpose::Model,
                    format: None,
                    size_bytes: 1,
                    sha256: "1".repeat(64),
                    line_count: 0,
                    blob_key: format!("files/{id}"),
                    created_at: 0,
                })
                .await
                .unwrap();
        }
        let files = [
            (
                "config.json".to_string(),
                super::MODEL_CONFIG_ID.to_string(),
            ),
            (
                "model.safetensors".to_string(),
                super::MODEL_WEIGHTS_ID.to_string(),
            ),
        ];
        store
            .insert_model("default", super::MODEL_NAME, ModelFormat::Hf, &files)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let blob_dir = dir.path().join("blobs");
        let blobs = Blobs::local(&blob_dir).unwrap();
        let plane = ControlPlane::new(store.clone(), blobs.clone(), limits, &config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            plane
                .serve_on(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            channel,
            store,
            blobs,
            addr,
            blob_dir,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}
