//! The SQL shared by both backends, written once, one file per aggregate.
//!
//! `impl_store!` expands the [`Store`](super::Store) implementation for a concrete sqlx
//! database. Both schemas are identical and both drivers accept `$N` placeholders, so every
//! query is the same text; what differs is passed in: the row-locking suffix of the claim
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL, nothing on SQLite where `BEGIN IMMEDIATE` already
//! serializes writers), the plain row lock of other read-modify-writes, and the backend's
//! inherent `begin`, `notify_in_tx` and `try_lead` methods.
//!
//! Each aggregate file holds a `sql_<aggregate>!` macro that `impl_store!` expands in the
//! backend's module: its row helpers and one free function per `Store` method, named after the
//! method and taking the store first. The trait impl below only forwards to them, because
//! `async_trait` must see every method body in one `impl` block. Items of macro expansions
//! share the backend module's namespace, so the files call each other's helpers directly.

#[macro_use]
mod artifacts;
#[macro_use]
mod files;
#[macro_use]
mod history;
#[macro_use]
mod jobs;
#[macro_use]
mod keys;
#[macro_use]
mod leadership;
#[macro_use]
mod lofi;
#[macro_use]
mod models;
#[macro_use]
mod queue;
#[macro_use]
mod retention;
#[macro_use]
mod sweeps;
#[macro_use]
mod workers;

/// Columns of `jobs` read into a `JobRecord`, in `job_from_row` order.
macro_rules! job_columns {
    () => {
        "id, state, spec, attempt, max_attempts, lease_expires_at, worker_id, run_after, \
         failure_kind, failure_message, sweep_id, request_id, last_seq, created_at, updated_at, \
         started_at, finished_at, lease_token, request_hash, trace_context, tenant, \
         parent_job_id, shard_index"
    };
}

/// A retry of a SYSTEM failure goes to another worker than the one that failed (`$4`) unless it
/// has been claimable for `retry_elsewhere_ms` (`$5` = now minus that); docs/design.md §3.5.
macro_rules! elsewhere {
    () => {
        "(avoid_worker_id IS NULL OR avoid_worker_id <> $4 OR run_after <= $5)"
    };
}

/// A lo-fi job is claimable (for its merge step) only when every shard succeeded; a job
/// without shards trivially is.
macro_rules! shards_done {
    () => {
        "NOT EXISTS (SELECT 1 FROM jobs shard WHERE shard.parent_job_id = jobs.id \
         AND shard.state <> 'succeeded')"
    };
}

macro_rules! artifact_columns {
    () => {
        "id, job_id, attempt, kind, step, name, size_bytes, sha256, blob_key, created_at"
    };
}

macro_rules! file_columns {
    () => {
        "id, tenant, name, purpose, format, size_bytes, sha256, line_count, blob_key, created_at"
    };
}

macro_rules! sweep_columns {
    () => {
        "id, tenant, state, spec, message, request_id, last_seq, created_at, updated_at, finished_at"
    };
}

macro_rules! trial_columns {
    () => {
        "sweep_id, trial, run, job_id, params, budget, resume, reported_seq, steps, last_value, \
         stop_requested, observed, objective, cost, failed, created_at"
    };
}

