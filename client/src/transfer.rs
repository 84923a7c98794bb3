//! Verified downloads: the one place where streamed chunks are written to a file and checked
//! against the sha256 the server declared (used by the worker's cache and by the SDK).

use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Why a download could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("expected sha256 {expected}, got {actual}")]
    Corrupt { expected: String, actual: String },
}

/// Writes every chunk `chunk_of` finds in `stream` to `out` and checks the digest; a corrupt
/// download is removed rather than left for someone to trust.
pub async fn save_verified<T>(
    stream: &mut tonic::Streaming<T>,
    chunk_of: impl Fn(T) -> Option<Vec<u8>>,
    out: &Path,
    expected_sha256: &str,
) -> Result<(), TransferError> {
    let io = |source| TransferError::Io {
        path: out.display().to_string(),
        source,
    };
    let mut file = tokio::fs::File::create(out).await.map_err(io)?;
    let mut hasher = Sha256::new();
    while let Some(msg) = stream.message().await? {
        if let Some(chunk) = chunk_of(msg) {
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
    }
    file.flush().await.map_err(io)?;
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if actual != expected_sha256 {
        let _ = tokio::fs::remove_file(out).await;
        return Err(TransferError::Corrupt {
            expected: expected_sha256.to_string(),
            actual,
        });
    }
    Ok(())
}
