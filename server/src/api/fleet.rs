//! `tuna.v1.FleetService`: the workers as operators see them (dashboards, `tuna workers`).

use tonic::{Request, Response, Status};
use tuna_proto::ts_from_ms;
use tuna_proto::v1 as pb;
use tuna_proto::v1::fleet_service_server::FleetService;

use super::ApiContext;
use super::page_token::page_size;
use crate::error::ApiError;
use crate::store::WorkerStatus;

/// The fleet service.
pub struct Fleet {
    ctx: ApiContext,
}

impl Fleet {
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }
}

fn worker_info(w: WorkerStatus) -> pb::WorkerInfo {
    // Written by RegisterWorker; rows of older servers lack the keys.
    let caps: serde_json::Value =
        serde_json::from_str(&w.worker.capabilities).unwrap_or(serde_json::Value::Null);
    pb::WorkerInfo {
        device_name: caps
            .get("device_name")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string(),
        free_memory_bytes: caps
            .get("free_memory_bytes")
            .and_then(|v| v.as_i64())
            .unwrap_or_default(),
        id: w.worker.id,
        name: w.worker.name,
        device: w.worker.device,
        memory_bytes: w.worker.memory_bytes,
        current_job_id: w.current_job_id.unwrap_or_default(),
        registered_at: Some(ts_from_ms(w.registered_at)),
        last_seen_at: Some(ts_from_ms(w.last_seen_at)),
    }
}

#[tonic::async_trait]
impl FleetService for Fleet {
    #[tracing::instrument(skip_all)]
    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let req = request.into_inner();
        let limit = page_size("page_size", req.page_size, 100)?;
        let within = match req.seen_within_ms {
            0 => None,
            ms if ms < 0 => {
                return Err(
                    ApiError::field("seen_within_ms", format!("must be >= 0, got {ms}")).into(),
                );
            }
            ms => Some(ms),
        };
        let workers = self.ctx.store.list_workers(within, limit).await?;
        Ok(Response::new(pb::ListWorkersResponse {
            workers: workers.into_iter().map(worker_info).collect(),
        }))
    }
}
