//! `tuna.v1.ModelService`: the registry of base models jobs can name.

use std::collections::HashSet;

use tonic::{Request, Response, Status};
use tuna_proto::v1 as pb;
use tuna_proto::v1::model_service_server::ModelService;

use super::{ApiContext, caller, convert, require_id, require_name};
use crate::domain::{FilePurpose, ModelFormat, ids};
use crate::error::ApiError;
use crate::store::StoreError;

/// The model service.
pub struct Models {
    ctx: ApiContext,
}

impl Models {
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }
}

/// Model names: 1..=128 characters of [a-z0-9._-], starting with a letter or digit.
pub fn require_model_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!(
                "{name:?} must be 1..=128 characters of [a-z0-9._-] starting with a letter or digit"
            ),
        ))
    }
}

/// Checks that the paths make a layout the worker can load.
fn require_layout(format: ModelFormat, paths: &HashSet<&str>) -> Result<(), ApiError> {
    match format {
        ModelFormat::Hf => {
            if !paths.contains("config.json") {
                return Err(ApiError::field("files", "an HF model needs config.json"));
            }
            if !paths.contains("model.safetensors")
                && !paths.contains("model.safetensors.index.json")
            {
                return Err(ApiError::field(
                    "files",
                    "an HF model needs model.safetensors or model.safetensors.index.json",
                ));
            }
            Ok(())
        }
        ModelFormat::Gguf => {
            let gguf = paths.iter().filter(|p| p.ends_with(".gguf")).count();
            if gguf != 1 {
                return Err(ApiError::field(
                    "files",
                    format!("a GGUF model needs exactly one .gguf file, got {gguf}"),
                ));
            }
            Ok(())
        }
    }
}

#[tonic::async_trait]
impl ModelService for Models {
    #[tracing::instrument(skip_all, fields(model = %request.get_ref().name))]
    async fn register_model(
        &self,
        request: Request<pb::RegisterModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        require_model_name("name", &req.name)?;
        let format = match pb::ModelFormat::try_from(req.format) {
            Ok(pb::ModelFormat::Hf) => ModelFormat::Hf,
            Ok(pb::ModelFormat::Gguf) => ModelFormat::Gguf,
            _ => return Err(ApiError::field("format", "must be HF or GGUF").into()),
        };
        if req.files.is_empty() || req.files.len() > 256 {
            return Err(ApiError::field("files", "must list 1..=256 files").into());
        }
        let mut paths = HashSet::new();
        let mut pairs = Vec::with_capacity(req.files.len());
        for (i, f) in req.files.iter().enumerate() {
            require_name(&format!("files[{i}].path"), &f.path)?;
            if !paths.insert(f.path.as_str()) {
                return Err(ApiError::field(
                    &format!("files[{i}].path"),
                    format!("{} is listed twice", f.path),
                )
                .into());
            }
            let field = format!("files[{i}].file_id");
            require_id(&field, ids::FILE, &f.file_id)?;
            match self.ctx.file(&caller, &f.file_id).await {
                Ok(file) if file.purpose == FilePurpose::Model => {}
                Ok(file) => {
                    return Err(ApiError::field(
                        &field,
                        format!(
                            "file {} is a {} file, not a model file",
                            file.id, file.purpose
                        ),
                    )
                    .into());
                }
                Err(ApiError::Store(StoreError::NotFound { .. })) => {
                    return Err(ApiError::field(
                        &field,
                        format!("file {} does not exist", f.file_id),
                    )
                    .into());
                }
                Err(e) => return Err(e.into()),
            }
            pairs.push((f.path.clone(), f.file_id.clone()));
        }
        require_layout(format, &paths)?;
        let model = self
            .ctx
            .store
            .insert_model(&caller.tenant, &req.name, format, &pairs)
            .await?;
        tracing::info!(model = %model.name, files = model.files.len(), "model registered");
        Ok(Response::new(convert::model(&model)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let caller = caller(&request)?;
        let name = request.into_inner().name;
        require_model_name("name", &name)?;
        let model = self.ctx.store.get_model(&caller.tenant, &name).await?;
        Ok(Response::new(convert::model(&model)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let caller = caller(&request)?;
        let models = self.ctx.store.list_models(&caller.tenant).await?;
        Ok(Response::new(pb::ListModelsResponse {
            models: models.iter().map(convert::model).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_model(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let caller = caller(&request)?;
        let name = request.into_inner().name;
        require_model_name("name", &name)?;
        self.ctx.store.delete_model(&caller.tenant, &name).await?;
        Ok(Response::new(pb::DeleteModelResponse {}))
    }
}
