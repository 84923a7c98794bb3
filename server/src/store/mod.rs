//! Durable state: the job queue with leases, events, metrics, files and artifacts.
//!
//! One [`Store`] trait, two backends with the same schema and (nearly) the same SQL:
//! [`postgres::PgStore`] for production and [`sqlite::SqliteStore`] for the embedded default.
//! The shared queries live once in [`sql`]; only the claim's row locking, transaction start and
//! cross-process notification differ. The conformance suite in `server/tests/` runs against both.

#[macro_use]
mod sql;
mod clock;
mod notify;
pub mod postgres;
mod retry;
pub mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use clock::{Clock, ManualClock, SystemClock};
pub use notify::Notifier;
pub use retry::QueuePolicy;

use crate::domain::spec::JobSpec;
use crate::domain::{
    ArtifactKind, DatasetFormat, Directive, FailureKind, FilePurpose, JobState, ModelFormat,
    Outcome, SweepState,
};

/// Errors of the store; mapped to gRPC codes once, in `crate::error`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("job {id} is {state}: cannot {action}")]
    InvalidTransition {
        id: String,
        state: JobState,
        action: &'static str,
    },
    #[error("lease lost: job {job_id} is no longer held by this lease token")]
    LeaseLost { job_id: String },
    #[error("request_id {request_id:?} was already used with a different job spec (job {job_id})")]
    IdempotencyConflict { request_id: String, job_id: String },
    #[error("file {file_id} is used by job {job_id}, which is still {state}")]
    FileInUse {
        file_id: String,
        job_id: String,
        state: JobState,
    },
    #[error("{what} is used by {user}")]
    InUse { what: String, user: String },
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("sweep {id} is {state}: cannot cancel")]
    SweepFinished { id: String, state: SweepState },
    /// Another controller advanced the sweep first (optimistic concurrency on its event log).
    #[error("sweep {id} changed concurrently (expected event seq {expected})")]
    SweepConflict { id: String, expected: i64 },
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub tenant: String,
    pub state: JobState,
    pub spec: JobSpec,
    pub attempt: i32,
    pub max_attempts: i32,
    pub lease_expires_at: Option<i64>,
    pub worker_id: Option<String>,
    pub run_after: i64,
    pub failure: Option<(FailureKind, String)>,
    pub sweep_id: Option<String>,
    pub request_id: Option<String>,
    pub last_seq: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// W3C `traceparent` of the request that created the job (claims and training join it).
    pub trace_context: Option<String>,
    /// A lo-fi shard's job and its index.
    pub parent_job_id: Option<String>,
    pub shard_index: Option<i32>,
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub tenant: String,
    pub spec: JobSpec,
    /// Idempotency key: the same key returns the job it created first.
    pub request_id: Option<String>,
    pub sweep_id: Option<String>,
    /// Start from this other job's latest checkpoint when the job has none of its own
    /// (an ASHA promotion resumes the previous run of its trial).
    pub resume_from_job: Option<String>,
    /// W3C `traceparent` of the creating request, when it was traced.
    pub trace_context: Option<String>,
}

/// Filters of `list_jobs`; all must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct JobFilter {
    /// Only this tenant's jobs; None lists every tenant's (internal callers).
    pub tenant: Option<String>,
    pub states: Vec<JobState>,
    pub labels: BTreeMap<String, String>,
    pub sweep_id: Option<String>,
}

/// Keyset cursor for newest-first listings: the last row of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: String,
}

/// Identifies the attempt a worker write belongs to.
#[derive(Clone, Copy)]
pub struct Fence<'a> {
    pub job_id: &'a str,
    pub lease_token: &'a str,
}

/// The token is a credential for the attempt: spans and logs get the job only.
impl std::fmt::Debug for Fence<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("job_id", &self.job_id)
            .field("lease_token", &"<redacted>")
            .finish()
    }
}

