//! `tuna.v1.WorkerService`: how workers pull jobs, report progress and hand back results.

use std::time::Duration;

use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tuna_proto::v1 as pb;
use tuna_proto::v1::worker_service_server::WorkerService;
use tuna_proto::{ts_from_ms, ts_to_ms};

use super::{
    ApiContext, caller, convert, merges, next_within, receive_blob, require_id, require_name,
    require_sha256, require_size,
};
use crate::domain::spec::Task;
use crate::domain::{ArtifactKind, Directive, FailureKind, Outcome, ids};
use crate::error::ApiError;
use crate::store::{Fence, FileRecord, Lease, MetricInput, NewArtifact, StoreError};

type InputStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::DownloadInputResponse, Status>> + Send>,
>;

/// Most metric points per ReportMetrics call.
pub const MAX_POINTS_PER_REPORT: usize = 1000;

/// The worker service.
pub struct Workers {
    ctx: ApiContext,
}

impl Workers {
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }

    /// Counts a job that reached a terminal state, with its duration since the first claim.
    async fn record_finish(&self, job_id: &str, state: crate::domain::JobState) {
        if !state.is_terminal() {
            return;
        }
        let seconds = match self.ctx.store.get_job(job_id).await {
            Ok(j) => j
                .started_at
                .zip(j.finished_at)
                .map(|(s, f)| (f - s) as f64 / 1000.0),
            Err(_) => None,
        };
        self.ctx.metrics.job_finished(state, seconds);
    }

    /// A job succeeds only with what it ran for: an adapter (or merged model) that this
    /// attempt uploaded. A worker (or a worker credential) cannot mark a job done without it.
    async fn require_final_artifact(&self, job_id: &str) -> Result<(), ApiError> {
        let store = &self.ctx.store;
        let job = store.get_job(job_id).await?;
        for kind in [ArtifactKind::Adapter, ArtifactKind::Merged] {
            let artifacts = store.list_artifacts(job_id, Some(kind)).await?;
            if artifacts.iter().any(|a| a.attempt == job.attempt) {
                return Ok(());
            }
        }
        Err(ApiError::Precondition(format!(
            "job {job_id} attempt {} has no final adapter: upload it (UploadArtifact, kind \
             ADAPTER) before CompleteJob(SUCCEEDED), or end the attempt with FailJob",
            job.attempt
        )))
    }

    /// Attaches the model and dataset files the worker must download. A job whose model or
    /// files are gone can never run: it fails as a USER failure (no retry) instead of being
    /// handed out, and `None` is returned.
    async fn resolve(&self, lease: Lease) -> Result<Option<pb::Lease>, ApiError> {
        let store = &self.ctx.store;
        let spec = &lease.job.spec;
        let missing = |e: StoreError| match e {
            StoreError::NotFound { kind, id } => Ok(format!("{kind} {id} does not exist")),
            other => Err(ApiError::from(other)),
        };
        let tenant = &lease.job.tenant;
        let model = match store.get_model(tenant, &spec.base_model).await {
            Ok(m) => Ok(m),
            Err(StoreError::NotFound { .. }) => Err(format!(
                "base model {:?} is not registered (tuna models register)",
                spec.base_model
            )),
            Err(e) => return Err(e.into()),
        };
        // Only the job's own tenant's files: another tenant's are as missing as a deleted one.
        let own = |r: Result<FileRecord, StoreError>| match r {
            Ok(f) if f.tenant != *tenant => Err(StoreError::NotFound {
                kind: "file",
                id: f.id,
            }),
            other => other,
        };
        // A merge job trains nothing: its inputs are its sources' adapters instead.
        let training = match spec.task {
            Task::Merge => None,
            Task::CausalLm | Task::Classification | Task::Preference => {
                Some(own(store.get_file(&spec.training_file).await))
            }
        };
        let validation = match &spec.validation_file {
            Some(v) => Some(own(store.get_file(v).await)),
            None => None,
        };
        let sources = self.merge_sources(&lease.job).await?;
        let problem = match (&model, training, validation, sources) {
            (Err(why), _, _, _) => Some(why.clone()),
            (_, Some(Err(e)), _, _) | (_, _, Some(Err(e)), _) => Some(missing(e)?),
            (_, _, _, Err(why)) => Some(why),
            (Ok(_), t, v, Ok(sources)) => {
                let model = model.as_ref().map(convert::model).ok();
                return Ok(Some(pb::Lease {
                    job_id: lease.job.id.clone(),
                    attempt: lease.job.attempt,
                    lease_token: lease.lease_token,
                    expires_at: Some(ts_from_ms(lease.expires_at)),
                    spec: Some(spec.to_proto()),
                    resume_from: lease.resume_from.as_ref().map(convert::artifact),
                    model,
                    training_file: t.and_then(Result::ok).as_ref().map(convert::file),
                    validation_file: v.and_then(Result::ok).as_ref().map(convert::file),
                    trace_parent: lease.job.trace_context.clone().unwrap_or_default(),
                    merge_sources: sources.iter().map(convert::artifact).collect(),
                    shard: lease.job.shard_index.map(|index| pb::Shard {
                        index,
                        count: spec.replicas,
                    }),
                }));
            }
        };
        let message = problem.unwrap_or_default();
        tracing::warn!(job = %lease.job.id, %message, "job cannot run; failing it");
        let fence = Fence {
            job_id: &lease.job.id,
            lease_token: &lease.lease_token,
        };
        store.fail_job(fence, FailureKind::User, &message).await?;
        Ok(None)
    }
}

