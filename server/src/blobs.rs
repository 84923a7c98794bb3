//! Blob storage for datasets, models and artifacts via the `object_store` crate: a local
//! directory by default, an S3 bucket (`s3://bucket/prefix`) with several replicas.
//!
//! A blob is written once, straight to its final key, as a multipart upload that completes only
//! after its size and digest (and, for datasets, every line) were checked: until then it is
//! invisible (S3 shows no object before `CompleteMultipartUpload`; the local store writes a
//! staging file and renames it). So readers never see partial or unverified bytes, and no
//! server-side copy limits the size (S3's single-request copy stops at 5 GiB).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("blob store error: {0}")]
    Store(#[from] object_store::Error),
    #[error("blob store directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("blobs.url {url:?}: {message}")]
    Url { url: String, message: String },
}

fn map_err(key: &str, e: object_store::Error) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound(key.to_string()),
        other => BlobError::Store(other),
    }
}

/// Parts in flight per upload: with object_store's 5 MiB parts an upload holds at most ~25 MiB.
const PARTS_IN_FLIGHT: usize = 4;

/// Handle to the blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The directory of a local store: its staging files (left by a crash mid-upload) are not
    /// listed by `object_store`, so the collector looks at the directory itself.
    local_dir: Option<PathBuf>,
}

/// A committed blob seen by [`Blobs::list`].
#[derive(Debug, Clone)]
pub struct BlobEntry {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

impl Blobs {
    /// The store `url` names (`s3://bucket/prefix`), or a local directory when `url` is empty.
    pub fn open(url: &str, dir: &FsPath) -> Result<Self, BlobError> {
        if url.is_empty() {
            Self::local(dir)
        } else {
            Self::s3(url)
        }
    }

    /// A blob store in a local directory (created if missing).
    pub fn local(dir: &FsPath) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir).map_err(|source| BlobError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        // fsync files and their directories before a write reports success: an acknowledged
        // upload or artifact survives a power loss, as it would on S3.
        let fs = LocalFileSystem::new_with_prefix(dir)?.with_fsync(true);
        Ok(Self {
            store: Arc::new(fs),
            local_dir: Some(dir.to_path_buf()),
        })
    }

    /// An S3 bucket (AWS or any S3-compatible server), `s3://bucket[/prefix]`, configured by
    /// the process's standard variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...).
    pub fn s3(url: &str) -> Result<Self, BlobError> {
        Self::s3_with_env(url, std::env::vars())
    }

    /// Like [`Self::s3`], with the `AWS_*` variables taken from `env` (other names are
    /// ignored). An `http://` endpoint the operator named is allowed without also setting
    /// `AWS_ALLOW_HTTP`.
    pub fn s3_with_env(
        url: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, BlobError> {
        let bad = |message: String| BlobError::Url {
            url: url.to_string(),
            message,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("only s3://bucket/prefix URLs are supported".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is missing".into()));
        }
        let mut builder = AmazonS3Builder::new();
        let mut plain_http = false;
        for (name, value) in env {
            if !name.starts_with("AWS_") {
                continue;
            }
            if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                if matches!(
                    key,
                    AmazonS3ConfigKey::Endpoint | AmazonS3ConfigKey::S3Endpoint
                ) {
                    plain_http |= value.starts_with("http://");
                }
                builder = builder.with_config(key, value);
            }
        }
        let mut builder = builder.with_bucket_name(bucket);
        if plain_http {
            builder = builder.with_allow_http(true);
        }
        let s3 = builder.build().map_err(|e| bad(e.to_string()))?;
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Self {
            store,
            local_dir: None,
        })
    }

    /// Wraps any object store.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            local_dir: None,
        }
    }

    /// Starts writing the blob `key`; nothing is visible there until [`BlobWriter::finish`].
    pub async fn begin(&self, key: &str) -> Result<BlobWriter, BlobError> {
        let key = Path::from(key);
        let upload = self.store.put_multipart(&key).await?;
        Ok(BlobWriter {
            key,
            upload: WriteMultipart::new(upload),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Deletes a committed blob; a missing blob is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a committed blob exists (tests use this to prove nothing was left behind).
    pub async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        match self.store.head(&Path::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// One request to the blob store (readiness): a missing probe key is an answer, any
    /// other error means the store cannot be reached.
    pub async fn ping(&self) -> Result<(), BlobError> {
        self.exists("readiness-probe").await.map(|_| ())
    }

    /// Number of committed blobs under a prefix (for example `files`).
    pub async fn count(&self, prefix: &str) -> Result<usize, BlobError> {
        Ok(self.list(prefix).await?.len())
    }

    /// The committed blobs under a prefix.
    pub async fn list(&self, prefix: &str) -> Result<Vec<BlobEntry>, BlobError> {
        let prefix = Path::from(prefix);
        self.store
            .list(Some(&prefix))
            .map_ok(|m| BlobEntry {
                key: m.location.to_string(),
                size: m.size,
                last_modified: m.last_modified.into(),
            })
            .try_collect()
            .await
            .map_err(BlobError::from)
    }

    /// Removes the staging files of uploads a crash interrupted (local store only) that are
    /// older than `grace`; returns how many. S3 keeps no visible trace of an interrupted
    /// multipart upload: the bucket's `AbortIncompleteMultipartUpload` rule frees its parts.
    pub fn remove_stale_staging(&self, grace: Duration) -> Result<usize, BlobError> {
        let Some(dir) = &self.local_dir else {
            return Ok(0);
        };
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = 0;
        let mut pending = vec![dir.clone()];
        while let Some(d) = pending.pop() {
            let io = |source| BlobError::Io {
                path: d.display().to_string(),
                source,
            };
            for entry in std::fs::read_dir(&d).map_err(io)? {
                let entry = entry.map_err(io)?;
                let kind = entry.file_type().map_err(io)?;
                if kind.is_dir() {
                    pending.push(entry.path());
                    continue;
                }
                // object_store stages `<key>#<n>`; committed keys never contain `#`.
                let staged = entry.file_name().to_string_lossy().contains('#');
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < cutoff);
                if kind.is_file() && staged && old {
                    std::fs::remove_file(entry.path()).map_err(io)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Streams a committed blob.
    pub async fn read(
        &self,
        key: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, BlobError>> + Send + 'static, BlobError> {
        let result = self
            .store
            .get(&Path::from(key))
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(result.into_stream().map(|r| r.map_err(BlobError::from)))
    }
}

/// A blob being written; hashes and counts what passes through.
pub struct BlobWriter {
    key: Path,
    upload: WriteMultipart,
    hasher: Sha256,
    size: u64,
}

impl BlobWriter {
    /// Appends bytes, waiting when too many parts are in flight (memory stays bounded).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        self.upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.upload.write(data);
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Lowercase hex SHA-256 of what was written so far (checked before [`Self::finish`]).
    pub fn sha256(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    /// Completes the upload: only now does the blob appear at its key.
    pub async fn finish(self) -> Result<FinishedBlob, BlobError> {
        let sha256 = self.sha256();
        self.upload.finish().await?;
        Ok(FinishedBlob {
            key: self.key.to_string(),
            sha256,
            size: self.size,
        })
    }

    /// Drops the partial upload; nothing becomes visible.
    pub async fn abort(self) {
        if let Err(e) = self.upload.abort().await {
            tracing::warn!(key = %self.key, error = %e, "could not abort partial blob");
        }
    }
}

/// A complete, visible blob with its digest.
#[derive(Debug)]
pub struct FinishedBlob {
    pub key: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub size: u64,
}