/// A worker as registered.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRecord {
    pub id: String,
    /// The API key it registered with: only that key may act as this worker.
    pub key_id: String,
    pub name: String,
    pub device: String,
    pub memory_bytes: i64,
    /// The full capabilities as JSON (cached models, disk).
    pub capabilities: String,
}

/// A worker as operators see it: when it was last seen and what it runs now.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    pub worker: WorkerRecord,
    pub registered_at: i64,
    pub last_seen_at: i64,
    /// The job whose lease it holds, if any.
    pub current_job_id: Option<String>,
}

/// A claimed job: what the worker needs to run the attempt.
#[derive(Clone)]
pub struct Lease {
    pub job: JobRecord,
    pub lease_token: String,
    pub expires_at: i64,
    /// The newest committed checkpoint, to resume from.
    pub resume_from: Option<ArtifactRecord>,
    /// The job was taken over from an attempt whose lease expired.
    pub reclaimed: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("job", &self.job)
            .field("lease_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("resume_from", &self.resume_from)
            .field("reclaimed", &self.reclaimed)
            .finish()
    }
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub directive: Directive,
    pub expires_at: i64,
}

/// What a metrics report stored, and the directive, so a worker that reports often learns
/// of a stop sooner than its next heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsReply {
    pub last_seq: i64,
    pub directive: Directive,
}

/// Kept here too: the API and the store's users have always found it under `store`.
pub use crate::domain::queue::directive_for;

/// What a failure did to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailReply {
    pub state: JobState,
    pub will_retry: bool,
    pub run_after: i64,
}

/// One metric point as reported by a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricInput {
    pub step: i64,
    pub values: BTreeMap<String, f64>,
    /// Worker-side time; the server's clock when absent.
    pub time: Option<i64>,
}

/// A job event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub seq: i64,
    pub kind: String,
    pub state: JobState,
    pub message: String,
    pub attempt: i32,
    pub created_at: i64,
}

/// A stored metric point.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRecord {
    pub seq: i64,
    pub step: i64,
    pub attempt: i32,
    pub values: BTreeMap<String, f64>,
    pub created_at: i64,
}

/// One entry of a job's history, in `seq` order.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateRecord {
    Event(EventRecord),
    Metrics(MetricRecord),
}

impl UpdateRecord {
    pub fn seq(&self) -> i64 {
        match self {
            UpdateRecord::Event(e) => e.seq,
            UpdateRecord::Metrics(m) => m.seq,
        }
    }
}

/// A committed file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRecord {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub purpose: FilePurpose,
    pub format: Option<DatasetFormat>,
    pub size_bytes: i64,
    pub sha256: String,
    pub line_count: i64,
    pub blob_key: String,
    pub created_at: i64,
}

/// An artifact to commit for the lease holder's attempt.
#[derive(Debug, Clone)]
pub struct NewArtifact {
    pub id: String,
    pub kind: ArtifactKind,
    pub step: i64,
    pub name: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub blob_key: String,
}

/// A committed artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactRecord {
    pub id: String,
    pub job_id: String,
    pub attempt: i32,
    pub kind: ArtifactKind,
    pub step: i64,
    pub name: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub blob_key: String,
    pub created_at: i64,
}

/// One file of a registered model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFileRecord {
    /// Path inside the model folder.
    pub path: String,
    pub file: FileRecord,
}

/// A registered base model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRecord {
    pub tenant: String,
    pub name: String,
    pub format: ModelFormat,
    /// Sorted by path.
    pub files: Vec<ModelFileRecord>,
    pub created_at: i64,
}

/// A sweep as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRecord {
    pub id: String,
    pub tenant: String,
    pub state: SweepState,
    /// The validated `tuna.v1.SweepSpec`, protobuf-encoded.
    pub spec: Vec<u8>,
    pub message: String,
    pub request_id: Option<String>,
    /// Number of events in the sweep's log.
    pub last_seq: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// A tenant's QUEUED jobs and stored bytes (files, and its jobs' artifacts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TenantUsage {
    pub queued_jobs: u64,
    pub stored_bytes: i64,
}

