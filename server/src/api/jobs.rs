//! `tuna.v1.JobService`.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};
use tuna_proto::v1 as pb;
use tuna_proto::v1::job_service_server::JobService;

use super::{
    ApiContext, caller, convert, page_token, require_dataset, require_id,
    require_method_fits_model, require_quota,
};
use crate::domain::ids;
use crate::domain::spec::{JobSpec, Task};
use crate::domain::transitions::Action;
use crate::error::ApiError;
use crate::store::{JobFilter, NewJob, UpdateRecord};

/// Largest batch of history read from the store per round of a watch.
const WATCH_BATCH: u32 = 500;

/// The job service.
pub struct Jobs {
    ctx: ApiContext,
}

impl Jobs {
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }
}

/// Most label filters of one `ListJobs`: each is one more SQL condition and bound parameter
/// (SQLite refuses past a few hundred), and a job carries at most 32 labels anyway.
pub const MAX_LABEL_FILTERS: usize = 16;

fn filter_from(tenant: &str, req: &pb::ListJobsRequest) -> Result<JobFilter, ApiError> {
    let mut states = req
        .states
        .iter()
        .map(|s| convert::job_state_from("states", *s))
        .collect::<Result<Vec<_>, _>>()?;
    states.sort_by_key(|s| s.as_str());
    states.dedup();
    if !req.sweep_id.is_empty() && req.sweep_id.len() > 256 {
        return Err(ApiError::field(
            "sweep_id",
            "must be at most 256 characters",
        ));
    }
    if req.labels.len() > MAX_LABEL_FILTERS {
        return Err(ApiError::field(
            "labels",
            format!(
                "at most {MAX_LABEL_FILTERS} label filters, got {}",
                req.labels.len()
            ),
        ));
    }
    if let Some((k, _)) = req
        .labels
        .iter()
        .find(|(k, v)| !tuna_spec::is_label_key(k) || v.len() > 256)
    {
        let shown: String = k.chars().take(63).collect();
        return Err(ApiError::field(
            &format!("labels[{shown:?}]"),
            "label keys are 1..=63 characters of [a-z0-9_.-] (as on jobs) and values at most \
             256 bytes",
        ));
    }
    Ok(JobFilter {
        tenant: Some(tenant.to_string()),
        states,
        labels: req
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        sweep_id: (!req.sweep_id.is_empty()).then(|| req.sweep_id.clone()),
    })
}

fn canonical(filter: &JobFilter) -> String {
    let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
    format!(
        "jobs|{}|{:?}|{}",
        states.join(","),
        filter.labels,
        filter.sweep_id.as_deref().unwrap_or("")
    )
}

