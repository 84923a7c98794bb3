//! The worker agent (docs/design.md §2.4): register, long-poll for a lease, fetch inputs (cached by
//! content hash), run the engine on a blocking thread while heartbeating and streaming metrics,
//! upload checkpoints and the adapter, and end the attempt. Directives (CANCEL, PAUSE,
//! STOP_EARLY), a lost lease and SIGTERM all reach the engine through one [`Control`].

pub mod cache;
pub mod conn;
pub mod device;
mod heartbeat;
mod metrics;
mod settle;

pub mod runner;

pub mod upload;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use tuna_client::pack;
use tuna_proto::v1 as pb;
use tuna_spec::{JobSpec, Task};

use cache::{Cache, CacheError};
use conn::Conn;
pub use runner::{
    Control, JobInputs, JobRunner, Part, Progress, Reporter, RunError, RunOutcome, Stop,
};

/// Agent failures that end the agent (per-job failures are reported to the server instead).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    #[error("registration refused: {0}")]
    Register(tonic::Status),
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Control plane URL, for example http://127.0.0.1:50051.
    pub server: String,
    /// The worker token: the only secret a worker needs (inputs come through its lease).
    pub worker_token: Option<String>,
    /// PEM CA of an `https://` server with a private CA.
    pub ca_file: Option<PathBuf>,
    pub name: String,
    /// cpu or cuda.
    pub device: String,
    pub memory_bytes: i64,
    pub cache_dir: PathBuf,
    /// Longest AcquireJob long-poll.
    pub acquire_wait: Duration,
    /// How often buffered metrics are sent.
    pub metrics_every: Duration,
    /// Stop after this many jobs (tests and one-shot runs); `None` runs until shutdown.
    pub max_jobs: Option<usize>,
}

impl AgentConfig {
    /// The `[worker]` section of the shared config file. An empty name means the host name,
    /// empty secrets mean none, and `max_jobs = 0` runs until shutdown.
    pub fn from_section(w: &tuna_config::Worker) -> Self {
        let secret = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Self {
            server: w.server.clone(),
            worker_token: secret(&w.token),
            ca_file: (!w.ca_file.as_os_str().is_empty()).then(|| w.ca_file.clone()),
            name: if w.name.is_empty() {
                host_name()
            } else {
                w.name.clone()
            },
            device: w.device.clone(),
            memory_bytes: w.memory_bytes,
            cache_dir: w.cache_dir.clone(),
            acquire_wait: Duration::from_millis(w.acquire_wait_ms),
            metrics_every: Duration::from_millis(w.metrics_every_ms),
            max_jobs: (w.max_jobs > 0).then(|| usize::try_from(w.max_jobs).unwrap_or(usize::MAX)),
        }
    }
}

/// This machine's name, for job events.
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// A registered agent.
pub struct Agent {
    config: AgentConfig,
    conn: Conn,
    cache: Cache,
    runner: Arc<dyn JobRunner>,
    /// The device jobs train on.
    device: candle_core::Device,
    worker_id: String,
    lease: Duration,
    heartbeat: Duration,
}

impl Agent {
    /// Registers with the control plane, retrying while it is unreachable.
    pub async fn register(
        config: AgentConfig,
        runner: Arc<dyn JobRunner>,
    ) -> Result<Self, AgentError> {
        let conn = Conn::new(
            &config.server,
            config.worker_token.as_deref(),
            config.ca_file.as_deref(),
        )?;
        let device = device::WorkerDevice::open(&config.device)?;
        tracing::info!(
            device = %device.name,
            total_memory = device.total_memory,
            free_memory = device.free_memory,
            "training device opened"
        );
        let cache = Cache::new(&config.cache_dir)?;
        let mut delay = Duration::from_millis(200);
        loop {
            let req = pb::RegisterWorkerRequest {
                name: config.name.clone(),
                capabilities: Some(pb::WorkerCapabilities {
                    device: device.kind.kind().to_string(),
                    // A configured size wins (to reserve memory); else what the device has.
                    memory_bytes: if config.memory_bytes > 0 {
                        config.memory_bytes
                    } else {
                        device.total_memory
                    },
                    device_name: device.name.clone(),
                    free_memory_bytes: device.free_memory,
                    free_disk_bytes: 0,
                    cached_models: cache.cached_models(),
                }),
            };
            match conn.worker().register_worker(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    tracing::info!(worker = %r.worker_id, "registered with {}", config.server);
                    return Ok(Self {
                        lease: Duration::from_millis(r.lease_duration_ms.max(1) as u64),
                        heartbeat: Duration::from_millis(r.heartbeat_interval_ms.max(1) as u64),
                        worker_id: r.worker_id,
                        config,
                        conn,
                        cache,
                        runner,
                        device: device.device,
                    });
                }
                Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
                    tracing::info!(
                        "control plane not reachable yet ({}); retrying",
                        s.message()
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(s) => return Err(AgentError::Register(s)),
            }
        }
    }

