//! What the benchmarks that drive a server over gRPC share: clients with the caller's
//! credentials, the fixtures every job needs and worker registration.

use sha2::{Digest, Sha256};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tuna_proto::v1 as pb;
use tuna_proto::v1::file_service_client::FileServiceClient;
use tuna_proto::v1::job_service_client::JobServiceClient;
use tuna_proto::v1::model_service_client::ModelServiceClient;
use tuna_proto::v1::worker_service_client::WorkerServiceClient;
use tuna_worker::agent::conn::Bearer;

pub type E = String;

pub fn err(e: impl std::fmt::Display) -> E {
    e.to_string()
}

type Authed = InterceptedService<Channel, Bearer>;

/// One connection to a server and the credentials to call it with: the API key for the
/// user-facing services, the worker token for `WorkerService` (either may be absent when the
/// server does not ask for it).
#[derive(Clone)]
pub struct Api {
    channel: Channel,
    user: Bearer,
    worker: Bearer,
}

impl Api {
    pub fn new(
        channel: Channel,
        api_key: Option<&str>,
        worker_token: Option<&str>,
    ) -> Result<Self, E> {
        Ok(Self {
            channel,
            user: Bearer::new(api_key).map_err(err)?,
            worker: Bearer::new(worker_token).map_err(err)?,
        })
    }

    /// The same credentials on another connection.
    pub fn on(&self, channel: Channel) -> Self {
        Self {
            channel,
            ..self.clone()
        }
    }

    pub fn jobs(&self) -> JobServiceClient<Authed> {
        JobServiceClient::with_interceptor(self.channel.clone(), self.user.clone())
    }

    pub fn files(&self) -> FileServiceClient<Authed> {
        FileServiceClient::with_interceptor(self.channel.clone(), self.user.clone())
    }

    pub fn models(&self) -> ModelServiceClient<Authed> {
        ModelServiceClient::with_interceptor(self.channel.clone(), self.user.clone())
    }

    pub fn workers(&self) -> WorkerServiceClient<Authed> {
        WorkerServiceClient::with_interceptor(self.channel.clone(), self.worker.clone())
    }
}

/// Uploads `body` as one chunk.
pub async fn upload(
    api: &Api,
    name: &str,
    purpose: pb::FilePurpose,
    body: &[u8],
) -> Result<pb::File, E> {
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
    Ok(api
        .files()
        .upload(futures::stream::iter(vec![header, chunk]))
        .await
        .map_err(err)?
        .into_inner())
}

/// A registered (tiny, never loaded) model and a dataset, so jobs resolve at acquire time
/// (the benchmarks never train); returns the spec of a job that uses them.
pub async fn fixtures(api: &Api) -> Result<pb::JobSpec, E> {
    let data = upload(
        api,
        "d.jsonl",
        pb::FilePurpose::Dataset,
        b"{\"text\":\"x\"}\n",
    )
    .await?;
    let cfg = upload(api, "config.json", pb::FilePurpose::Model, b"{}").await?;
    let w = upload(api, "model.safetensors", pb::FilePurpose::Model, b"w").await?;
    let file = |path: &str, f: &pb::File| pb::ModelFile {
        path: path.into(),
        file_id: f.id.clone(),
        ..Default::default()
    };
    api.models()
        .register_model(pb::RegisterModelRequest {
            name: "bench".into(),
            format: pb::ModelFormat::Hf as i32,
            files: vec![file("config.json", &cfg), file("model.safetensors", &w)],
        })
        .await
        .map_err(err)?;
    Ok(pb::JobSpec {
        base_model: "bench".into(),
        training_file: data.id,
        method: Some(pb::Method {
            r#type: "lora".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Registers a `cpu` worker with 1 GiB; returns its id.
pub async fn register(api: &Api, name: String) -> Result<String, E> {
    Ok(api
        .workers()
        .register_worker(pb::RegisterWorkerRequest {
            name,
            capabilities: Some(pb::WorkerCapabilities {
                device: "cpu".into(),
                memory_bytes: 1 << 30,
                ..Default::default()
            }),
        })
        .await
        .map_err(err)?
        .into_inner()
        .worker_id)
}