macro_rules! impl_store {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
        use std::collections::BTreeMap;

        use sqlx::{QueryBuilder, Row};

        use $crate::domain::ids;
        use $crate::domain::queue::{self, StopEarly};
        use $crate::domain::spec::JobSpec;
        use $crate::domain::transitions::{self, Action, SweepCancel, Transition};
        use $crate::domain::{
            ArtifactKind, DatasetFormat, FailureKind, FilePurpose, JobState, ModelFormat, Outcome,
            SweepState,
        };
        use $crate::store::notify::{JOB_CHANNEL, QUEUE_CHANNEL};
        use $crate::store::{
            ApiKeyRecord, ArtifactRecord, Cursor, EventRecord, FailReply, Fence, FileRecord,
            HeartbeatReply, JobFilter, JobRecord, Lease, MetricInput, MetricRecord, MetricsReply,
            ModelFileRecord, ModelRecord, NewArtifact, NewJob, Result, StoreError, SweepAdvance,
            SweepEventRecord, SweepRecord, TrialRecord, UpdateRecord, WorkerRecord, WorkerStatus,
        };

        type Tx = sqlx::Transaction<'static, $Db>;
        type DbRow = <$Db as sqlx::Database>::Row;

        fn corrupt(table: &'static str, detail: impl Into<String>) -> StoreError {
            StoreError::Corrupt {
                table,
                detail: detail.into(),
            }
        }

        fn parse_text<T>(
            table: &'static str,
            value: &str,
            parse: fn(&str) -> Option<T>,
        ) -> Result<T> {
            parse(value).ok_or_else(|| corrupt(table, format!("unknown value {value:?}")))
        }

        /// Keyset pagination of newest-first listings: rows strictly after `after`.
        fn push_after(q: &mut QueryBuilder<$Db>, after: Option<&Cursor>) {
            if let Some(c) = after {
                q.push(" AND (created_at < ")
                    .push_bind(c.created_at)
                    .push(" OR (created_at = ")
                    .push_bind(c.created_at)
                    .push(" AND id < ")
                    .push_bind(c.id.clone())
                    .push("))");
            }
        }

        sql_jobs!($Store, $Db, lock = $LOCK, skip_locked = $SKIP);
        sql_queue!($Store, $Db, lock = $LOCK, skip_locked = $SKIP);
        sql_history!($Store, $Db, lock = $LOCK, skip_locked = $SKIP);
        sql_workers!($Store, $Db, lock = $LOCK, skip_locked = $SKIP);
        sql_files!($Store, $Db, lock = $LOCK, skip_locked = $SKIP);
        sql_models!($Store, $Db, lock = $LOCK, skip_locked = $SKIP);
        sql_artifacts!($Store, $Db, lock = $LOCK, skip_locked = $SKIP);
        sql_sweeps!($Store, $Db, lock = $LOCK, skip_locked = $SKIP);
        sql_leadership!($Store, $Db, lock = $LOCK, skip_locked = $SKIP);
        sql_lofi!($Store, $Db, lock = $LOCK, skip_locked = $SKIP);
        sql_retention!($Store, $Db, lock = $LOCK, skip_locked = $SKIP);
        sql_keys!($Store, $Db, lock = $LOCK, skip_locked = $SKIP);

        #[tonic::async_trait]
        impl $crate::store::Store for $Store {
            async fn create_job(&self, job: NewJob) -> Result<(JobRecord, bool)> {
                create_job(self, job).await
            }

            async fn get_job(&self, id: &str) -> Result<JobRecord> {
                get_job(self, id).await
            }

            async fn list_shards(&self, parent_id: &str) -> Result<Vec<JobRecord>> {
                list_shards(self, parent_id).await
            }

            async fn list_stalled_lofi(&self) -> Result<Vec<JobRecord>> {
                list_stalled_lofi(self).await
            }

            async fn fail_waiting_job(
                &self,
                id: &str,
                kind: FailureKind,
                message: &str,
            ) -> Result<JobRecord> {
                fail_waiting_job(self, id, kind, message).await
            }

            async fn list_jobs(
                &self,
                filter: &JobFilter,
                after: Option<&Cursor>,
                limit: u32,
            ) -> Result<Vec<JobRecord>> {
                list_jobs(self, filter, after, limit).await
            }

            async fn cancel_job(&self, id: &str) -> Result<JobRecord> {
                cancel_job(self, id).await
            }

            async fn pause_job(&self, id: &str) -> Result<JobRecord> {
                pause_job(self, id).await
            }

            async fn resume_job(&self, id: &str) -> Result<JobRecord> {
                resume_job(self, id).await
            }

            async fn register_worker(
                &self,
                key_id: &str,
                name: &str,
                device: &str,
                memory_bytes: i64,
                capabilities: &str,
            ) -> Result<WorkerRecord> {
                register_worker(self, key_id, name, device, memory_bytes, capabilities).await
            }

            async fn get_worker(&self, id: &str) -> Result<WorkerRecord> {
                get_worker(self, id).await
            }

            async fn list_workers(
                &self,
                seen_within_ms: Option<i64>,
                limit: u32,
            ) -> Result<Vec<WorkerStatus>> {
                list_workers(self, seen_within_ms, limit).await
            }

            async fn claim_job(&self, worker: &WorkerRecord) -> Result<Option<Lease>> {
                claim_job(self, worker).await
            }

            async fn heartbeat(&self, fence: Fence<'_>) -> Result<HeartbeatReply> {
                heartbeat(self, fence).await
            }

            async fn request_stop_early(&self, id: &str, reason: &str) -> Result<JobRecord> {
                request_stop_early(self, id, reason).await
            }

            async fn record_metrics(
                &self,
                fence: Fence<'_>,
                points: &[MetricInput],
            ) -> Result<MetricsReply> {
                record_metrics(self, fence, points).await
            }

            async fn complete_job(&self, fence: Fence<'_>, outcome: Outcome) -> Result<JobState> {
                complete_job(self, fence, outcome).await
            }

            async fn fail_job(
                &self,
                fence: Fence<'_>,
                kind: FailureKind,
                message: &str,
            ) -> Result<FailReply> {
                fail_job(self, fence, kind, message).await
            }

            async fn reap_expired(&self) -> Result<u64> {
                reap_expired(self).await
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn list_updates(
                &self,
                job_id: &str,
                after_seq: i64,
                limit: u32,
            ) -> Result<Vec<UpdateRecord>> {
                list_updates(self, job_id, after_seq, limit).await
            }

            async fn list_events(
                &self,
                job_id: &str,
                after_seq: i64,
                limit: u32,
            ) -> Result<Vec<EventRecord>> {
                list_events(self, job_id, after_seq, limit).await
            }

            async fn insert_file(&self, f: &FileRecord) -> Result<()> {
                insert_file(self, f).await
            }

            async fn get_file(&self, id: &str) -> Result<FileRecord> {
                get_file(self, id).await
            }

            async fn list_files(
                &self,
                tenant: &str,
                purpose: Option<FilePurpose>,
                after: Option<&Cursor>,
                limit: u32,
            ) -> Result<Vec<FileRecord>> {
                list_files(self, tenant, purpose, after, limit).await
            }

            async fn delete_file(&self, id: &str) -> Result<FileRecord> {
                delete_file(self, id).await
            }

            async fn insert_model(
                &self,
                tenant: &str,
                name: &str,
                format: ModelFormat,
                files: &[(String, String)],
            ) -> Result<ModelRecord> {
                insert_model(self, tenant, name, format, files).await
            }

            async fn get_model(&self, tenant: &str, name: &str) -> Result<ModelRecord> {
                get_model(self, tenant, name).await
            }

            async fn list_models(&self, tenant: &str) -> Result<Vec<ModelRecord>> {
                list_models(self, tenant).await
            }

            async fn delete_model(&self, tenant: &str, name: &str) -> Result<()> {
                delete_model(self, tenant, name).await
            }

            async fn insert_artifact(
                &self,
                fence: Fence<'_>,
                a: &NewArtifact,
            ) -> Result<ArtifactRecord> {
                insert_artifact(self, fence, a).await
            }

            async fn get_artifact(&self, id: &str) -> Result<ArtifactRecord> {
                get_artifact(self, id).await
            }

            async fn list_artifacts(
                &self,
                job_id: &str,
                kind: Option<ArtifactKind>,
            ) -> Result<Vec<ArtifactRecord>> {
                list_artifacts(self, job_id, kind).await
            }

            async fn create_sweep(
                &self,
                tenant: &str,
                spec: &[u8],
                request_id: Option<&str>,
            ) -> Result<(SweepRecord, bool)> {
                create_sweep(self, tenant, spec, request_id).await
            }

            async fn get_sweep(&self, id: &str) -> Result<SweepRecord> {
                get_sweep(self, id).await
            }

            async fn list_sweeps(
                &self,
                tenant: &str,
                after: Option<&Cursor>,
                limit: u32,
            ) -> Result<Vec<SweepRecord>> {
                list_sweeps(self, tenant, after, limit).await
            }

            async fn list_running_sweeps(&self) -> Result<Vec<SweepRecord>> {
                list_running_sweeps(self).await
            }

            async fn cancel_sweep(&self, id: &str) -> Result<SweepRecord> {
                cancel_sweep(self, id).await
            }

            async fn list_trials(&self, sweep_id: &str) -> Result<Vec<TrialRecord>> {
                list_trials(self, sweep_id).await
            }

            async fn list_sweep_events(&self, sweep_id: &str) -> Result<Vec<SweepEventRecord>> {
                list_sweep_events(self, sweep_id).await
            }

            async fn advance_sweep(&self, step: &SweepAdvance) -> Result<Vec<JobRecord>> {
                advance_sweep(self, step).await
            }

            async fn acquire_leadership(
                &self,
                role: &str,
                holder: &str,
                ttl_ms: i64,
            ) -> Result<bool> {
                acquire_leadership(self, role, holder, ttl_ms).await
            }

            async fn release_leadership(&self, role: &str, holder: &str) -> Result<()> {
                release_leadership(self, role, holder).await
            }

            async fn count_jobs(&self) -> Result<Vec<(JobState, String, i64)>> {
                count_jobs(self).await
            }

            async fn delete_job(&self, id: &str) -> Result<Vec<String>> {
                delete_job(self, id).await
            }

            async fn prune_job_history(
                &self,
                finished_before_ms: i64,
                max_jobs: u32,
            ) -> Result<u64> {
                prune_job_history(self, finished_before_ms, max_jobs).await
            }

            async fn known_blob_keys(
                &self,
                keys: &[String],
            ) -> Result<std::collections::HashSet<String>> {
                known_blob_keys(self, keys).await
            }

            async fn tenant_usage(&self, tenant: &str) -> Result<$crate::store::TenantUsage> {
                tenant_usage(self, tenant).await
            }

            async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
                insert_api_key(self, key).await
            }

            async fn get_api_key(&self, id: &str) -> Result<ApiKeyRecord> {
                get_api_key(self, id).await
            }

            async fn list_api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>> {
                list_api_keys(self, tenant).await
            }

            async fn revoke_api_key(&self, id: &str) -> Result<ApiKeyRecord> {
                revoke_api_key(self, id).await
            }

            fn notifier(&self) -> &$crate::store::Notifier {
                &self.notifier
            }

            fn policy(&self) -> &$crate::store::QueuePolicy {
                &self.policy
            }

            fn clock(&self) -> &std::sync::Arc<dyn $crate::store::Clock> {
                &self.clock
            }
        }
    };
}
