//! Content-addressed cache of downloaded files: every blob is stored once under its sha256,
//! verified on the way in, and model folders are assembled from hard links to those blobs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tuna_proto::v1 as pb;

use super::conn::Conn;
use tuna_client::transfer::{TransferError, save_verified};

/// Cache failures, split by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The server no longer has the file: the job can never run.
    #[error("file {0} does not exist on the server")]
    Missing(String),
    #[error("download of {id} is corrupt: expected sha256 {expected}, got {actual}")]
    Corrupt {
        id: String,
        expected: String,
        actual: String,
    },
    #[error("download of {id} failed: {status}")]
    Rpc { id: String, status: tonic::Status },
    #[error("cache {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: &Path) -> Result<Self, CacheError> {
        for sub in ["blobs", "models", "tmp"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Path of a verified local copy of `file`, downloading it if needed.
    pub async fn file(
        &self,
        conn: &Conn,
        lease: LeaseRef<'_>,
        file: &pb::File,
    ) -> Result<PathBuf, CacheError> {
        let path = self.root.join("blobs").join(&file.sha256);
        if tokio::fs::metadata(&path)
            .await
            .is_ok_and(|m| m.len() == file.size_bytes as u64)
        {
            return Ok(path);
        }
        let tmp =
            self.root
                .join("tmp")
                .join(format!("{}.{}", file.id, uuid::Uuid::new_v4().simple()));
        // A database or blob-store blip answers UNAVAILABLE for a few seconds: retry rather
        // than fail the attempt (the heartbeat keeps the lease meanwhile).
        let transient = |e: &CacheError| matches!(e, CacheError::Rpc { status, .. } if super::settle::is_transient(status));
        super::settle::retry(DOWNLOAD_PATIENCE, "input download", transient, || {
            let tmp = &tmp;
            async move {
                let result = download(conn, lease, &file.id, &file.sha256, tmp).await;
                if result.is_err() {
                    let _ = tokio::fs::remove_file(tmp).await;
                }
                result
            }
        })
        .await?;
        tokio::fs::rename(&tmp, &path).await.map_err(io(&path))?;
        Ok(path)
    }

    /// A folder holding the model's files under their paths, assembled from the blob cache.
    pub async fn model(
        &self,
        conn: &Conn,
        lease: LeaseRef<'_>,
        model: &pb::Model,
    ) -> Result<PathBuf, CacheError> {
        let mut hasher = Sha256::new();
        for f in &model.files {
            hasher.update(f.path.as_bytes());
            hasher.update(f.sha256.as_bytes());
        }
        let key = format!("{}-{}", model.name, &hex::encode(hasher.finalize())[..16]);
        let dir = self.root.join("models").join(&key);
        if dir.join(".complete").exists() {
            return Ok(dir);
        }
        tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        for f in &model.files {
            let file = pb::File {
                id: f.file_id.clone(),
                name: f.path.clone(),
                size_bytes: f.size_bytes,
                sha256: f.sha256.clone(),
                ..Default::default()
            };
            let blob = self.file(conn, lease, &file).await?;
            let target = dir.join(&f.path);
            let _ = tokio::fs::remove_file(&target).await;
            if tokio::fs::hard_link(&blob, &target).await.is_err() {
                tokio::fs::copy(&blob, &target).await.map_err(io(&target))?;
            }
        }
        let marker = dir.join(".complete");
        tokio::fs::write(&marker, b"").await.map_err(io(&marker))?;
        Ok(dir)
    }

    /// Names of the model folders already cached (reported as worker capabilities).
    pub fn cached_models(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join("models"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.path().join(".complete").exists())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// A fresh scratch file path.
    pub fn tmp_path(&self, name: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}-{name}", uuid::Uuid::new_v4().simple()))
    }
}

/// How a download is retried through transient errors before the attempt fails.
const DOWNLOAD_PATIENCE: super::settle::Patience = super::settle::Patience {
    first_delay: Duration::from_millis(250),
    max_delay: Duration::from_secs(5),
    total: Duration::from_secs(60),
};

/// The lease whose inputs a download fetches: the server hands a worker only those.
#[derive(Clone, Copy)]
pub struct LeaseRef<'a> {
    pub job_id: &'a str,
    pub token: &'a str,
}

impl std::fmt::Debug for LeaseRef<'_> {
    /// The token stays out of logs and spans.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseRef")
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

/// Streams an input of the lease into `out` (WorkerService.DownloadInput), verifying it
/// against `expected_sha256`.
async fn download(
    conn: &Conn,
    lease: LeaseRef<'_>,
    id: &str,
    expected_sha256: &str,
    out: &Path,
) -> Result<(), CacheError> {
    let rpc = |status: tonic::Status| {
        if status.code() == tonic::Code::NotFound {
            CacheError::Missing(id.to_string())
        } else {
            CacheError::Rpc {
                id: id.to_string(),
                status,
            }
        }
    };
    let request = pb::DownloadInputRequest {
        job_id: lease.job_id.to_string(),
        lease_token: lease.token.to_string(),
        input: Some(pb::download_input_request::Input::FileId(id.to_string())),
    };
    let mut stream = conn
        .worker()
        .download_input(request)
        .await
        .map_err(rpc)?
        .into_inner();
    let chunk = |m: pb::DownloadInputResponse| match m.data {
        Some(pb::download_input_response::Data::Chunk(c)) => Some(c),
        _ => None,
    };
    save_verified(&mut stream, chunk, out, expected_sha256)
        .await
        .map_err(|e| match e {
            TransferError::Rpc(status) => rpc(status),
            TransferError::Io { path, source } => CacheError::Io { path, source },
            TransferError::Corrupt { expected, actual } => CacheError::Corrupt {
                id: id.to_string(),
                expected,
                actual,
            },
        })
}