/// A stored API key (never its secret).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant: String,
    pub role: crate::domain::access::Role,
    pub name: String,
    pub secret_sha256: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// One call made on a sweep's search algorithm, in the order it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepEventRecord {
    pub seq: i64,
    pub kind: String,
    pub payload: String,
}

/// One run of a trial.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRecord {
    pub sweep_id: String,
    pub trial: i64,
    pub run: i32,
    /// None when the suggestion was dropped (max_trials reached).
    pub job_id: Option<String>,
    /// The searched parameters as JSON.
    pub params: String,
    pub budget: Option<f64>,
    pub resume: bool,
    pub reported_seq: i64,
    pub steps: i64,
    pub last_value: Option<f64>,
    pub stop_requested: bool,
    pub observed: bool,
    pub objective: Option<f64>,
    pub cost: Option<f64>,
    pub failed: bool,
    pub created_at: i64,
}

/// A new run to insert with its job (None: a dropped suggestion, no job).
#[derive(Debug, Clone)]
pub struct NewTrial {
    pub trial: i64,
    pub run: i32,
    pub params: String,
    pub budget: Option<f64>,
    pub resume: bool,
    pub job: Option<NewJob>,
}

/// Progress of a running trial: metric reports consumed up to `reported_seq`.
#[derive(Debug, Clone)]
pub struct TrialProgress {
    pub trial: i64,
    pub run: i32,
    pub reported_seq: i64,
    pub steps: i64,
    pub last_value: Option<f64>,
    /// The algorithm decided to stop this run early.
    pub stop_requested: bool,
}

/// A finished run's result as fed to the algorithm.
#[derive(Debug, Clone)]
pub struct TrialResult {
    pub trial: i64,
    pub run: i32,
    pub objective: Option<f64>,
    pub cost: f64,
    pub failed: bool,
}

/// One controller step of a sweep, applied atomically and only if the sweep's event log is
/// still at `expected_seq` (so two controllers can never both apply a step).
#[derive(Debug, Clone, Default)]
pub struct SweepAdvance {
    pub sweep_id: String,
    pub expected_seq: i64,
    /// `(kind, payload)` appended with seq `expected_seq + 1 ..`.
    pub events: Vec<(String, String)>,
    pub progress: Vec<TrialProgress>,
    pub results: Vec<TrialResult>,
    pub new_trials: Vec<NewTrial>,
    /// End the sweep in this state with this message.
    pub finish: Option<(SweepState, String)>,
}

