//! The Tuna Rust SDK: typed clients for the `tuna.v1` services plus the conveniences every
//! caller needs (streamed uploads with digests, reconnecting job watches).
//!
//! ```no_run
//! # async fn demo() -> Result<(), tuna_client::ClientError> {
//! let client = tuna_client::Client::connect("http://127.0.0.1:50051", None).await?;
//! let job = client.get_job("job_0123456789abcdef0123456789abcdef").await?;
//! println!("{:?}", job.state());
//! # Ok(()) }
//! ```

pub mod endpoint;
pub mod pack;
pub mod spec_file;
pub mod transfer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::transfer::{TransferError, save_verified};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
pub use tuna_proto::v1 as pb;
use tuna_proto::v1::admin_service_client::AdminServiceClient;
use tuna_proto::v1::artifact_service_client::ArtifactServiceClient;
use tuna_proto::v1::file_service_client::FileServiceClient;
use tuna_proto::v1::fleet_service_client::FleetServiceClient;
use tuna_proto::v1::job_service_client::JobServiceClient;
use tuna_proto::v1::model_service_client::ModelServiceClient;
use tuna_proto::v1::sweep_service_client::SweepServiceClient;

/// Errors of the SDK.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("invalid server URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("{}", status_text(.0))]
    Rpc(#[from] Status),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the download of {artifact} is corrupt: expected sha256 {expected}, got {actual}")]
    Corrupt {
        artifact: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: {message}")]
    SpecFile { path: String, message: String },
    #[error("the server sent an unexpected message: {0}")]
    Protocol(String),
    #[error("artifact {artifact}: {source}")]
    Unpack {
        artifact: String,
        source: crate::pack::UnpackError,
    },
}

/// `CODE: message`, the form users see on the command line.
fn status_text(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Adds `authorization: Bearer <key>` when a key is set, and the caller's `traceparent`.
#[derive(Clone, Debug)]
pub struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        tuna_telemetry::propagation::inject_current(req.metadata_mut());
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Auth>;

/// A connection to a Tuna control plane.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    auth: Auth,
}

impl Client {
    /// Connects to `url` (for example `http://127.0.0.1:50051`).
    pub async fn connect(url: &str, api_key: Option<&str>) -> Result<Self, ClientError> {
        Self::connect_with(url, api_key, None).await
    }

    /// Connects to `url`; an `https://` server is verified against `ca_file` (PEM) when given,
    /// else the system's roots.
    pub async fn connect_with(
        url: &str,
        api_key: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let channel = endpoint::endpoint(url, ca_file)?
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                url: url.to_string(),
                source,
            })?;
        let auth = match api_key.filter(|k| !k.is_empty()) {
            Some(k) => Auth(Some(format!("Bearer {k}").parse().map_err(|_| {
                ClientError::Url {
                    url: url.to_string(),
                    message: "the API key has characters not allowed in a header".into(),
                }
            })?)),
            None => Auth(None),
        };
        Ok(Self { channel, auth })
    }

    pub fn jobs(&self) -> JobServiceClient<Svc> {
        JobServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn files(&self) -> FileServiceClient<Svc> {
        FileServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn models(&self) -> ModelServiceClient<Svc> {
        ModelServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn sweeps(&self) -> SweepServiceClient<Svc> {
        SweepServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// API keys (admin keys only).
    pub fn admin(&self) -> AdminServiceClient<Svc> {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// The workers and what they run (operators).
    pub fn fleet(&self) -> FleetServiceClient<Svc> {
        FleetServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn artifacts(&self) -> ArtifactServiceClient<Svc> {
        ArtifactServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub async fn get_job(&self, id: &str) -> Result<pb::Job, ClientError> {
        let req = pb::GetJobRequest { id: id.to_string() };
        Ok(self.jobs().get_job(req).await?.into_inner())
    }

    pub async fn create_job(
        &self,
        spec: pb::JobSpec,
        request_id: Option<String>,
    ) -> Result<pb::Job, ClientError> {
        let req = pb::CreateJobRequest {
            spec: Some(spec),
            request_id: request_id.unwrap_or_default(),
        };
        Ok(self.jobs().create_job(req).await?.into_inner())
    }

    /// Uploads a file: hashes it first (the server verifies the digest), then streams it in
    /// 1 MiB chunks.
    pub async fn upload_file(
        &self,
        path: &Path,
        purpose: pb::FilePurpose,
        format: pb::DatasetFormat,
    ) -> Result<pb::File, ClientError> {
        let io = |source| ClientError::Io {
            path: path.display().to_string(),
            source,
        };
        let (size, sha256) = hash_file(path).await.map_err(io)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload".into());
        let header = pb::UploadFileRequest {
            data: Some(pb::upload_file_request::Data::Header(
                pb::UploadFileHeader {
                    name,
                    purpose: purpose as i32,
                    size_bytes: size as i64,
                    sha256,
                    format: format as i32,
                },
            )),
        };
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let chunks = futures::StreamExt::map(file_chunks(file), |c| pb::UploadFileRequest {
            data: Some(pb::upload_file_request::Data::Chunk(c)),
        });
        let stream = futures::StreamExt::chain(futures::stream::once(async { header }), chunks);
        Ok(self.files().upload(stream).await?.into_inner())
    }

    /// Follows a job until it reaches a terminal state, calling `on_update` for every event
    /// and metric point in order. A dropped stream is reopened from the last `seq` seen, so
    /// nothing is missed or repeated. Returns the final job.
    pub async fn watch_job(
        &self,
        id: &str,
        mut after_seq: i64,
        mut on_update: impl FnMut(&pb::JobUpdate),
    ) -> Result<pb::Job, ClientError> {
        let mut failures = 0u32;
        loop {
            let req = pb::WatchJobRequest {
                id: id.to_string(),
                after_seq,
            };
            let result = async {
                let mut stream = self.jobs().watch_job(req).await?.into_inner();
                while let Some(update) = stream.message().await? {
                    after_seq = update.seq;
                    on_update(&update);
                }
                Ok::<(), Status>(())
            }
            .await;
            match result {
                Ok(()) => {
                    let job = self.get_job(id).await?;
                    if is_terminal(job.state()) {
                        return Ok(job);
                    }
                }
                Err(s) if is_transient(&s) && failures < 30 => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }
}

impl Client {
    /// Follows a sweep until it and its trial jobs finished, calling `on_snapshot` on every
    /// change; reconnects on transient errors (a restarting server). Returns the final sweep.
    pub async fn watch_sweep(
        &self,
        id: &str,
        mut on_snapshot: impl FnMut(&pb::SweepSnapshot),
    ) -> Result<pb::Sweep, ClientError> {
        let mut failures = 0u32;
        loop {
            let req = pb::WatchSweepRequest { id: id.to_string() };
            let result = async {
                let mut stream = self.sweeps().watch_sweep(req).await?.into_inner();
                while let Some(snap) = stream.message().await? {
                    on_snapshot(&snap);
                }
                Ok::<(), Status>(())
            }
            .await;
            match result {
                Ok(()) => {
                    let req = pb::GetSweepRequest { id: id.to_string() };
                    let sweep = self.sweeps().get_sweep(req).await?.into_inner();
                    if sweep.state() != pb::SweepState::Running {
                        return Ok(sweep);
                    }
                }
                Err(s) if is_transient(&s) && failures < 60 => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    /// Downloads a file to `out`, verifying its sha256; a mismatch removes the partial file.
    pub async fn download_file(&self, id: &str, out: &Path) -> Result<pb::File, ClientError> {
        let req = pb::DownloadFileRequest { id: id.to_string() };
        let mut stream = self.files().download(req).await?.into_inner();
        let meta = match stream.message().await? {
            Some(pb::DownloadFileResponse {
                data: Some(pb::download_file_response::Data::File(f)),
            }) => f,
            _ => {
                return Err(ClientError::Protocol(
                    "download did not start with the file".into(),
                ));
            }
        };
        let chunk = |m: pb::DownloadFileResponse| match m.data {
            Some(pb::download_file_response::Data::Chunk(c)) => Some(c),
            _ => None,
        };
        save_verified(&mut stream, chunk, out, &meta.sha256)
            .await
            .map_err(|e| transfer_error(e, id))?;
        Ok(meta)
    }
}

impl Client {
    /// A job's artifacts of `kind` (UNSPECIFIED = all), oldest first.
    pub async fn list_artifacts(
        &self,
        job_id: &str,
        kind: pb::ArtifactKind,
    ) -> Result<Vec<pb::Artifact>, ClientError> {
        let req = pb::ListArtifactsRequest {
            job_id: job_id.to_string(),
            kind: kind as i32,
        };
        Ok(self
            .artifacts()
            .list_artifacts(req)
            .await?
            .into_inner()
            .artifacts)
    }

    /// Downloads an artifact (a tar), verifies its sha256, and unpacks it into `dir`.
    pub async fn download_artifact_into(
        &self,
        artifact: &pb::Artifact,
        dir: &Path,
    ) -> Result<(), ClientError> {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let io = |source| ClientError::Io {
            path: parent.display().to_string(),
            source,
        };
        tokio::fs::create_dir_all(&parent).await.map_err(io)?;
        // Beside the target, never inside it: the target must stay fresh for the unpack.
        let tar = tempfile::Builder::new()
            .prefix(&format!(".{}.", artifact.id))
            .suffix(".download")
            .tempfile_in(&parent)
            .map_err(io)?
            .into_temp_path();
        let req = pb::DownloadRequest {
            artifact_id: artifact.id.clone(),
        };
        let mut stream = self.artifacts().download(req).await?.into_inner();
        let chunk = |m: pb::DownloadResponse| match m.data {
            Some(pb::download_response::Data::Chunk(c)) => Some(c),
            _ => None,
        };
        save_verified(&mut stream, chunk, &tar, &artifact.sha256)
            .await
            .map_err(|e| transfer_error(e, &artifact.id))?;
        let (tar_path, dir) = (tar.to_path_buf(), dir.to_path_buf());
        let unpacked = tokio::task::spawn_blocking(move || crate::pack::unpack(&tar_path, &dir))
            .await
            .map_err(|e| io(std::io::Error::other(e)))?;
        drop(tar);
        unpacked.map_err(|source| ClientError::Unpack {
            artifact: artifact.id.clone(),
            source,
        })
    }
}

/// The files to upload for a model path, with their names inside the model folder.
pub fn model_files(path: &Path) -> Result<(pb::ModelFormat, Vec<PathBuf>), ClientError> {
    let usage = |m: String| ClientError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(m),
    };
    if path.is_file() {
        if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
            return Err(usage("a single model file must be a .gguf file".into()));
        }
        return Ok((pb::ModelFormat::Gguf, vec![path.to_path_buf()]));
    }
    let entries = std::fs::read_dir(path).map_err(|e| usage(e.to_string()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| usage(e.to_string()))?;
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = name == "config.json"
            || name == "tokenizer.json"
            || name == "tokenizer_config.json"
            || name == "generation_config.json"
            || name == "special_tokens_map.json"
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json";
        if p.is_file() && wanted {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(usage(
            "no model files (config.json, *.safetensors, tokenizer.json) found".into(),
        ));
    }
    Ok((pb::ModelFormat::Hf, files))
}

impl Client {
    /// Uploads a model (an HF folder or one .gguf file) and registers it under `name`.
    pub async fn register_model(&self, name: &str, path: &Path) -> Result<pb::Model, ClientError> {
        let (format, paths) = model_files(path)?;
        let mut files = Vec::with_capacity(paths.len());
        for p in &paths {
            let uploaded = self
                .upload_file(p, pb::FilePurpose::Model, pb::DatasetFormat::Unspecified)
                .await?;
            files.push(pb::ModelFile {
                path: uploaded.name.clone(),
                file_id: uploaded.id,
                ..Default::default()
            });
        }
        let req = pb::RegisterModelRequest {
            name: name.to_string(),
            format: format as i32,
            files,
        };
        Ok(self.models().register_model(req).await?.into_inner())
    }
}

/// Maps a failed verified download to the SDK's error.
fn transfer_error(e: TransferError, id: &str) -> ClientError {
    match e {
        TransferError::Rpc(status) => ClientError::Rpc(status),
        TransferError::Io { path, source } => ClientError::Io { path, source },
        TransferError::Corrupt { expected, actual } => ClientError::Corrupt {
            artifact: id.to_string(),
            expected,
            actual,
        },
    }
}

/// Whether a job state is final.
pub fn is_terminal(state: pb::JobState) -> bool {
    matches!(
        state,
        pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled
    )
}

fn is_transient(s: &Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled
    )
}

async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// A file's bytes in [`tuna_proto::CHUNK_SIZE`] chunks, read as the stream is polled (one
/// chunk in memory at a time). A read error ends the stream early, which the server refuses
/// as shorter than the declared size.
pub fn file_chunks(file: tokio::fs::File) -> impl futures::Stream<Item = Vec<u8>> + Send + 'static {
    futures::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; tuna_proto::CHUNK_SIZE];
        match read_full(&mut file, &mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((buf, Some(file)))
            }
        }
    })
}

/// Size and lowercase hex SHA-256 of a file.
pub async fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}
