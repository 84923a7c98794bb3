//! `tuna.v1.ArtifactService`: what workers produced, streamed back to users.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tuna_proto::v1 as pb;
use tuna_proto::v1::artifact_service_server::ArtifactService;

use super::{ApiContext, caller, convert, rechunk, require_id};
use crate::domain::ids;

/// The artifact service.
pub struct Artifacts {
    ctx: ApiContext,
}

impl Artifacts {
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ArtifactService for Artifacts {
    #[tracing::instrument(skip_all)]
    async fn get_artifact(
        &self,
        request: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<pb::Artifact>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        require_id("id", ids::ARTIFACT, &id)?;
        let a = self.ctx.artifact(&caller, &id).await?;
        Ok(Response::new(convert::artifact(&a)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_artifacts(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        require_id("job_id", ids::JOB, &req.job_id)?;
        let kind = convert::artifact_kind_from("kind", req.kind, true)?;
        let store = &self.ctx.store;
        self.ctx.job(&caller, &req.job_id).await?;
        let artifacts = store.list_artifacts(&req.job_id, kind).await?;
        Ok(Response::new(pb::ListArtifactsResponse {
            artifacts: artifacts.iter().map(convert::artifact).collect(),
        }))
    }

    type DownloadStream = DownloadStream;

    #[tracing::instrument(skip_all)]
    async fn download(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().artifact_id;
        require_id("artifact_id", ids::ARTIFACT, &id)?;
        let artifact = self.ctx.artifact(&caller, &id).await?;
        let body = self.ctx.blobs.read(&artifact.blob_key).await?;
        let first = futures::stream::once(async move {
            Ok(pb::DownloadResponse {
                data: Some(pb::download_response::Data::Artifact(convert::artifact(
                    &artifact,
                ))),
            })
        });
        let chunks = rechunk(body).map(|r| {
            r.map(|chunk| pb::DownloadResponse {
                data: Some(pb::download_response::Data::Chunk(chunk)),
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(first.chain(chunks))))
    }
}