    fn uploader(&self, lease: &pb::Lease) -> upload::Uploader {
        upload::Uploader {
            conn: self.conn.clone(),
            cache: self.cache.clone(),
            job_id: lease.job_id.clone(),
            token: lease.lease_token.clone(),
        }
    }

    /// The id the server gave this worker.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Pulls and runs jobs until `shutdown` flips to true. A job running at shutdown is
    /// drained: checkpointed, released back to the queue, then the agent returns.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
        let mut done_jobs = 0usize;
        let mut delay = Duration::from_millis(200);
        while !*shutdown.borrow() && self.config.max_jobs.is_none_or(|m| done_jobs < m) {
            let req = pb::AcquireJobRequest {
                worker_id: self.worker_id.clone(),
                wait_ms: self.config.acquire_wait.as_millis() as i64,
            };
            let mut client = self.conn.worker();
            let reply = tokio::select! {
                r = client.acquire_job(req) => r,
                _ = shutdown.changed() => break,
            };
            match reply {
                Ok(r) => {
                    delay = Duration::from_millis(200);
                    if let Some(lease) = r.into_inner().lease {
                        self.run_job(lease, shutdown.clone()).await;
                        done_jobs += 1;
                    }
                }
                Err(s) => {
                    tracing::warn!(error = %s, "acquire failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        Ok(())
    }

    /// Runs one leased attempt in a `job` span that continues the trace of the request that
    /// created the job (the lease carries its `traceparent`).
    async fn run_job(&self, lease: pb::Lease, shutdown: watch::Receiver<bool>) {
        let span = tracing::info_span!("job", job = %lease.job_id, attempt = lease.attempt);
        if !lease.trace_parent.is_empty() {
            tuna_telemetry::propagation::continue_from_traceparent(&span, &lease.trace_parent);
        }
        self.run_leased(lease, shutdown).instrument(span).await
    }

    async fn run_leased(&self, lease: pb::Lease, mut shutdown: watch::Receiver<bool>) {
        let control = Arc::new(Control::new());
        let step = Arc::new(AtomicI64::new(0));
        let (done_tx, done_rx) = watch::channel(false);
        let beat = tokio::spawn(
            heartbeat::run(
                self.conn.clone(),
                heartbeat::Lease {
                    job_id: lease.job_id.clone(),
                    token: lease.lease_token.clone(),
                    interval: self.heartbeat,
                    duration: self.lease,
                },
                control.clone(),
                step.clone(),
                done_rx,
            )
            .in_current_span(),
        );
        // SIGTERM while training: drain.
        let drain = {
            let control = control.clone();
            tokio::spawn(async move {
                while shutdown.changed().await.is_ok() {
                    if *shutdown.borrow() {
                        control.request(Stop::Drain);
                        return;
                    }
                }
            })
        };
        let work_dir = self
            .cache
            .tmp_path(&format!("{}-{}", lease.job_id, lease.attempt));
        let result = self.attempt(&lease, &work_dir, control.clone(), step).await;
        self.finish(&lease, &control, result).await;
        let _ = done_tx.send(true);
        let _ = beat.await;
        drain.abort();
        let _ = tokio::fs::remove_dir_all(&work_dir).await;
    }

    /// Fetches the inputs and runs the engine; returns how the run ended.
    async fn attempt(
        &self,
        lease: &pb::Lease,
        work_dir: &std::path::Path,
        control: Arc<Control>,
        step: Arc<AtomicI64>,
    ) -> Result<Finished, RunError> {
        let inputs = self.inputs(lease, work_dir).await?;
        let (metrics_tx, metrics_rx) = mpsc::channel(4096);
        let metrics = tokio::spawn(
            metrics::run(
                self.conn.clone(),
                lease.job_id.clone(),
                lease.lease_token.clone(),
                metrics_rx,
                self.config.metrics_every,
                control.clone(),
            )
            .in_current_span(),
        );
        let (ckpt_tx, ckpt_rx) = mpsc::unbounded_channel();
        // Checkpoints are uploaded while training goes on, so a crash loses at most the steps
        // since the last one.
        let uploader =
            tokio::spawn(upload_checkpoints(self.uploader(lease), ckpt_rx).in_current_span());
        let runner = self.runner.clone();
        let job_span = tracing::Span::current();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut reporter = ChannelReporter {
                metrics: metrics_tx,
                checkpoints: ckpt_tx,
                step,
                job_span,
                sampled_step: None,
            };
            runner.run(&inputs, &control, &mut reporter)
        })
        .await
        .map_err(|e| RunError::System(format!("the training thread panicked: {e}")))?;
        Ok(Finished {
            outcome: outcome?,
            uploader,
            metrics,
        })
    }

    async fn inputs(
        &self,
        lease: &pb::Lease,
        work_dir: &std::path::Path,
    ) -> Result<JobInputs, RunError> {
        let cache_err = |e: CacheError| match e {
            CacheError::Missing(_) => RunError::User(e.to_string()),
            other => RunError::System(other.to_string()),
        };
        // The same decoding the server did at CreateJob; only a server of another version
        // could lease a spec this worker refuses, and then before anything is downloaded.
        let spec = JobSpec::from_proto(lease.spec.as_ref()).map_err(|violations| {
            let described: Vec<String> = violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect();
            RunError::User(format!(
                "this worker cannot run the leased spec: {}",
                described.join("; ")
            ))
        })?;
        let held = cache::LeaseRef {
            job_id: &lease.job_id,
            token: &lease.lease_token,
        };
        let model = lease
            .model
            .as_ref()
            .ok_or_else(|| RunError::User("the lease names no registered model".into()))?;
        let model_dir = self
            .cache
            .model(&self.conn, held, model)
            .await
            .map_err(cache_err)?;
        // A merge job has no training file; every other task needs one.
        let training = match (&lease.training_file, spec.task) {
            (Some(t), _) => Some(t),
            (None, Task::Merge) => None,
            (None, Task::CausalLm | Task::Classification | Task::Preference) => {
                return Err(RunError::User("the lease names no training file".into()));
            }
        };
        let training_file = match training {
            Some(t) => Some(
                self.cache
                    .file(&self.conn, held, t)
                    .await
                    .map_err(cache_err)?,
            ),
            None => None,
        };
        let validation_file = match &lease.validation_file {
            Some(v) => Some(
                self.cache
                    .file(&self.conn, held, v)
                    .await
                    .map_err(cache_err)?,
            ),
            None => None,
        };
        tokio::fs::create_dir_all(work_dir)
            .await
            .map_err(|e| RunError::System(format!("{}: {e}", work_dir.display())))?;
        let resume_from = match &lease.resume_from {
            Some(artifact) => {
                let dir = self.unpacked(held, artifact, work_dir, "resume").await?;
                tracing::info!(checkpoint = %artifact.id, step = artifact.step, "resuming");
                Some(dir)
            }
            None => None,
        };
        let mut merge_sources = Vec::with_capacity(lease.merge_sources.len());
        for (i, artifact) in lease.merge_sources.iter().enumerate() {
            merge_sources.push(
                self.unpacked(held, artifact, work_dir, &format!("source-{i}"))
                    .await?,
            );
        }
        let part = match &lease.shard {
            Some(s) if s.count > 1 && (0..s.count).contains(&s.index) => Part::Shard {
                index: s.index as usize,
                count: s.count as usize,
            },
            Some(s) => {
                return Err(RunError::User(format!(
                    "the lease names shard {} of {}",
                    s.index, s.count
                )));
            }
            None if spec.task != Task::Merge && !merge_sources.is_empty() => Part::Combine,
            None => Part::Whole,
        };
        Ok(JobInputs {
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            spec,
            model_dir,
            model_format: model.format(),
            training_file,
            training_format: training.map_or(pb::DatasetFormat::Unspecified, |t| t.format()),
            validation_file,
            validation_format: lease
                .validation_file
                .as_ref()
                .map_or(pb::DatasetFormat::Unspecified, |v| v.format()),
            resume_from,
            part,
            merge_sources,
            work_dir: work_dir.to_path_buf(),
            device: self.device.clone(),
        })
    }

    /// Downloads a packed artifact of the lease (a checkpoint, a merge source's adapter) and
    /// unpacks it into `work_dir/name`.
    async fn unpacked(
        &self,
        held: cache::LeaseRef<'_>,
        artifact: &pb::Artifact,
        work_dir: &std::path::Path,
        name: &str,
    ) -> Result<std::path::PathBuf, RunError> {
        let tar = work_dir.join(format!("{name}.tar"));
        upload::download_artifact(&self.conn, held, artifact, &tar)
            .await
            .map_err(|e| RunError::System(format!("downloading artifact {}: {e}", artifact.id)))?;
        let dir = work_dir.join(name);
        // The unpack wants a fresh folder; this one is the worker's own scratch space.
        let _ = tokio::fs::remove_dir_all(&dir).await;
        pack::unpack(&tar, &dir)
            .map_err(|e| RunError::System(format!("artifact {}: {e}", artifact.id)))?;
        let _ = tokio::fs::remove_file(&tar).await;
        Ok(dir)
    }

    /// Uploads what the run produced and ends the attempt on the server.
    async fn finish(
        &self,
        lease: &pb::Lease,
        control: &Control,
        result: Result<Finished, RunError>,
    ) {
        let job = &lease.job_id;
        let token = &lease.lease_token;
        let client = self.conn.worker();
        let Finished {
            outcome,
            uploader,
            metrics,
        } = match result {
            Ok(parts) => parts,
            Err(e) => {
                if control.stop_requested() == Some(Stop::LeaseLost) {
                    return;
                }
                let kind = match e {
                    RunError::User(_) => pb::FailureKind::User,
                    RunError::System(_) => pb::FailureKind::System,
                };
                tracing::warn!(error = %e, "job failed");
                let req = pb::FailJobRequest {
                    job_id: job.clone(),
                    lease_token: token.clone(),
                    kind: kind as i32,
                    message: truncate(&e.to_string(), 4096),
                };
                if let Err(s) = self.report_failure(&client, req).await {
                    tracing::warn!(error = %s, "could not report the failure; the lease will expire");
                }
                return;
            }
        };
        let dropped = metrics.await.unwrap_or(0);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "metric points were dropped while the server was unreachable"
            );
        }
        if control.stop_requested() == Some(Stop::LeaseLost) {
            tracing::warn!("lease lost: discarding the run's results");
            return;
        }
        // Every checkpoint is committed before the attempt ends, so a pause or a drain always
        // leaves the newest one behind for the next attempt.
        let _ = uploader.await;
        let (outcome_kind, adapter, merged) = match &outcome {
            RunOutcome::Finished {
                step,
                adapter_dir,
                merged_dir,
            } => (
                pb::Outcome::Succeeded,
                Some((*step, adapter_dir.clone())),
                merged_dir.clone(),
            ),
            RunOutcome::Stopped {
                reason,
                step,
                adapter_dir,
                merged_dir,
            } => match reason {
                Stop::Cancel => (pb::Outcome::Cancelled, None, None),
                Stop::Pause => (pb::Outcome::Paused, None, None),
                Stop::Drain => (pb::Outcome::Released, None, None),
                Stop::StopEarly => match adapter_dir {
                    Some(d) => (
                        pb::Outcome::Succeeded,
                        Some((*step, d.clone())),
                        merged_dir.clone(),
                    ),
                    // The server refuses a success without its adapter.
                    None => {
                        let req = pb::FailJobRequest {
                            job_id: job.clone(),
                            lease_token: token.clone(),
                            kind: pb::FailureKind::User as i32,
                            message: format!(
                                "stopped early at step {step}, before an adapter was written"
                            ),
                        };
                        let _ = self.report_failure(&client, req).await;
                        return;
                    }
                },
                Stop::LeaseLost => return,
            },
        };
        let uploaded = match adapter {
            Some((step, dir)) => {
                let uploader = self.uploader(lease);
                let merged = match &merged {
                    Some(m) => uploader
                        .upload_dir(pb::ArtifactKind::Merged, step, m, "merged.tar")
                        .await
                        .map(drop),
                    None => Ok(()),
                };
                match merged {
                    Ok(()) => uploader
                        .upload_dir(pb::ArtifactKind::Adapter, step, &dir, "adapter.tar")
                        .await
                        .map(drop),
                    Err(e) => Err(e),
                }
            }
            None => Ok(()),
        };
        if let Err(e) = uploaded {
            let req = pb::FailJobRequest {
                job_id: job.clone(),
                lease_token: token.clone(),
                kind: pb::FailureKind::System as i32,
                message: truncate(
                    &format!("uploading the adapter or merged model failed: {e}"),
                    4096,
                ),
            };
            let _ = self.report_failure(&client, req).await;
            return;
        }
        let req = pb::CompleteJobRequest {
            job_id: job.clone(),
            lease_token: token.clone(),
            outcome: outcome_kind as i32,
        };
        let patience = settle::Patience::for_lease(self.lease);
        match settle::settle(patience, || {
            let (mut client, req) = (client.clone(), req.clone());
            async move { client.complete_job(req).await }
        })
        .await
        {
            Ok(r) => tracing::info!(state = ?r.into_inner().state(), "attempt ended"),
            Err(s) => {
                tracing::warn!(error = %s, "could not end the attempt; the lease will expire")
            }
        }
    }

    /// Ends the attempt as failed, retrying through transient errors (see [`settle`]).
    async fn report_failure(
        &self,
        client: &conn::Worker,
        req: pb::FailJobRequest,
    ) -> Result<(), tonic::Status> {
        settle::settle(settle::Patience::for_lease(self.lease), || {
            let (mut client, req) = (client.clone(), req.clone());
            async move { client.fail_job(req).await }
        })
        .await
        .map(drop)
    }
}

