//! Blob storage for datasets, models and artifacts via the `object_store` crate: a local
//! directory by default, any object store (S3, GCS, Azure) the crate supports in production.
//!
//! Writes go to a temporary key first and are hashed on the way in; only a verified blob is
//! renamed to its final key, so readers never see partial or unverified bytes.

use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
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
}

fn map_err(key: &str, e: object_store::Error) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound(key.to_string()),
        other => BlobError::Store(other),
    }
}

/// Handle to the blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl Blobs {
    /// A blob store in a local directory (created if missing).
    pub fn local(dir: &FsPath) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir).map_err(|source| BlobError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            store: Arc::new(fs),
        })
    }

    /// Wraps any object store.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// Starts writing a new blob under a temporary key.
    pub async fn begin(&self) -> Result<BlobWriter, BlobError> {
        let key = Path::from(format!("tmp/{}", uuid::Uuid::new_v4().simple()));
        let upload = self.store.put_multipart(&key).await?;
        Ok(BlobWriter {
            key,
            upload: WriteMultipart::new(upload),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Moves a finished temporary blob to its final key.
    pub async fn commit(&self, tmp: &FinishedBlob, key: &str) -> Result<(), BlobError> {
        self.store
            .rename(&tmp.key, &Path::from(key))
            .await
            .map_err(|e| map_err(key, e))
    }

    /// Removes a finished temporary blob that was not committed.
    pub async fn discard(&self, tmp: FinishedBlob) {
        if let Err(e) = self.store.delete(&tmp.key).await {
            tracing::warn!(key = %tmp.key, error = %e, "could not remove temporary blob");
        }
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

    /// Number of blobs under a prefix (for example `tmp`).
    pub async fn count(&self, prefix: &str) -> Result<usize, BlobError> {
        let prefix = Path::from(prefix);
        let items: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        Ok(items.len())
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
    /// Appends bytes, waiting when too many parts are in flight.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        self.upload.wait_for_capacity(4).await?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.upload.write(data);
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Completes the temporary blob.
    pub async fn finish(self) -> Result<FinishedBlob, BlobError> {
        self.upload.finish().await?;
        Ok(FinishedBlob {
            key: self.key,
            sha256: hex::encode(self.hasher.finalize()),
            size: self.size,
        })
    }

    /// Drops the partial upload.
    pub async fn abort(self) {
        if let Err(e) = self.upload.abort().await {
            tracing::warn!(key = %self.key, error = %e, "could not abort partial blob");
        }
    }
}

/// A complete temporary blob with its digest.
#[derive(Debug)]
pub struct FinishedBlob {
    key: Path,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub size: u64,
}