impl Workers {
    /// The adapters a merge job (its sources, in spec order) or a lo-fi job (its shards, in
    /// shard order) merges, or why the merge can no longer run (a source or its adapter was
    /// deleted since `CreateJob`).
    async fn merge_sources(
        &self,
        job: &crate::store::JobRecord,
    ) -> Result<Result<Vec<crate::store::ArtifactRecord>, String>, ApiError> {
        let store = self.ctx.store.as_ref();
        let sources = merges::source_ids(store, job).await?;
        let mut out = Vec::with_capacity(sources.len());
        for id in &sources {
            let source = match store.get_job(id).await {
                Ok(s) if s.tenant == job.tenant => s,
                Ok(_) | Err(StoreError::NotFound { .. }) => {
                    return Ok(Err(format!("merge source job {id} no longer exists")));
                }
                Err(e) => return Err(e.into()),
            };
            match merges::final_adapter(store, &source).await? {
                Some(a) => out.push(a),
                None => return Ok(Err(format!("merge source job {id} has no adapter left"))),
            }
        }
        Ok(Ok(out))
    }
}

fn fence<'a>(job_id: &'a str, lease_token: &'a str) -> Result<Fence<'a>, ApiError> {
    require_id("job_id", ids::JOB, job_id)?;
    if lease_token.is_empty() || lease_token.len() > 64 {
        return Err(ApiError::field(
            "lease_token",
            "is required (from AcquireJob)",
        ));
    }
    Ok(Fence {
        job_id,
        lease_token,
    })
}

fn directive(d: Directive) -> pb::Directive {
    match d {
        Directive::Continue => pb::Directive::Continue,
        Directive::Cancel => pb::Directive::Cancel,
        Directive::Pause => pb::Directive::Pause,
        Directive::StopEarly => pb::Directive::StopEarly,
    }
}