/// A run that returned, with the tasks still flushing its output.
struct Finished {
    outcome: RunOutcome,
    uploader: tokio::task::JoinHandle<()>,
    metrics: tokio::task::JoinHandle<u64>,
}

/// Uploads checkpoints in step order until the engine's reporter is dropped.
async fn upload_checkpoints(
    uploader: upload::Uploader,
    mut rx: mpsc::UnboundedReceiver<(i64, PathBuf)>,
) {
    while let Some((step, dir)) = rx.recv().await {
        let name = format!("checkpoint-{step}.tar");
        match uploader
            .upload_dir(pb::ArtifactKind::Checkpoint, step, &dir, &name)
            .await
        {
            Ok(a) => tracing::info!(artifact = %a.id, step, "checkpoint uploaded"),
            Err(e) => tracing::warn!(error = %e, step, "checkpoint upload failed"),
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
}

/// The engine's reporter: never blocks on the network.
/// One training step in this many gets a `train_step` span (a trace of every step would
/// outweigh the training it describes).
const TRACE_EVERY_STEPS: i64 = 50;

struct ChannelReporter {
    metrics: mpsc::Sender<Progress>,
    checkpoints: mpsc::UnboundedSender<(i64, PathBuf)>,
    step: Arc<AtomicI64>,
    /// The attempt's span, parent of the sampled step spans.
    job_span: tracing::Span,
    /// The sampled step in progress: opened when the step before it is reported, closed
    /// (hence timed) when it is reported itself.
    sampled_step: Option<tracing::Span>,
}

impl Reporter for ChannelReporter {
    fn progress(&mut self, p: Progress) {
        self.step.store(p.step, Ordering::Relaxed);
        if let Some(span) = self.sampled_step.take()
            && let Some(loss) = p.values.get("loss")
        {
            span.record("loss", loss);
        }
        if p.step % TRACE_EVERY_STEPS == 0 {
            self.sampled_step = Some(tracing::info_span!(
                parent: &self.job_span,
                "train_step",
                step = p.step + 1,
                loss = tracing::field::Empty
            ));
        }
        // A full buffer means the network is far behind: drop rather than stall training.
        let _ = self.metrics.try_send(p);
    }

    fn checkpoint(&mut self, step: i64, dir: &std::path::Path) {
        let _ = self.checkpoints.send((step, dir.to_path_buf()));
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
