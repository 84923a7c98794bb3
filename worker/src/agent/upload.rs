//! Artifact upload: pack a directory, hash it, stream it under the lease.

use std::path::Path;

use futures::StreamExt;

use tuna_proto::v1 as pb;

use super::cache::Cache;
use super::conn::Conn;
use tuna_client::pack;
use tuna_client::transfer::{TransferError, save_verified};

/// Upload failures.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("packing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("upload refused: {0}")]
    Rpc(#[from] tonic::Status),
}

/// Uploads artifacts of one attempt (fenced by its lease token).
#[derive(Clone)]
pub struct Uploader {
    pub conn: Conn,
    pub cache: Cache,
    pub job_id: String,
    pub token: String,
}

impl Uploader {
    /// Packs `dir` and uploads it as an artifact named `name`.
    #[tracing::instrument(name = "upload_artifact", skip(self, dir), fields(job = %self.job_id))]
    pub async fn upload_dir(
        &self,
        kind: pb::ArtifactKind,
        step: i64,
        dir: &Path,
        name: &str,
    ) -> Result<pb::Artifact, UploadError> {
        let tar = self.cache.tmp_path(name);
        let io = |source| UploadError::Io {
            path: dir.display().to_string(),
            source,
        };
        let packed = {
            let (dir, tar) = (dir.to_path_buf(), tar.clone());
            tokio::task::spawn_blocking(move || pack::pack_dir(&dir, &tar))
                .await
                .map_err(|e| io(std::io::Error::other(e)))?
        };
        packed.map_err(io)?;
        let result = upload_file(
            &self.conn,
            &self.job_id,
            &self.token,
            kind,
            step,
            &tar,
            name,
        )
        .await;
        let _ = tokio::fs::remove_file(&tar).await;
        result
    }
}

async fn upload_file(
    conn: &Conn,
    job_id: &str,
    token: &str,
    kind: pb::ArtifactKind,
    step: i64,
    path: &Path,
    name: &str,
) -> Result<pb::Artifact, UploadError> {
    let io = |source| UploadError::Io {
        path: path.display().to_string(),
        source,
    };
    // Two passes over the file, never the whole archive in memory: the digest first (the
    // header carries it), then the bytes chunk by chunk.
    let (size, sha256) = tuna_client::hash_file(path).await.map_err(io)?;
    let header = pb::UploadArtifactRequest {
        data: Some(pb::upload_artifact_request::Data::Header(
            pb::UploadArtifactHeader {
                job_id: job_id.to_string(),
                lease_token: token.to_string(),
                kind: kind as i32,
                step,
                name: name.to_string(),
                size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
                sha256,
            },
        )),
    };
    let file = tokio::fs::File::open(path).await.map_err(io)?;
    let chunks = tuna_client::file_chunks(file).map(|c| pb::UploadArtifactRequest {
        data: Some(pb::upload_artifact_request::Data::Chunk(c)),
    });
    let messages = futures::stream::once(async { header }).chain(chunks);
    let reply = conn.worker().upload_artifact(messages).await?;
    Ok(reply.into_inner())
}

/// Downloads a checkpoint of the lease into `out` (WorkerService.DownloadInput), verifying
/// its sha256.
pub async fn download_artifact(
    conn: &Conn,
    lease: super::cache::LeaseRef<'_>,
    artifact: &pb::Artifact,
    out: &Path,
) -> Result<(), TransferError> {
    let req = pb::DownloadInputRequest {
        job_id: lease.job_id.to_string(),
        lease_token: lease.token.to_string(),
        input: Some(pb::download_input_request::Input::ArtifactId(
            artifact.id.clone(),
        )),
    };
    let mut stream = conn.worker().download_input(req).await?.into_inner();
    let chunk = |m: pb::DownloadInputResponse| match m.data {
        Some(pb::download_input_response::Data::Chunk(c)) => Some(c),
        _ => None,
    };
    save_verified(&mut stream, chunk, out, &artifact.sha256).await
}