/// The durable state behind the API. Every method is one transaction.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a QUEUED job with its `created` event; with a `request_id` that was seen before,
    /// returns the earlier job and `false` (or `IdempotencyConflict` if the spec differs).
    async fn create_job(&self, job: NewJob) -> Result<(JobRecord, bool)>;
    async fn get_job(&self, id: &str) -> Result<JobRecord>;
    /// A lo-fi job's shards, by shard index (empty for other jobs).
    async fn list_shards(&self, parent_id: &str) -> Result<Vec<JobRecord>>;
    /// lo-fi jobs still waiting (queued or paused) although a shard failed or was cancelled.
    async fn list_stalled_lofi(&self) -> Result<Vec<JobRecord>>;
    /// Fails a job that holds no lease (queued or paused); any other state is returned as is.
    async fn fail_waiting_job(
        &self,
        id: &str,
        kind: FailureKind,
        message: &str,
    ) -> Result<JobRecord>;
    /// Newest first, strictly after `after` in that order.
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<JobRecord>>;
    async fn cancel_job(&self, id: &str) -> Result<JobRecord>;
    async fn pause_job(&self, id: &str) -> Result<JobRecord>;
    async fn resume_job(&self, id: &str) -> Result<JobRecord>;

    async fn register_worker(
        &self,
        key_id: &str,
        name: &str,
        device: &str,
        memory_bytes: i64,
        capabilities: &str,
    ) -> Result<WorkerRecord>;
    async fn get_worker(&self, id: &str) -> Result<WorkerRecord>;
    /// Most recently seen first; with `seen_within_ms`, only workers seen that recently.
    async fn list_workers(
        &self,
        seen_within_ms: Option<i64>,
        limit: u32,
    ) -> Result<Vec<WorkerStatus>>;
    /// Claims the best job the worker can run: QUEUED and due, or RUNNING with an expired lease
    /// (reclaimed with attempt + 1). Highest priority first, then oldest.
    async fn claim_job(&self, worker: &WorkerRecord) -> Result<Option<Lease>>;
    async fn heartbeat(&self, fence: Fence<'_>) -> Result<HeartbeatReply>;
    /// Asks the worker of a RUNNING job to stop early (sweep early stopping); the next
    /// heartbeat (or metrics report) answers STOP_EARLY. Idempotent; other states are `InvalidTransition`.
    async fn request_stop_early(&self, id: &str, reason: &str) -> Result<JobRecord>;
    /// Appends metric points, one `seq` each; returns the last seq and the job's directive.
    async fn record_metrics(
        &self,
        fence: Fence<'_>,
        points: &[MetricInput],
    ) -> Result<MetricsReply>;
    async fn complete_job(&self, fence: Fence<'_>, outcome: Outcome) -> Result<JobState>;
    async fn fail_job(
        &self,
        fence: Fence<'_>,
        kind: FailureKind,
        message: &str,
    ) -> Result<FailReply>;
    /// Finishes what expired leases left behind: RUNNING goes back to the queue (or FAILED when
    /// attempts are used up), CANCELLING to CANCELLED, PAUSING to PAUSED. Returns the count.
    /// On PostgreSQL only one replica reaps at a time.
    async fn reap_expired(&self) -> Result<u64>;

    /// One round trip to the database (readiness).
    async fn ping(&self) -> Result<()>;

    /// Events and metric points with `seq > after_seq`, at most `limit`, in `seq` order.
    async fn list_updates(
        &self,
        job_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<UpdateRecord>>;
    async fn list_events(
        &self,
        job_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>>;

    async fn insert_file(&self, file: &FileRecord) -> Result<()>;
    async fn get_file(&self, id: &str) -> Result<FileRecord>;
    async fn list_files(
        &self,
        tenant: &str,
        purpose: Option<FilePurpose>,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<FileRecord>>;
    /// Deletes the row and returns it (the caller deletes the blob); refused while an active
    /// job uses the file.
    async fn delete_file(&self, id: &str) -> Result<FileRecord>;

    /// Registers `name` over existing files (`(path, file_id)` pairs); `NotFound` names a
    /// missing file, `AlreadyExists` a taken name.
    async fn insert_model(
        &self,
        tenant: &str,
        name: &str,
        format: ModelFormat,
        files: &[(String, String)],
    ) -> Result<ModelRecord>;
    async fn get_model(&self, tenant: &str, name: &str) -> Result<ModelRecord>;
    async fn list_models(&self, tenant: &str) -> Result<Vec<ModelRecord>>;
    /// Refused while an active job names the model; the files stay.
    async fn delete_model(&self, tenant: &str, name: &str) -> Result<()>;

    /// Commits an artifact for the lease holder's attempt.
    async fn insert_artifact(
        &self,
        fence: Fence<'_>,
        artifact: &NewArtifact,
    ) -> Result<ArtifactRecord>;
    async fn get_artifact(&self, id: &str) -> Result<ArtifactRecord>;
    async fn list_artifacts(
        &self,
        job_id: &str,
        kind: Option<ArtifactKind>,
    ) -> Result<Vec<ArtifactRecord>>;

    /// Inserts a RUNNING sweep; with a `request_id` seen before, returns the earlier sweep and
    /// `false` (or `IdempotencyConflict` if the spec differs).
    async fn create_sweep(
        &self,
        tenant: &str,
        spec: &[u8],
        request_id: Option<&str>,
    ) -> Result<(SweepRecord, bool)>;
    async fn get_sweep(&self, id: &str) -> Result<SweepRecord>;
    /// Newest first, strictly after `after`.
    async fn list_sweeps(
        &self,
        tenant: &str,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<SweepRecord>>;
    /// The sweeps a controller must drive, oldest first.
    async fn list_running_sweeps(&self) -> Result<Vec<SweepRecord>>;
    /// RUNNING -> CANCELLED (no-op when already cancelled; other terminal states are
    /// `InvalidTransition`). The caller cancels the trial jobs.
    async fn cancel_sweep(&self, id: &str) -> Result<SweepRecord>;
    /// Runs in (trial, run) order.
    async fn list_trials(&self, sweep_id: &str) -> Result<Vec<TrialRecord>>;
    /// The whole event log, in seq order.
    async fn list_sweep_events(&self, sweep_id: &str) -> Result<Vec<SweepEventRecord>>;
    /// Applies one controller step atomically (events, trial updates, new trial jobs, end of
    /// the sweep); `SweepConflict` if the log moved on or the sweep is no longer running.
    async fn advance_sweep(&self, step: &SweepAdvance) -> Result<Vec<JobRecord>>;
    /// Takes or renews the lease on a singleton role; true while `holder` leads.
    async fn acquire_leadership(&self, role: &str, holder: &str, ttl_ms: i64) -> Result<bool>;
    /// Gives the role up (graceful shutdown), so another replica takes over at once.
    async fn release_leadership(&self, role: &str, holder: &str) -> Result<()>;

    /// Number of jobs per state and device (pairs without jobs are absent).
    async fn count_jobs(&self) -> Result<Vec<(JobState, String, i64)>>;

    /// Deletes a finished job that is not a sweep trial, with its labels, history and artifact
    /// rows; returns the artifacts' blob keys for the caller to remove. `InvalidTransition`
    /// while the job is not finished, `InUse` for a trial.
    async fn delete_job(&self, id: &str) -> Result<Vec<String>>;
    /// Removes the metric points and events of up to `max_jobs` jobs that finished before
    /// `finished_before_ms` (one batch, one transaction); returns the rows removed.
    async fn prune_job_history(&self, finished_before_ms: i64, max_jobs: u32) -> Result<u64>;
    /// Which of `keys` a file or artifact row still names (the orphan-blob collector).
    async fn known_blob_keys(&self, keys: &[String]) -> Result<std::collections::HashSet<String>>;

    /// What a tenant holds now, for its quotas.
    async fn tenant_usage(&self, tenant: &str) -> Result<TenantUsage>;

    /// Stores a new key (its secret only as a digest).
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()>;
    /// The key with this id, revoked or not.
    async fn get_api_key(&self, id: &str) -> Result<ApiKeyRecord>;
    /// Newest first; only `tenant`'s keys when given.
    async fn list_api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>>;
    /// Marks the key revoked (idempotent: the first revocation time stays).
    async fn revoke_api_key(&self, id: &str) -> Result<ApiKeyRecord>;

    /// Wake-ups for long-polls and watches.
    fn notifier(&self) -> &Notifier;
    /// Lease and retry timing.
    fn policy(&self) -> &QueuePolicy;
    /// The store's clock (a manual one in tests).
    fn clock(&self) -> &Arc<dyn Clock>;
}

/// Opens the store named by a URL (`postgres://...` or `sqlite://path`) and migrates it.
pub async fn open(url: &str, policy: QueuePolicy, clock: Arc<dyn Clock>) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PgStore::connect(url, policy, clock).await?,
        ))
    } else {
        Ok(Arc::new(
            sqlite::SqliteStore::connect(url, policy, clock).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Store functions are traced with their arguments (`instrument(skip(store))`), so a
    /// fence's Debug is what reaches spans and logs.
    #[test]
    fn lease_tokens_never_reach_debug_output_or_spans() {
        let fence = Fence {
            job_id: "job_1",
            lease_token: "lease-secret-token",
        };
        let text = format!("{fence:?}");
        assert!(text.contains("job_1"));
        assert!(!text.contains("lease-secret-token"), "{text}");
    }
}