fn metric_inputs(points: Vec<pb::MetricPoint>) -> Result<Vec<MetricInput>, ApiError> {
    if points.is_empty() || points.len() > MAX_POINTS_PER_REPORT {
        return Err(ApiError::field(
            "points",
            format!(
                "must hold 1..={MAX_POINTS_PER_REPORT} points, got {}",
                points.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(points.len());
    for (i, p) in points.into_iter().enumerate() {
        if p.step < 0 {
            return Err(ApiError::field(
                &format!("points[{i}].step"),
                "must be >= 0",
            ));
        }
        if p.values.is_empty() {
            return Err(ApiError::field(&format!("points[{i}].values"), "is empty"));
        }
        for (name, value) in &p.values {
            if name.is_empty() || name.len() > 64 {
                return Err(ApiError::field(
                    &format!("points[{i}].values"),
                    format!("metric name {name:?} must be 1..=64 characters"),
                ));
            }
            if !value.is_finite() {
                return Err(ApiError::field(
                    &format!("points[{i}].values[{name:?}]"),
                    format!("must be finite, got {value}"),
                ));
            }
        }
        out.push(MetricInput {
            step: p.step,
            values: p.values.into_iter().collect(),
            time: p.time.as_ref().map(ts_to_ms),
        });
    }
    Ok(out)
}

#[tonic::async_trait]
impl WorkerService for Workers {
    type DownloadInputStream = InputStream;

    #[tracing::instrument(skip_all, fields(job = %request.get_ref().job_id))]
    async fn download_input(
        &self,
        request: Request<pb::DownloadInputRequest>,
    ) -> Result<Response<Self::DownloadInputStream>, Status> {
        let req = request.into_inner();
        let f = fence(&req.job_id, &req.lease_token)?;
        // The lease must be held now (a download is the holder's activity, so it renews it).
        self.ctx.store.heartbeat(f).await?;
        let job = self.ctx.store.get_job(&req.job_id).await?;
        let store = &self.ctx.store;
        let (header, blob_key) = match req.input {
            Some(pb::download_input_request::Input::FileId(id)) => {
                require_id("file_id", ids::FILE, &id)?;
                let spec = &job.spec;
                let named = spec.training_file == id
                    || spec.validation_file.as_deref() == Some(id.as_str());
                // A database error is an error (retried by the worker), never "not yours".
                let of_model = !named
                    && match store.get_model(&job.tenant, &spec.base_model).await {
                        Ok(m) => m.files.iter().any(|mf| mf.file.id == id),
                        Err(StoreError::NotFound { .. }) => false,
                        Err(e) => return Err(ApiError::from(e).into()),
                    };
                if !named && !of_model {
                    // Indistinguishable from a missing file: a worker learns nothing else.
                    return Err(ApiError::from(StoreError::NotFound { kind: "file", id }).into());
                }
                let file = store.get_file(&id).await?;
                let key = file.blob_key.clone();
                (
                    pb::download_input_response::Data::File(convert::file(&file)),
                    key,
                )
            }
            Some(pb::download_input_request::Input::ArtifactId(id)) => {
                require_id("artifact_id", ids::ARTIFACT, &id)?;
                let not_found = || {
                    ApiError::from(StoreError::NotFound {
                        kind: "artifact",
                        id: id.clone(),
                    })
                };
                let artifact = match store.get_artifact(&id).await {
                    Ok(a) => a,
                    Err(StoreError::NotFound { .. }) => return Err(not_found().into()),
                    Err(e) => return Err(ApiError::from(e).into()),
                };
                // Its own checkpoints, (an ASHA promotion) those of a run of its sweep, or (a
                // merge) its sources' final adapters.
                let own = artifact.job_id == job.id;
                let same_sweep = !own
                    && job.sweep_id.is_some()
                    && match store.get_job(&artifact.job_id).await {
                        Ok(other) => other.sweep_id == job.sweep_id,
                        Err(StoreError::NotFound { .. }) => false,
                        Err(e) => return Err(ApiError::from(e).into()),
                    };
                let source = !own
                    && !same_sweep
                    && merges::is_source_adapter(store.as_ref(), &job, &artifact)
                        .await
                        .map_err(ApiError::from)?;
                if !(own || same_sweep || source) {
                    return Err(not_found().into());
                }
                let key = artifact.blob_key.clone();
                (
                    pb::download_input_response::Data::Artifact(convert::artifact(&artifact)),
                    key,
                )
            }
            None => return Err(ApiError::field("input", "name a file_id or an artifact_id").into()),
        };
        let body = self.ctx.blobs.read(&blob_key).await?;
        let first =
            futures::stream::once(
                async move { Ok(pb::DownloadInputResponse { data: Some(header) }) },
            );
        let chunks = super::rechunk(body).map(|r| {
            r.map(|chunk| pb::DownloadInputResponse {
                data: Some(pb::download_input_response::Data::Chunk(chunk)),
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(first.chain(chunks))))
    }

    #[tracing::instrument(skip_all)]
    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        if req.name.is_empty() || req.name.len() > 128 {
            return Err(ApiError::field("name", "must be 1..=128 characters").into());
        }
        let caps = req.capabilities.unwrap_or_default();
        if !["cpu", "cuda"].contains(&caps.device.as_str()) {
            return Err(ApiError::field(
                "capabilities.device",
                format!("must be cpu or cuda, got {:?}", caps.device),
            )
            .into());
        }
        if caps.memory_bytes < 0 || caps.free_disk_bytes < 0 {
            return Err(ApiError::field("capabilities", "sizes must be >= 0").into());
        }
        if caps.free_memory_bytes < 0 {
            return Err(ApiError::field("capabilities.free_memory_bytes", "must be >= 0").into());
        }
        if caps.device_name.chars().count() > 128 {
            return Err(ApiError::field(
                "capabilities.device_name",
                "must be at most 128 characters",
            )
            .into());
        }
        let json = serde_json::json!({
            "device": caps.device,
            "memory_bytes": caps.memory_bytes,
            "free_disk_bytes": caps.free_disk_bytes,
            "cached_models": caps.cached_models,
            "device_name": caps.device_name,
            "free_memory_bytes": caps.free_memory_bytes,
        })
        .to_string();
        let worker = self
            .ctx
            .store
            .register_worker(
                &caller.key_id,
                &req.name,
                &caps.device,
                caps.memory_bytes,
                &json,
            )
            .await?;
        let lease_ms = self.ctx.store.policy().lease_ms;
        tracing::info!(worker = %worker.id, name = %worker.name, "worker registered");
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker_id: worker.id,
            lease_duration_ms: lease_ms,
            heartbeat_interval_ms: (lease_ms / 3).max(1),
        }))
    }

    #[tracing::instrument(skip_all, fields(worker))]
    async fn acquire_job(
        &self,
        request: Request<pb::AcquireJobRequest>,
    ) -> Result<Response<pb::AcquireJobResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        require_id("worker_id", ids::WORKER, &req.worker_id)?;
        tracing::Span::current().record("worker", req.worker_id.as_str());
        let max_wait = self.ctx.limits.max_acquire_wait_ms;
        if !(0..=max_wait).contains(&req.wait_ms) {
            return Err(
                ApiError::field("wait_ms", format!("must be between 0 and {max_wait}")).into(),
            );
        }
        let store = &self.ctx.store;
        let worker = store.get_worker(&req.worker_id).await?;
        if *worker.key_id != *caller.key_id {
            // Only the credential a worker registered with may act as it.
            return Err(ApiError::PermissionDenied(format!(
                "worker {} was registered with another key; register this worker with your own",
                worker.id
            ))
            .into());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms as u64);
        let poll = Duration::from_millis(self.ctx.limits.poll_interval_ms);
        let mut stopping = self.ctx.shutdown.clone();
        loop {
            // Register for a wake-up before looking, so a job queued in between is not missed.
            let notified = store.notifier().queue().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let started = std::time::Instant::now();
            let claimed = store.claim_job(&worker).await?;
            self.ctx
                .metrics
                .claim_finished(started.elapsed().as_secs_f64());
            if let Some(lease) = claimed {
                if lease.reclaimed {
                    self.ctx.metrics.leases_lost(1);
                }
                // The claim is a step of the job's trace (the long-poll belongs to the worker's).
                let claim = tracing::info_span!(
                    "claim",
                    job = %lease.job.id,
                    attempt = lease.job.attempt,
                    worker = %worker.id
                );
                if let Some(tp) = &lease.job.trace_context {
                    tuna_telemetry::propagation::continue_from_traceparent(&claim, tp);
                }
                claim.in_scope(|| tracing::info!("job claimed"));
                match self.resolve(lease).await? {
                    Some(lease) => {
                        return Ok(Response::new(pb::AcquireJobResponse { lease: Some(lease) }));
                    }
                    // The job was failed for its user; look for the next one at once.
                    None => continue,
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Response::new(pb::AcquireJobResponse { lease: None }));
            }
            let wait = poll.min(deadline - now);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
                // Shutting down: answer "nothing now" so the drain is not held open.
                _ = stopping.wait_for(|s| *s) => {
                    return Ok(Response::new(pb::AcquireJobResponse { lease: None }));
                }
            }
        }
    }

    #[tracing::instrument(skip_all, fields(job = %request.get_ref().job_id))]
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let f = fence(&req.job_id, &req.lease_token)?;
        let reply = self.ctx.store.heartbeat(f).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            directive: directive(reply.directive) as i32,
            lease_expires_at: Some(ts_from_ms(reply.expires_at)),
        }))
    }

    #[tracing::instrument(skip_all, fields(job = %request.get_ref().job_id))]
    async fn report_metrics(
        &self,
        request: Request<pb::ReportMetricsRequest>,
    ) -> Result<Response<pb::ReportMetricsResponse>, Status> {
        let req = request.into_inner();
        let f = fence(&req.job_id, &req.lease_token)?;
        let points = metric_inputs(req.points)?;
        for p in &points {
            if let Some(v) = p.values.get(tuna_spec::metrics::TOKENS_PER_S) {
                self.ctx.metrics.tokens_per_s(*v);
            }
        }
        let reply = self.ctx.store.record_metrics(f, &points).await?;
        Ok(Response::new(pb::ReportMetricsResponse {
            last_seq: reply.last_seq,
            directive: directive(reply.directive) as i32,
        }))
    }

    #[tracing::instrument(skip_all, fields(job))]
    async fn upload_artifact(
        &self,
        request: Request<Streaming<pb::UploadArtifactRequest>>,
    ) -> Result<Response<pb::Artifact>, Status> {
        let mut stream = request.into_inner();
        let idle = Duration::from_millis(self.ctx.limits.upload_idle_timeout_ms);
        let header = match next_within(&mut stream, idle).await? {
            Some(Ok(pb::UploadArtifactRequest {
                data: Some(pb::upload_artifact_request::Data::Header(h)),
            })) => h,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(
                    ApiError::field("header", "the first message must carry the header").into(),
                );
            }
        };
        tracing::Span::current().record("job", header.job_id.as_str());
        let f = fence(&header.job_id, &header.lease_token)?;
        let kind = convert::artifact_kind_from("header.kind", header.kind, false)?
            .ok_or_else(|| ApiError::field("header.kind", "is required"))?;
        if header.step < 0 {
            return Err(ApiError::field("header.step", "must be >= 0").into());
        }
        require_name("header.name", &header.name)?;
        require_size("header.size_bytes", header.size_bytes, &self.ctx.limits)?;
        require_sha256("header.sha256", &header.sha256)?;
        // Refuse a stale lease before streaming possibly gigabytes.
        self.ctx.store.heartbeat(f).await?;
        let chunks = stream.map(|m| match m {
            Ok(pb::UploadArtifactRequest {
                data: Some(pb::upload_artifact_request::Data::Chunk(c)),
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
        let id = ids::new_id(ids::ARTIFACT);
        let key = format!("artifacts/{}/{id}", header.job_id);
        let received = receive_blob(
            blobs,
            &key,
            chunks,
            header.size_bytes,
            &header.sha256,
            None,
            idle,
        )
        .await?;
        let new = NewArtifact {
            blob_key: key,
            id,
            kind,
            step: header.step,
            name: header.name,
            size_bytes: header.size_bytes,
            sha256: received.blob.sha256,
        };
        match self.ctx.store.insert_artifact(f, &new).await {
            Ok(record) => Ok(Response::new(convert::artifact(&record))),
            Err(e) => {
                // The lease was lost while uploading: the bytes belong to nobody.
                let _ = blobs.delete(&new.blob_key).await;
                Err(ApiError::from(e).into())
            }
        }
    }

    #[tracing::instrument(skip_all, fields(job = %request.get_ref().job_id))]
    async fn complete_job(
        &self,
        request: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        let req = request.into_inner();
        let f = fence(&req.job_id, &req.lease_token)?;
        let outcome = match pb::Outcome::try_from(req.outcome) {
            Ok(pb::Outcome::Succeeded) => Outcome::Succeeded,
            Ok(pb::Outcome::Cancelled) => Outcome::Cancelled,
            Ok(pb::Outcome::Paused) => Outcome::Paused,
            Ok(pb::Outcome::Released) => Outcome::Released,
            _ => {
                return Err(ApiError::field(
                    "outcome",
                    "must be SUCCEEDED, CANCELLED, PAUSED or RELEASED",
                )
                .into());
            }
        };
        if outcome == Outcome::Succeeded {
            self.require_final_artifact(&req.job_id).await?;
        }
        let state = self.ctx.store.complete_job(f, outcome).await?;
        self.record_finish(&req.job_id, state).await;
        Ok(Response::new(pb::CompleteJobResponse {
            state: convert::job_state(state) as i32,
        }))
    }

    #[tracing::instrument(skip_all, fields(job = %request.get_ref().job_id))]
    async fn fail_job(
        &self,
        request: Request<pb::FailJobRequest>,
    ) -> Result<Response<pb::FailJobResponse>, Status> {
        let req = request.into_inner();
        let f = fence(&req.job_id, &req.lease_token)?;
        let kind = match pb::FailureKind::try_from(req.kind) {
            Ok(pb::FailureKind::User) => FailureKind::User,
            Ok(pb::FailureKind::System) => FailureKind::System,
            _ => return Err(ApiError::field("kind", "must be USER or SYSTEM").into()),
        };
        if req.message.is_empty() || req.message.len() > 4096 {
            return Err(ApiError::field("message", "must be 1..=4096 characters").into());
        }
        let reply = self.ctx.store.fail_job(f, kind, &req.message).await?;
        if reply.will_retry {
            self.ctx.metrics.retry_scheduled();
        }
        self.record_finish(&req.job_id, reply.state).await;
        Ok(Response::new(pb::FailJobResponse {
            state: convert::job_state(reply.state) as i32,
            will_retry: reply.will_retry,
            run_after: Some(ts_from_ms(reply.run_after)),
        }))
    }
}