/// Waits until `job_id` changes (or the channel lags, which may hide a change).
async fn changed(rx: &mut broadcast::Receiver<std::sync::Arc<str>>, job_id: &str) {
    loop {
        match rx.recv().await {
            Ok(id) if &*id == job_id => return,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => {
                std::future::pending::<()>().await;
            }
        }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::JobUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Jobs {
    #[tracing::instrument(skip_all)]
    async fn create_job(
        &self,
        request: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let spec = JobSpec::from_proto(req.spec.as_ref()).map_err(ApiError::from)?;
        match spec.task {
            Task::CausalLm | Task::Classification | Task::Preference => {
                require_dataset(
                    &self.ctx,
                    &caller,
                    "spec.training_file",
                    &spec.training_file,
                    spec.task,
                )
                .await?;
            }
            Task::Merge => super::merges::check_sources(&self.ctx, &caller, &spec).await?,
        }
        if let Some(v) = &spec.validation_file {
            require_dataset(&self.ctx, &caller, "spec.validation_file", v, spec.task).await?;
        }
        require_method_fits_model(
            &self.ctx,
            &caller,
            "spec.method.type",
            &spec.base_model,
            spec.method.kind(),
        )
        .await?;
        if req.request_id.len() > 128 {
            return Err(ApiError::field("request_id", "must be at most 128 characters").into());
        }
        // A lo-fi job queues its shards with it.
        let queued = 1 + if spec.replicas > 1 {
            spec.replicas as u64
        } else {
            0
        };
        require_quota(&self.ctx, &caller, queued, 0).await?;
        let (job, created) = self
            .ctx
            .store
            .create_job(NewJob {
                tenant: caller.tenant.to_string(),
                spec,
                request_id: (!req.request_id.is_empty()).then_some(req.request_id),
                sweep_id: None,
                resume_from_job: None,
                trace_context: tuna_telemetry::propagation::current_traceparent(),
            })
            .await?;
        tracing::info!(job = %job.id, created, "create job");
        Ok(Response::new(convert::job(&job)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        require_id("id", ids::JOB, &id)?;
        let job = self.ctx.job(&caller, &id).await?;
        Ok(Response::new(convert::job(&job)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let limit =
            page_token::page_size("page_size", req.page_size, page_token::DEFAULT_PAGE_SIZE)?;
        let filter = filter_from(&caller.tenant, &req)?;
        let canon = canonical(&filter);
        let after = page_token::decode(&req.page_token, &canon)?;
        // One extra row tells whether another page exists.
        let mut jobs = self
            .ctx
            .store
            .list_jobs(&filter, after.as_ref(), limit + 1)
            .await?;
        let more = jobs.len() > limit as usize;
        jobs.truncate(limit as usize);
        let next_page_token = match jobs.last() {
            Some(last) if more => page_token::encode(
                &crate::store::Cursor {
                    created_at: last.created_at,
                    id: last.id.clone(),
                },
                &canon,
            ),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(convert::job).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        require_id("id", ids::JOB, &id)?;
        self.ctx.job(&caller, &id).await?;
        let job = self.ctx.store.cancel_job(&id).await?;
        crate::lofi::propagate(self.ctx.store.as_ref(), &job, Action::Cancel).await?;
        Ok(Response::new(convert::job(&job)))
    }

    #[tracing::instrument(skip_all)]
    async fn pause_job(
        &self,
        request: Request<pb::PauseJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        require_id("id", ids::JOB, &id)?;
        self.ctx.job(&caller, &id).await?;
        let job = self.ctx.store.pause_job(&id).await?;
        crate::lofi::propagate(self.ctx.store.as_ref(), &job, Action::Pause).await?;
        Ok(Response::new(convert::job(&job)))
    }

    #[tracing::instrument(skip_all)]
    async fn resume_job(
        &self,
        request: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        require_id("id", ids::JOB, &id)?;
        self.ctx.job(&caller, &id).await?;
        let job = self.ctx.store.resume_job(&id).await?;
        crate::lofi::propagate(self.ctx.store.as_ref(), &job, Action::Resume).await?;
        Ok(Response::new(convert::job(&job)))
    }

    #[tracing::instrument(skip_all, fields(job = %request.get_ref().id))]
    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        require_id("id", ids::JOB, &id)?;
        self.ctx.job(&caller, &id).await?;
        let keys = self.ctx.store.delete_job(&id).await?;
        // The row is gone; a blob that cannot be removed now is an orphan the collector
        // removes later, never a dangling reference.
        for key in &keys {
            if let Err(e) = self.ctx.blobs.delete(key).await {
                tracing::warn!(%key, error = %e, "artifact blob left for the orphan collector");
            }
        }
        tracing::info!(artifacts = keys.len(), "job deleted");
        Ok(Response::new(pb::DeleteJobResponse {}))
    }

    type WatchJobStream = UpdateStream;

    #[tracing::instrument(skip_all)]
    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        require_id("id", ids::JOB, &req.id)?;
        if req.after_seq < 0 {
            return Err(ApiError::field("after_seq", "must be >= 0").into());
        }
        let store = self.ctx.store.clone();
        // Fail fast on an unknown job instead of opening an empty stream.
        self.ctx.job(&caller, &req.id).await?;
        let poll = Duration::from_millis(self.ctx.limits.poll_interval_ms);
        let mut stopping = self.ctx.shutdown.clone();
        let id = req.id;
        let mut after = req.after_seq;
        let stream = async_stream::try_stream! {
            // Subscribe before the first read so no change between read and wait is missed.
            let mut rx = store.notifier().subscribe_jobs();
            loop {
                let updates = store
                    .list_updates(&id, after, WATCH_BATCH)
                    .await?;
                for u in &updates {
                    after = u.seq();
                    yield convert::update(u);
                }
                if updates.len() as u32 == WATCH_BATCH {
                    continue;
                }
                // A terminal state is always the job's last event, so seeing it ends the
                // stream without another query; only an empty read needs to ask the job.
                let ended = match updates.last() {
                    Some(UpdateRecord::Event(e)) => e.state.is_terminal(),
                    Some(UpdateRecord::Metrics(_)) => false,
                    None => {
                        let job = store
                            .get_job(&id)
                            .await?;
                        job.state.is_terminal() && after >= job.last_seq
                    }
                };
                if ended {
                    break;
                }
                let stop = tokio::select! {
                    _ = changed(&mut rx, &id) => false,
                    _ = tokio::time::sleep(poll) => false,
                    _ = stopping.wait_for(|s| *s) => true,
                };
                if stop {
                    Err(Status::unavailable(format!(
                        "server shutting down; reconnect with after_seq = {after}"
                    )))?;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_job_events(
        &self,
        request: Request<pb::ListJobEventsRequest>,
    ) -> Result<Response<pb::ListJobEventsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        require_id("job_id", ids::JOB, &req.job_id)?;
        let limit = page_token::page_size("page_size", req.page_size, 100)?;
        let canon = format!("events|{}", req.job_id);
        let after = page_token::decode(&req.page_token, &canon)?
            .map(|c| c.created_at)
            .unwrap_or(0);
        let store = &self.ctx.store;
        self.ctx.job(&caller, &req.job_id).await?;
        let mut events = store.list_events(&req.job_id, after, limit + 1).await?;
        let more = events.len() > limit as usize;
        events.truncate(limit as usize);
        let next_page_token = match events.last() {
            // The seq is the cursor; the id slot is unused for events.
            Some(last) if more => page_token::encode(
                &crate::store::Cursor {
                    created_at: last.seq,
                    id: String::new(),
                },
                &canon,
            ),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListJobEventsResponse {
            events: events.iter().map(convert::event).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let caller = caller(&request)?;
        let job_id = request.into_inner().job_id;
        require_id("job_id", ids::JOB, &job_id)?;
        let store = &self.ctx.store;
        self.ctx.job(&caller, &job_id).await?;
        let checkpoints = store
            .list_artifacts(&job_id, Some(crate::domain::ArtifactKind::Checkpoint))
            .await?;
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: checkpoints.iter().map(convert::artifact).collect(),
        }))
    }
}
