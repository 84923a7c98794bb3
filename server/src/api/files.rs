//! `tuna.v1.FileService`: datasets and model files, streamed into the blob store.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tuna_proto::v1 as pb;
use tuna_proto::v1::file_service_server::FileService;

use super::{
    ApiContext, caller, convert, next_within, page_token, receive_blob, rechunk, require_id,
    require_name, require_quota, require_sha256, require_size, upload_slot,
};
use crate::dataset::JsonlValidator;
use crate::domain::{FilePurpose, ids};
use crate::error::ApiError;
use crate::store::{Cursor, FileRecord};

/// The file service.
pub struct Files {
    ctx: ApiContext,
}

impl Files {
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }
}

/// Blob key of a committed file.
pub fn blob_key(id: &str) -> String {
    format!("files/{id}")
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadFileResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FileService for Files {
    type DownloadStream = DownloadStream;

    #[tracing::instrument(skip_all)]
    async fn download(
        &self,
        request: Request<pb::DownloadFileRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        require_id("id", ids::FILE, &id)?;
        let file = self.ctx.file(&caller, &id).await?;
        let body = self.ctx.blobs.read(&file.blob_key).await?;
        let first = futures::stream::once(async move {
            Ok(pb::DownloadFileResponse {
                data: Some(pb::download_file_response::Data::File(convert::file(&file))),
            })
        });
        let chunks = rechunk(body).map(|r| {
            r.map(|chunk| pb::DownloadFileResponse {
                data: Some(pb::download_file_response::Data::Chunk(chunk)),
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(first.chain(chunks))))
    }

    #[tracing::instrument(skip_all, fields(file))]
    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadFileRequest>>,
    ) -> Result<Response<pb::File>, Status> {
        let caller = caller(&request)?;
        let _slot = upload_slot(&self.ctx, &caller)?;
        let idle = Duration::from_millis(self.ctx.limits.upload_idle_timeout_ms);
        let mut stream = request.into_inner();
        let header = match next_within(&mut stream, idle).await? {
            Some(Ok(pb::UploadFileRequest {
                data: Some(pb::upload_file_request::Data::Header(h)),
            })) => h,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(
                    ApiError::field("header", "the first message must carry the header").into(),
                );
            }
        };
        require_name("header.name", &header.name)?;
        let purpose = convert::file_purpose_from("header.purpose", header.purpose, false)?
            .unwrap_or(FilePurpose::Dataset);
        require_size("header.size_bytes", header.size_bytes, &self.ctx.limits)?;
        require_sha256("header.sha256", &header.sha256)?;
        require_quota(&self.ctx, &caller, 0, header.size_bytes).await?;
        let format = convert::dataset_format_from("header.format", header.format)?;
        if purpose != FilePurpose::Dataset && format.is_some() {
            return Err(
                ApiError::field("header.format", "only DATASET files have a format").into(),
            );
        }
        let validator = (purpose == FilePurpose::Dataset).then(|| JsonlValidator::new(format));
        let chunks = stream.map(|m| match m {
            Ok(pb::UploadFileRequest {
                data: Some(pb::upload_file_request::Data::Chunk(c)),
            }) => Ok(c),
            Ok(_) => Err(ApiError::field(
                "chunk",
                "only the first message may carry a header",
            )),
            Err(status) => Err(ApiError::Unavailable(format!(
                "upload stream failed: {}",
                status.message()
            ))),
        });
        let blobs = &self.ctx.blobs;
        let id = ids::new_id(ids::FILE);
        tracing::Span::current().record("file", id.as_str());
        let key = blob_key(&id);
        let received = receive_blob(
            blobs,
            &key,
            chunks,
            header.size_bytes,
            &header.sha256,
            validator,
            idle,
        )
        .await?;
        let (format, line_count) = received
            .dataset
            .map_or((None, 0), |(f, n)| (Some(f), n as i64));
        let record = FileRecord {
            id: id.clone(),
            tenant: caller.tenant.to_string(),
            name: header.name,
            purpose,
            format,
            size_bytes: header.size_bytes,
            sha256: received.blob.sha256,
            line_count,
            blob_key: key,
            created_at: self.ctx.store.clock().now_ms(),
        };
        if let Err(e) = self.ctx.store.insert_file(&record).await {
            // Never leave a blob without its row.
            let _ = blobs.delete(&record.blob_key).await;
            return Err(ApiError::from(e).into());
        }
        tracing::info!(file = %id, bytes = record.size_bytes, lines = line_count, "file uploaded");
        Ok(Response::new(convert::file(&record)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_file(
        &self,
        request: Request<pb::GetFileRequest>,
    ) -> Result<Response<pb::File>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        require_id("id", ids::FILE, &id)?;
        let file = self.ctx.file(&caller, &id).await?;
        Ok(Response::new(convert::file(&file)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_files(
        &self,
        request: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let limit =
            page_token::page_size("page_size", req.page_size, page_token::DEFAULT_PAGE_SIZE)?;
        let purpose = convert::file_purpose_from("purpose", req.purpose, true)?;
        let canon = format!("files|{}", purpose.map(|p| p.as_str()).unwrap_or(""));
        let after = page_token::decode(&req.page_token, &canon)?;
        let mut files = self
            .ctx
            .store
            .list_files(&caller.tenant, purpose, after.as_ref(), limit + 1)
            .await?;
        let more = files.len() > limit as usize;
        files.truncate(limit as usize);
        let next_page_token = match files.last() {
            Some(last) if more => page_token::encode(
                &Cursor {
                    created_at: last.created_at,
                    id: last.id.clone(),
                },
                &canon,
            ),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListFilesResponse {
            files: files.iter().map(convert::file).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_file(
        &self,
        request: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::DeleteFileResponse>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        require_id("id", ids::FILE, &id)?;
        self.ctx.file(&caller, &id).await?;
        let file = self.ctx.store.delete_file(&id).await?;
        self.ctx.blobs.delete(&file.blob_key).await?;
        Ok(Response::new(pb::DeleteFileResponse {}))
    }
}
