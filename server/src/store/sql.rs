//! The SQL shared by both backends, written once.
//!
//! `impl_store!` expands the [`Store`](super::Store) implementation for a concrete sqlx
//! database. Both schemas are identical and both drivers accept `$N` placeholders, so every
//! query is the same text; what differs is passed in: the row-locking suffix of the claim
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL, nothing on SQLite where `BEGIN IMMEDIATE` already
//! serializes writers), the plain row lock of other read-modify-writes, and the backend's inherent `begin`, `notify_in_tx` and `try_lead`
//! methods.

/// Columns of `jobs` read into a `JobRecord`, in `job_from_row` order.
macro_rules! job_columns {
    () => {
        "id, state, spec, attempt, max_attempts, lease_expires_at, worker_id, run_after, \
         failure_kind, failure_message, sweep_id, request_id, last_seq, created_at, updated_at, \
         started_at, finished_at, lease_token, request_hash"
    };
}

macro_rules! artifact_columns {
    () => {
        "id, job_id, attempt, kind, step, name, size_bytes, sha256, blob_key, created_at"
    };
}

macro_rules! file_columns {
    () => {
        "id, name, purpose, format, size_bytes, sha256, line_count, blob_key, created_at"
    };
}

macro_rules! sweep_columns {
    () => {
        "id, state, spec, message, request_id, last_seq, created_at, updated_at, finished_at"
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
        use $crate::domain::spec::JobSpec;
        use $crate::domain::transitions::{self, Action, Transition};
        use $crate::domain::{
            ArtifactKind, DatasetFormat, FailureKind, FilePurpose, JobState,
            ModelFormat, Outcome, SweepState,
        };
        use $crate::store::notify::{JOB_CHANNEL, QUEUE_CHANNEL};
        use $crate::store::{
            ArtifactRecord, Cursor, EventRecord, FailReply, Fence, FileRecord, HeartbeatReply,
            JobFilter, JobRecord, Lease, MetricInput, MetricRecord, MetricsReply, ModelFileRecord,
            ModelRecord, NewArtifact, NewJob, Result, StoreError, SweepAdvance, SweepEventRecord,
            SweepRecord, TrialRecord, UpdateRecord, WorkerRecord, directive_for,
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

        struct JobRow {
            job: JobRecord,
            lease_token: Option<String>,
            request_hash: Option<String>,
        }

        fn job_from_row(row: &DbRow) -> Result<JobRow> {
            let spec: String = row.try_get("spec")?;
            let spec: JobSpec = serde_json::from_str(&spec)
                .map_err(|e| corrupt("jobs", format!("spec: {e}")))?;
            let failure_kind: Option<String> = row.try_get("failure_kind")?;
            let failure = match failure_kind {
                Some(k) => Some((
                    parse_text("jobs", &k, FailureKind::parse)?,
                    row.try_get::<Option<String>, _>("failure_message")?
                        .unwrap_or_default(),
                )),
                None => None,
            };
            let state: String = row.try_get("state")?;
            Ok(JobRow {
                job: JobRecord {
                    id: row.try_get("id")?,
                    state: parse_text("jobs", &state, JobState::parse)?,
                    spec,
                    attempt: row.try_get("attempt")?,
                    max_attempts: row.try_get("max_attempts")?,
                    lease_expires_at: row.try_get("lease_expires_at")?,
                    worker_id: row.try_get("worker_id")?,
                    run_after: row.try_get("run_after")?,
                    failure,
                    sweep_id: row.try_get("sweep_id")?,
                    request_id: row.try_get("request_id")?,
                    last_seq: row.try_get("last_seq")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    started_at: row.try_get("started_at")?,
                    finished_at: row.try_get("finished_at")?,
                },
                lease_token: row.try_get("lease_token")?,
                request_hash: row.try_get("request_hash")?,
            })
        }

        fn artifact_from_row(row: &DbRow) -> Result<ArtifactRecord> {
            let kind: String = row.try_get("kind")?;
            Ok(ArtifactRecord {
                id: row.try_get("id")?,
                job_id: row.try_get("job_id")?,
                attempt: row.try_get("attempt")?,
                kind: parse_text("artifacts", &kind, ArtifactKind::parse)?,
                step: row.try_get("step")?,
                name: row.try_get("name")?,
                size_bytes: row.try_get("size_bytes")?,
                sha256: row.try_get("sha256")?,
                blob_key: row.try_get("blob_key")?,
                created_at: row.try_get("created_at")?,
            })
        }

        fn file_from_row(row: &DbRow) -> Result<FileRecord> {
            let purpose: String = row.try_get("purpose")?;
            let format: Option<String> = row.try_get("format")?;
            Ok(FileRecord {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                purpose: parse_text("files", &purpose, FilePurpose::parse)?,
                format: match format {
                    Some(f) => Some(parse_text("files", &f, DatasetFormat::parse)?),
                    None => None,
                },
                size_bytes: row.try_get("size_bytes")?,
                sha256: row.try_get("sha256")?,
                line_count: row.try_get("line_count")?,
                blob_key: row.try_get("blob_key")?,
                created_at: row.try_get("created_at")?,
            })
        }

        fn worker_from_row(row: &DbRow) -> Result<WorkerRecord> {
            Ok(WorkerRecord {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                device: row.try_get("device")?,
                memory_bytes: row.try_get("memory_bytes")?,
                capabilities: row.try_get("capabilities")?,
            })
        }

        fn spec_hash(spec_json: &str) -> String {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(spec_json.as_bytes()))
        }

        /// Appends an event with the job's next `seq`.
        async fn push_event(
            tx: &mut Tx,
            job_id: &str,
            kind: &str,
            state: JobState,
            message: &str,
            attempt: i32,
            now: i64,
        ) -> Result<i64> {
            let seq = next_seq(tx, job_id).await?;
            sqlx::query(
                "INSERT INTO job_events (job_id, seq, kind, state, message, attempt, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(job_id)
            .bind(seq)
            .bind(kind)
            .bind(state.as_str())
            .bind(message)
            .bind(attempt)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            Ok(seq)
        }

        /// Bumps and returns the job's sequence; the row lock also orders concurrent writers.
        async fn next_seq(tx: &mut Tx, job_id: &str) -> Result<i64> {
            let seq: i64 = sqlx::query_scalar(
                "UPDATE jobs SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
            )
            .bind(job_id)
            .fetch_one(&mut **tx)
            .await?;
            Ok(seq)
        }

        async fn lock_job(tx: &mut Tx, id: &str) -> Result<JobRow> {
            let row = sqlx::query(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE id = $1",
                $LOCK
            ))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "job",
                id: id.to_string(),
            })?;
            job_from_row(&row)
        }

        /// Locks the job for a worker write, or fails with `LeaseLost`.
        async fn lock_fenced(tx: &mut Tx, fence: Fence<'_>) -> Result<JobRecord> {
            let lost = || StoreError::LeaseLost {
                job_id: fence.job_id.to_string(),
            };
            let row = lock_job(tx, fence.job_id).await.map_err(|e| match e {
                StoreError::NotFound { .. } => lost(),
                other => other,
            })?;
            if row.lease_token.as_deref() != Some(fence.lease_token) || !row.job.state.is_leased()
            {
                return Err(lost());
            }
            Ok(row.job)
        }

        /// Moves a job to `state`; a non-leased target clears the lease, a terminal one sets
        /// `finished_at`.
        async fn set_state(
            tx: &mut Tx,
            id: &str,
            state: JobState,
            run_after: Option<i64>,
            now: i64,
        ) -> Result<()> {
            let keep_lease = state.is_leased();
            sqlx::query(
                "UPDATE jobs SET state = $2, updated_at = $3, \
                 finished_at = CASE WHEN $4 THEN $3 ELSE NULL END, \
                 run_after = COALESCE($5, run_after), \
                 lease_token = CASE WHEN $6 THEN lease_token ELSE NULL END, \
                 lease_expires_at = CASE WHEN $6 THEN lease_expires_at ELSE NULL END, \
                 worker_id = CASE WHEN $6 THEN worker_id ELSE NULL END \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(state.as_str())
            .bind(now)
            .bind(state.is_terminal())
            .bind(run_after)
            .bind(keep_lease)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        async fn set_failure(
            tx: &mut Tx,
            id: &str,
            kind: FailureKind,
            message: &str,
        ) -> Result<()> {
            sqlx::query("UPDATE jobs SET failure_kind = $2, failure_message = $3 WHERE id = $1")
                .bind(id)
                .bind(kind.as_str())
                .bind(message)
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        async fn latest_checkpoint(tx: &mut Tx, job_id: &str) -> Result<Option<ArtifactRecord>> {
            let row = sqlx::query(concat!(
                "SELECT ",
                artifact_columns!(),
                " FROM artifacts WHERE job_id = $1 AND kind = 'checkpoint' \
                 ORDER BY step DESC, created_at DESC, id DESC LIMIT 1"
            ))
            .bind(job_id)
            .fetch_optional(&mut **tx)
            .await?;
            row.as_ref().map(artifact_from_row).transpose()
        }

        impl $Store {
            async fn transition(&self, id: &str, action: Action) -> Result<JobRecord> {
                let now = self.clock.now_ms();
                let mut tx = self.begin().await?;
                let job = lock_job(&mut tx, id).await?.job;
                let target = match transitions::apply(action, job.state) {
                    Transition::Unchanged => return Ok(job),
                    Transition::Disallowed => {
                        return Err(StoreError::InvalidTransition {
                            id: id.to_string(),
                            state: job.state,
                            action: action.as_str(),
                        });
                    }
                    Transition::To(target) => target,
                };
                let requeue = target == JobState::Queued;
                set_state(&mut tx, id, target, requeue.then_some(now), now).await?;
                let message = format!("{} requested: {} -> {}", action.as_str(), job.state, target);
                push_event(&mut tx, id, "state_changed", target, &message, job.attempt, now)
                    .await?;
                self.notify_in_tx(&mut tx, JOB_CHANNEL, id).await?;
                if requeue {
                    self.notify_in_tx(&mut tx, QUEUE_CHANNEL, "").await?;
                }
                let job = lock_job(&mut tx, id).await?.job;
                tx.commit().await?;
                self.notifier.job_changed(id);
                if requeue {
                    self.notifier.queue_changed();
                }
                Ok(job)
            }

            async fn find_by_request_id(
                &self,
                request_id: &str,
                hash: &str,
            ) -> Result<Option<JobRecord>> {
                let row = sqlx::query(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE tenant = 'default' AND request_id = $1"
                ))
                .bind(request_id)
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let row = job_from_row(&row)?;
                if row.request_hash.as_deref() != Some(hash) {
                    return Err(StoreError::IdempotencyConflict {
                        request_id: request_id.to_string(),
                        job_id: row.job.id,
                    });
                }
                Ok(Some(row.job))
            }

            async fn insert_job(&self, job: &NewJob, spec_json: &str, hash: &str) -> Result<JobRecord> {
                let now = self.clock.now_ms();
                let mut tx = self.begin().await?;
                let id = insert_job_tx(&mut tx, job, spec_json, hash, now).await?;
                self.notify_in_tx(&mut tx, QUEUE_CHANNEL, "").await?;
                self.notify_in_tx(&mut tx, JOB_CHANNEL, &id).await?;
                let job = lock_job(&mut tx, &id).await?.job;
                tx.commit().await?;
                self.notifier.queue_changed();
                self.notifier.job_changed(&id);
                Ok(job)
            }
        }

        /// Inserts a QUEUED job, its labels and its `created` event inside `tx`; returns its id.
        async fn insert_job_tx(
            tx: &mut Tx,
            job: &NewJob,
            spec_json: &str,
            hash: &str,
            now: i64,
        ) -> Result<String> {
            let id = ids::new_id(ids::JOB);
            let spec = &job.spec;
            sqlx::query(
                "INSERT INTO jobs (id, state, spec, base_model, training_file, validation_file, \
                 priority, device, min_memory_bytes, max_attempts, run_after, sweep_id, \
                 request_id, request_hash, created_at, updated_at, resume_from_job) \
                 VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $10, $10, $14)",
            )
            .bind(&id)
            .bind(spec_json)
            .bind(&spec.base_model)
            .bind(&spec.training_file)
            .bind(&spec.validation_file)
            .bind(spec.priority)
            .bind(spec.device.as_str())
            .bind(spec.min_memory_bytes)
            .bind(spec.max_attempts)
            .bind(now)
            .bind(&job.sweep_id)
            .bind(&job.request_id)
            .bind(job.request_id.as_ref().map(|_| hash))
            .bind(&job.resume_from_job)
            .execute(&mut **tx)
            .await?;
            for (key, value) in &spec.labels {
                sqlx::query("INSERT INTO job_labels (job_id, key, value) VALUES ($1, $2, $3)")
                    .bind(&id)
                    .bind(key)
                    .bind(value)
                    .execute(&mut **tx)
                    .await?;
            }
            push_event(tx, &id, "created", JobState::Queued, "job created", 0, now).await?;
            Ok(id)
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

        fn sweep_from_row(row: &DbRow) -> Result<SweepRecord> {
            let state: String = row.try_get("state")?;
            Ok(SweepRecord {
                id: row.try_get("id")?,
                state: parse_text("sweeps", &state, SweepState::parse)?,
                spec: row.try_get("spec")?,
                message: row.try_get("message")?,
                request_id: row.try_get("request_id")?,
                last_seq: row.try_get("last_seq")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                finished_at: row.try_get("finished_at")?,
            })
        }

        fn trial_from_row(row: &DbRow) -> Result<TrialRecord> {
            Ok(TrialRecord {
                sweep_id: row.try_get("sweep_id")?,
                trial: row.try_get("trial")?,
                run: row.try_get("run")?,
                job_id: row.try_get("job_id")?,
                params: row.try_get("params")?,
                budget: row.try_get("budget")?,
                resume: row.try_get("resume")?,
                reported_seq: row.try_get("reported_seq")?,
                steps: row.try_get("steps")?,
                last_value: row.try_get("last_value")?,
                stop_requested: row.try_get("stop_requested")?,
                observed: row.try_get("observed")?,
                objective: row.try_get("objective")?,
                cost: row.try_get("cost")?,
                failed: row.try_get("failed")?,
                created_at: row.try_get("created_at")?,
            })
        }

        async fn find_sweep_by_request_id(
            pool: &sqlx::Pool<$Db>,
            request_id: &str,
            hash: &str,
        ) -> Result<Option<SweepRecord>> {
            let row = sqlx::query(concat!(
                "SELECT ",
                sweep_columns!(),
                ", request_hash FROM sweeps WHERE tenant = 'default' AND request_id = $1"
            ))
            .bind(request_id)
            .fetch_optional(pool)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let sweep = sweep_from_row(&row)?;
            let stored: Option<String> = row.try_get("request_hash")?;
            if stored.as_deref() != Some(hash) {
                return Err(StoreError::IdempotencyConflict {
                    request_id: request_id.to_string(),
                    job_id: sweep.id,
                });
            }
            Ok(Some(sweep))
        }

        #[tonic::async_trait]
        impl $crate::store::Store for $Store {
            #[tracing::instrument(skip_all, fields(request_id = job.request_id.as_deref()))]
            async fn create_job(&self, job: NewJob) -> Result<(JobRecord, bool)> {
                let spec_json = serde_json::to_string(&job.spec)
                    .map_err(|e| corrupt("jobs", format!("spec does not serialize: {e}")))?;
                let hash = spec_hash(&spec_json);
                if let Some(rid) = &job.request_id {
                    if let Some(existing) = self.find_by_request_id(rid, &hash).await? {
                        return Ok((existing, false));
                    }
                }
                match self.insert_job(&job, &spec_json, &hash).await {
                    Ok(created) => Ok((created, true)),
                    // A concurrent create with the same request_id won the race.
                    Err(StoreError::Database(e))
                        if e.as_database_error().is_some_and(|d| d.is_unique_violation()) =>
                    {
                        let rid = job.request_id.as_deref().unwrap_or_default();
                        match self.find_by_request_id(rid, &hash).await? {
                            Some(existing) => Ok((existing, false)),
                            None => Err(StoreError::Database(e)),
                        }
                    }
                    Err(e) => Err(e),
                }
            }

            async fn get_job(&self, id: &str) -> Result<JobRecord> {
                let row = sqlx::query(concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| StoreError::NotFound {
                        kind: "job",
                        id: id.to_string(),
                    })?;
                Ok(job_from_row(&row)?.job)
            }

            async fn list_jobs(
                &self,
                filter: &JobFilter,
                after: Option<&Cursor>,
                limit: u32,
            ) -> Result<Vec<JobRecord>> {
                let mut q = QueryBuilder::<$Db>::new(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE tenant = 'default'"
                ));
                if !filter.states.is_empty() {
                    q.push(" AND state IN (");
                    let mut sep = q.separated(", ");
                    for s in &filter.states {
                        sep.push_bind(s.as_str());
                    }
                    q.push(")");
                }
                if let Some(sweep) = &filter.sweep_id {
                    q.push(" AND sweep_id = ").push_bind(sweep.clone());
                }
                for (k, v) in &filter.labels {
                    q.push(" AND EXISTS (SELECT 1 FROM job_labels l WHERE l.job_id = jobs.id AND l.key = ")
                        .push_bind(k.clone())
                        .push(" AND l.value = ")
                        .push_bind(v.clone())
                        .push(")");
                }
                push_after(&mut q, after);
                q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                    .push_bind(i64::from(limit));
                let rows = q.build().fetch_all(&self.pool).await?;
                rows.iter().map(|r| job_from_row(r).map(|j| j.job)).collect()
            }

            #[tracing::instrument(skip(self))]
            async fn cancel_job(&self, id: &str) -> Result<JobRecord> {
                self.transition(id, Action::Cancel).await
            }

            #[tracing::instrument(skip(self))]
            async fn pause_job(&self, id: &str) -> Result<JobRecord> {
                self.transition(id, Action::Pause).await
            }

            #[tracing::instrument(skip(self))]
            async fn resume_job(&self, id: &str) -> Result<JobRecord> {
                self.transition(id, Action::Resume).await
            }

            async fn register_worker(
                &self,
                name: &str,
                device: &str,
                memory_bytes: i64,
                capabilities: &str,
            ) -> Result<WorkerRecord> {
                let now = self.clock.now_ms();
                let id = ids::new_id(ids::WORKER);
                sqlx::query(
                    "INSERT INTO workers (id, name, device, memory_bytes, capabilities, \
                     registered_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
                )
                .bind(&id)
                .bind(name)
                .bind(device)
                .bind(memory_bytes)
                .bind(capabilities)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(WorkerRecord {
                    id,
                    name: name.to_string(),
                    device: device.to_string(),
                    memory_bytes,
                    capabilities: capabilities.to_string(),
                })
            }

            async fn get_worker(&self, id: &str) -> Result<WorkerRecord> {
                let row = sqlx::query(
                    "UPDATE workers SET last_seen_at = $2 WHERE id = $1 \
                     RETURNING id, name, device, memory_bytes, capabilities",
                )
                .bind(id)
                .bind(self.clock.now_ms())
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "worker",
                    id: id.to_string(),
                })?;
                worker_from_row(&row)
            }

            #[tracing::instrument(skip_all, fields(worker = %worker.id))]
            async fn claim_job(&self, worker: &WorkerRecord) -> Result<Option<Lease>> {
                let now = self.clock.now_ms();
                let mut tx = self.begin().await?;
                let row = sqlx::query(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE ((state = 'queued' AND run_after <= $1) \
                     OR (state = 'running' AND lease_expires_at <= $1 AND attempt < max_attempts)) \
                     AND (device = 'any' OR device = $2) AND min_memory_bytes <= $3 \
                     ORDER BY priority DESC, created_at, id LIMIT 1",
                    $SKIP
                ))
                .bind(now)
                .bind(&worker.device)
                .bind(worker.memory_bytes)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let job = job_from_row(&row)?.job;
                let was_running = job.state == JobState::Running;
                if was_running {
                    let msg = format!("lease of attempt {} expired; job reclaimed", job.attempt);
                    push_event(&mut tx, &job.id, "lease_expired", JobState::Queued, &msg, job.attempt, now)
                        .await?;
                }
                let token = uuid::Uuid::new_v4().to_string();
                let expires_at = now + self.policy.lease_ms;
                sqlx::query(
                    "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = $2, \
                     lease_expires_at = $3, worker_id = $4, started_at = COALESCE(started_at, $5), \
                     updated_at = $5, stop_requested = FALSE WHERE id = $1",
                )
                .bind(&job.id)
                .bind(&token)
                .bind(expires_at)
                .bind(&worker.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let attempt = job.attempt + 1;
                let msg = format!("attempt {attempt} claimed by worker {} ({})", worker.id, worker.name);
                push_event(&mut tx, &job.id, "claimed", JobState::Running, &msg, attempt, now).await?;
                self.notify_in_tx(&mut tx, JOB_CHANNEL, &job.id).await?;
                let mut resume_from = latest_checkpoint(&mut tx, &job.id).await?;
                if resume_from.is_none() {
                    // An ASHA promotion starts from the previous run's checkpoint.
                    let other: Option<String> =
                        sqlx::query_scalar("SELECT resume_from_job FROM jobs WHERE id = $1")
                            .bind(&job.id)
                            .fetch_one(&mut *tx)
                            .await?;
                    if let Some(other) = other {
                        resume_from = latest_checkpoint(&mut tx, &other).await?;
                    }
                }
                let job = lock_job(&mut tx, &job.id).await?.job;
                tx.commit().await?;
                self.notifier.job_changed(&job.id);
                tracing::info!(job = %job.id, attempt, "job claimed");
                Ok(Some(Lease {
                    reclaimed: was_running,
                    job,
                    lease_token: token,
                    expires_at,
                    resume_from,
                }))
            }

            async fn heartbeat(&self, fence: Fence<'_>) -> Result<HeartbeatReply> {
                let expires_at = self.clock.now_ms() + self.policy.lease_ms;
                let row = sqlx::query(
                    "UPDATE jobs SET lease_expires_at = $3 WHERE id = $1 AND lease_token = $2 \
                     AND state IN ('running', 'cancelling', 'pausing') \
                     RETURNING state, stop_requested",
                )
                .bind(fence.job_id)
                .bind(fence.lease_token)
                .bind(expires_at)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StoreError::LeaseLost {
                    job_id: fence.job_id.to_string(),
                })?;
                let state: String = row.try_get("state")?;
                let stop: bool = row.try_get("stop_requested")?;
                let directive = directive_for(parse_text("jobs", &state, JobState::parse)?, stop);
                Ok(HeartbeatReply {
                    directive,
                    expires_at,
                })
            }

            #[tracing::instrument(skip(self))]
            async fn request_stop_early(&self, id: &str, reason: &str) -> Result<JobRecord> {
                let now = self.clock.now_ms();
                let mut tx = self.begin().await?;
                let row = lock_job(&mut tx, id).await?;
                let job = row.job;
                if job.state != JobState::Running {
                    return Err(StoreError::InvalidTransition {
                        id: id.to_string(),
                        state: job.state,
                        action: "stop early",
                    });
                }
                let already: bool = sqlx::query_scalar("SELECT stop_requested FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                if !already {
                    sqlx::query("UPDATE jobs SET stop_requested = TRUE, updated_at = $2 WHERE id = $1")
                        .bind(id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    let msg = format!("stop early requested: {reason}");
                    push_event(&mut tx, id, "stop_early_requested", job.state, &msg, job.attempt, now)
                        .await?;
                    self.notify_in_tx(&mut tx, JOB_CHANNEL, id).await?;
                }
                let job = lock_job(&mut tx, id).await?.job;
                tx.commit().await?;
                self.notifier.job_changed(id);
                Ok(job)
            }

            async fn record_metrics(
                &self,
                fence: Fence<'_>,
                points: &[MetricInput],
            ) -> Result<MetricsReply> {
                let now = self.clock.now_ms();
                let mut tx = self.begin().await?;
                let job = lock_fenced(&mut tx, fence).await?;
                let stop: bool = sqlx::query_scalar("SELECT stop_requested FROM jobs WHERE id = $1")
                    .bind(&job.id)
                    .fetch_one(&mut *tx)
                    .await?;
                let mut last = job.last_seq;
                let mut rows = Vec::new();
                for p in points {
                    last = next_seq(&mut tx, &job.id).await?;
                    for (name, value) in &p.values {
                        rows.push((last, p.step, name, *value, p.time.unwrap_or(now)));
                    }
                }
                // Batched to stay under SQLite's bound-parameter limit.
                for chunk in rows.chunks(500) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO job_metrics (job_id, seq, attempt, step, name, value, created_at) ",
                    );
                    q.push_values(chunk, |mut b, (seq, step, name, value, time)| {
                        b.push_bind(job.id.clone())
                            .push_bind(*seq)
                            .push_bind(job.attempt)
                            .push_bind(*step)
                            .push_bind((*name).clone())
                            .push_bind(*value)
                            .push_bind(*time);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                self.notify_in_tx(&mut tx, JOB_CHANNEL, &job.id).await?;
                tx.commit().await?;
                self.notifier.job_changed(&job.id);
                Ok(MetricsReply {
                    last_seq: last,
                    directive: directive_for(job.state, stop),
                })
            }

            #[tracing::instrument(skip(self), fields(job = fence.job_id))]
            async fn complete_job(&self, fence: Fence<'_>, outcome: Outcome) -> Result<JobState> {
                let now = self.clock.now_ms();
                let mut tx = self.begin().await?;
                let job = lock_fenced(&mut tx, fence).await?;
                use JobState::*;
                let target = match (outcome, job.state) {
                    (Outcome::Succeeded, _) => Succeeded,
                    // A cancel requested meanwhile wins over a pause or a release.
                    (_, Cancelling) => Cancelled,
                    (Outcome::Paused | Outcome::Released, Pausing) => Paused,
                    (Outcome::Released, Running) => Queued,
                    (_, state) => {
                        return Err(StoreError::InvalidTransition {
                            id: job.id,
                            state,
                            action: match outcome {
                                Outcome::Cancelled => "acknowledge a cancel that was not requested",
                                _ => "acknowledge a pause that was not requested",
                            },
                        });
                    }
                };
                let requeue = target == Queued;
                set_state(&mut tx, &job.id, target, requeue.then_some(now), now).await?;
                let msg = format!("attempt {} ended: {}", job.attempt, outcome.as_str());
                push_event(&mut tx, &job.id, outcome.as_str(), target, &msg, job.attempt, now).await?;
                self.notify_in_tx(&mut tx, JOB_CHANNEL, &job.id).await?;
                if requeue {
                    self.notify_in_tx(&mut tx, QUEUE_CHANNEL, "").await?;
                }
                tx.commit().await?;
                self.notifier.job_changed(&job.id);
                if requeue {
                    self.notifier.queue_changed();
                }
                Ok(target)
            }

            #[tracing::instrument(skip(self, message), fields(job = fence.job_id))]
            async fn fail_job(
                &self,
                fence: Fence<'_>,
                kind: FailureKind,
                message: &str,
            ) -> Result<FailReply> {
                let now = self.clock.now_ms();
                let mut tx = self.begin().await?;
                let job = lock_fenced(&mut tx, fence).await?;
                let system = kind == FailureKind::System;
                let retry = system
                    && job.attempt < job.max_attempts
                    && job.state == JobState::Running;
                let (target, run_after) = if job.state == JobState::Cancelling {
                    (JobState::Cancelled, job.run_after)
                } else if system && job.state == JobState::Pausing {
                    // The user asked for a pause: honour it; resuming retries the work.
                    (JobState::Paused, job.run_after)
                } else if retry {
                    let delay = self.policy.retry_delay_ms(&job.id, job.attempt);
                    (JobState::Queued, now + delay)
                } else {
                    (JobState::Failed, job.run_after)
                };
                set_state(&mut tx, &job.id, target, Some(run_after), now).await?;
                set_failure(&mut tx, &job.id, kind, message).await?;
                let msg = if retry {
                    format!(
                        "attempt {} of {} failed ({kind}): {message}; retry after {} ms",
                        job.attempt,
                        job.max_attempts,
                        run_after - now
                    )
                } else {
                    format!("attempt {} failed ({kind}): {message}", job.attempt)
                };
                let event = if retry { "retry_scheduled" } else { "failed" };
                push_event(&mut tx, &job.id, event, target, &msg, job.attempt, now).await?;
                self.notify_in_tx(&mut tx, JOB_CHANNEL, &job.id).await?;
                tx.commit().await?;
                self.notifier.job_changed(&job.id);
                Ok(FailReply {
                    state: target,
                    will_retry: retry,
                    run_after,
                })
            }

            async fn reap_expired(&self) -> Result<u64> {
                let now = self.clock.now_ms();
                let mut tx = self.begin().await?;
                if !self.try_lead(&mut tx).await? {
                    return Ok(0);
                }
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE state IN ('running', 'cancelling', 'pausing') \
                     AND lease_expires_at <= $1 ORDER BY lease_expires_at LIMIT 100",
                    $SKIP
                ))
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                let mut requeued = false;
                let mut changed = Vec::new();
                for row in &rows {
                    let job = job_from_row(row)?.job;
                    let exhausted = job.attempt >= job.max_attempts;
                    let target = match job.state {
                        JobState::Cancelling => JobState::Cancelled,
                        JobState::Pausing => JobState::Paused,
                        _ if exhausted => JobState::Failed,
                        _ => JobState::Queued,
                    };
                    requeued |= target == JobState::Queued;
                    set_state(&mut tx, &job.id, target, Some(now), now).await?;
                    let msg = format!("lease of attempt {} expired; job is now {target}", job.attempt);
                    if target == JobState::Failed {
                        let why = format!(
                            "lease of attempt {} of {} expired (worker lost)",
                            job.attempt, job.max_attempts
                        );
                        set_failure(&mut tx, &job.id, FailureKind::System, &why).await?;
                    }
                    push_event(&mut tx, &job.id, "lease_expired", target, &msg, job.attempt, now)
                        .await?;
                    self.notify_in_tx(&mut tx, JOB_CHANNEL, &job.id).await?;
                    changed.push(job.id);
                }
                if requeued {
                    self.notify_in_tx(&mut tx, QUEUE_CHANNEL, "").await?;
                }
                tx.commit().await?;
                for id in &changed {
                    self.notifier.job_changed(id);
                }
                if requeued {
                    self.notifier.queue_changed();
                }
                Ok(changed.len() as u64)
            }

            async fn list_updates(
                &self,
                job_id: &str,
                after_seq: i64,
                limit: u32,
            ) -> Result<Vec<UpdateRecord>> {
                let upto = after_seq.saturating_add(i64::from(limit));
                let mut updates: Vec<UpdateRecord> = self
                    .events_between(job_id, after_seq, upto)
                    .await?
                    .into_iter()
                    .map(UpdateRecord::Event)
                    .collect();
                let rows = sqlx::query(
                    "SELECT seq, step, attempt, name, value, created_at FROM job_metrics \
                     WHERE job_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq, name",
                )
                .bind(job_id)
                .bind(after_seq)
                .bind(upto)
                .fetch_all(&self.pool)
                .await?;
                let mut current: Option<MetricRecord> = None;
                for row in &rows {
                    let seq: i64 = row.try_get("seq")?;
                    if current.as_ref().is_some_and(|m| m.seq != seq) {
                        updates.extend(current.take().map(UpdateRecord::Metrics));
                    }
                    let m = current.get_or_insert(MetricRecord {
                        seq,
                        step: row.try_get("step")?,
                        attempt: row.try_get("attempt")?,
                        values: BTreeMap::new(),
                        created_at: row.try_get("created_at")?,
                    });
                    m.values.insert(row.try_get("name")?, row.try_get("value")?);
                }
                updates.extend(current.map(UpdateRecord::Metrics));
                updates.sort_by_key(UpdateRecord::seq);
                Ok(updates)
            }

            async fn list_events(
                &self,
                job_id: &str,
                after_seq: i64,
                limit: u32,
            ) -> Result<Vec<EventRecord>> {
                let rows = sqlx::query(
                    "SELECT seq, kind, state, message, attempt, created_at FROM job_events \
                     WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(job_id)
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(event_from_row).collect()
            }

            async fn insert_file(&self, f: &FileRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO files (id, name, purpose, format, size_bytes, sha256, line_count, \
                     blob_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&f.id)
                .bind(&f.name)
                .bind(f.purpose.as_str())
                .bind(f.format.map(|f| f.as_str()))
                .bind(f.size_bytes)
                .bind(&f.sha256)
                .bind(f.line_count)
                .bind(&f.blob_key)
                .bind(f.created_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn get_file(&self, id: &str) -> Result<FileRecord> {
                let row = sqlx::query(concat!("SELECT ", file_columns!(), " FROM files WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| StoreError::NotFound {
                        kind: "file",
                        id: id.to_string(),
                    })?;
                file_from_row(&row)
            }

            async fn list_files(
                &self,
                purpose: Option<FilePurpose>,
                after: Option<&Cursor>,
                limit: u32,
            ) -> Result<Vec<FileRecord>> {
                let mut q = QueryBuilder::<$Db>::new(concat!(
                    "SELECT ",
                    file_columns!(),
                    " FROM files WHERE tenant = 'default'"
                ));
                if let Some(p) = purpose {
                    q.push(" AND purpose = ").push_bind(p.as_str());
                }
                push_after(&mut q, after);
                q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                    .push_bind(i64::from(limit));
                let rows = q.build().fetch_all(&self.pool).await?;
                rows.iter().map(file_from_row).collect()
            }

            async fn delete_file(&self, id: &str) -> Result<FileRecord> {
                let mut tx = self.begin().await?;
                let row = sqlx::query(concat!(
                    "SELECT ",
                    file_columns!(),
                    " FROM files WHERE id = $1",
                    $LOCK
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "file",
                    id: id.to_string(),
                })?;
                let file = file_from_row(&row)?;
                let user = sqlx::query(
                    "SELECT id, state FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled') \
                     AND (training_file = $1 OR validation_file = $1 OR base_model = $1) LIMIT 1",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(user) = user {
                    let state: String = user.try_get("state")?;
                    return Err(StoreError::FileInUse {
                        file_id: id.to_string(),
                        job_id: user.try_get("id")?,
                        state: parse_text("jobs", &state, JobState::parse)?,
                    });
                }
                let model: Option<String> =
                    sqlx::query_scalar("SELECT model FROM model_files WHERE file_id = $1 LIMIT 1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some(model) = model {
                    return Err(StoreError::InUse {
                        what: format!("file {id}"),
                        user: format!("registered model {model}"),
                    });
                }
                sqlx::query("DELETE FROM files WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(file)
            }

            async fn insert_model(
                &self,
                name: &str,
                format: ModelFormat,
                files: &[(String, String)],
            ) -> Result<ModelRecord> {
                let now = self.clock.now_ms();
                let mut tx = self.begin().await?;
                let taken: Option<String> =
                    sqlx::query_scalar("SELECT name FROM models WHERE name = $1")
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?;
                if taken.is_some() {
                    return Err(StoreError::AlreadyExists {
                        kind: "model",
                        id: name.to_string(),
                    });
                }
                sqlx::query("INSERT INTO models (name, format, created_at) VALUES ($1, $2, $3)")
                    .bind(name)
                    .bind(format.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                for (path, file_id) in files {
                    // Lock the file so a concurrent delete cannot remove it under the model.
                    let exists: Option<String> = sqlx::query_scalar(concat!(
                        "SELECT id FROM files WHERE id = $1",
                        $LOCK
                    ))
                    .bind(file_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if exists.is_none() {
                        return Err(StoreError::NotFound {
                            kind: "file",
                            id: file_id.clone(),
                        });
                    }
                    sqlx::query("INSERT INTO model_files (model, path, file_id) VALUES ($1, $2, $3)")
                        .bind(name)
                        .bind(path)
                        .bind(file_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                self.get_model(name).await
            }

            async fn get_model(&self, name: &str) -> Result<ModelRecord> {
                let row = sqlx::query("SELECT name, format, created_at FROM models WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| StoreError::NotFound {
                        kind: "model",
                        id: name.to_string(),
                    })?;
                self.model_from_row(&row).await
            }

            async fn list_models(&self) -> Result<Vec<ModelRecord>> {
                let rows = sqlx::query(
                    "SELECT name, format, created_at FROM models WHERE tenant = 'default' ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    out.push(self.model_from_row(row).await?);
                }
                Ok(out)
            }

            async fn delete_model(&self, name: &str) -> Result<()> {
                let mut tx = self.begin().await?;
                let user: Option<String> = sqlx::query_scalar(
                    "SELECT id FROM jobs WHERE base_model = $1 \
                     AND state NOT IN ('succeeded', 'failed', 'cancelled') LIMIT 1",
                )
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(job) = user {
                    return Err(StoreError::InUse {
                        what: format!("model {name}"),
                        user: format!("job {job}"),
                    });
                }
                let deleted = sqlx::query("DELETE FROM models WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    return Err(StoreError::NotFound {
                        kind: "model",
                        id: name.to_string(),
                    });
                }
                tx.commit().await?;
                Ok(())
            }

            async fn insert_artifact(
                &self,
                fence: Fence<'_>,
                a: &NewArtifact,
            ) -> Result<ArtifactRecord> {
                let now = self.clock.now_ms();
                let mut tx = self.begin().await?;
                let job = lock_fenced(&mut tx, fence).await?;
                let row = sqlx::query(concat!(
                    "INSERT INTO artifacts (id, job_id, attempt, kind, step, name, size_bytes, \
                     sha256, blob_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     RETURNING ",
                    artifact_columns!()
                ))
                .bind(&a.id)
                .bind(&job.id)
                .bind(job.attempt)
                .bind(a.kind.as_str())
                .bind(a.step)
                .bind(&a.name)
                .bind(a.size_bytes)
                .bind(&a.sha256)
                .bind(&a.blob_key)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                let msg = format!("{} {} committed at step {} ({} bytes)", a.kind, a.id, a.step, a.size_bytes);
                push_event(&mut tx, &job.id, a.kind.as_str(), job.state, &msg, job.attempt, now).await?;
                self.notify_in_tx(&mut tx, JOB_CHANNEL, &job.id).await?;
                tx.commit().await?;
                self.notifier.job_changed(&job.id);
                artifact_from_row(&row)
            }

            async fn get_artifact(&self, id: &str) -> Result<ArtifactRecord> {
                let row = sqlx::query(concat!(
                    "SELECT ",
                    artifact_columns!(),
                    " FROM artifacts WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "artifact",
                    id: id.to_string(),
                })?;
                artifact_from_row(&row)
            }

            async fn list_artifacts(
                &self,
                job_id: &str,
                kind: Option<ArtifactKind>,
            ) -> Result<Vec<ArtifactRecord>> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    artifact_columns!(),
                    " FROM artifacts WHERE job_id = $1 AND ($2 IS NULL OR kind = $2) \
                     ORDER BY created_at, step, id"
                ))
                .bind(job_id)
                .bind(kind.map(|k| k.as_str()))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(artifact_from_row).collect()
            }

            async fn create_sweep(
                &self,
                spec: &[u8],
                request_id: Option<&str>,
            ) -> Result<(SweepRecord, bool)> {
                let hash = {
                    use sha2::Digest;
                    hex::encode(sha2::Sha256::digest(spec))
                };
                if let Some(rid) = request_id {
                    if let Some(existing) = find_sweep_by_request_id(&self.pool, rid, &hash).await? {
                        return Ok((existing, false));
                    }
                }
                let now = self.clock.now_ms();
                let id = ids::new_id(ids::SWEEP);
                let inserted = sqlx::query(
                    "INSERT INTO sweeps (id, state, spec, request_id, request_hash, created_at, \
                     updated_at) VALUES ($1, 'running', $2, $3, $4, $5, $5)",
                )
                .bind(&id)
                .bind(spec)
                .bind(request_id)
                .bind(request_id.map(|_| hash.clone()))
                .bind(now)
                .execute(&self.pool)
                .await;
                match inserted {
                    Ok(_) => Ok((self.get_sweep(&id).await?, true)),
                    Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
                        let rid = request_id.unwrap_or_default();
                        match find_sweep_by_request_id(&self.pool, rid, &hash).await? {
                            Some(existing) => Ok((existing, false)),
                            None => Err(StoreError::Database(e)),
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn get_sweep(&self, id: &str) -> Result<SweepRecord> {
                let row = sqlx::query(concat!("SELECT ", sweep_columns!(), " FROM sweeps WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| StoreError::NotFound {
                        kind: "sweep",
                        id: id.to_string(),
                    })?;
                sweep_from_row(&row)
            }

            async fn list_sweeps(&self, after: Option<&Cursor>, limit: u32) -> Result<Vec<SweepRecord>> {
                let mut q = QueryBuilder::<$Db>::new(concat!(
                    "SELECT ",
                    sweep_columns!(),
                    " FROM sweeps WHERE tenant = 'default'"
                ));
                push_after(&mut q, after);
                q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                    .push_bind(i64::from(limit));
                let rows = q.build().fetch_all(&self.pool).await?;
                rows.iter().map(sweep_from_row).collect()
            }

            async fn list_running_sweeps(&self) -> Result<Vec<SweepRecord>> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    sweep_columns!(),
                    " FROM sweeps WHERE state = 'running' ORDER BY created_at, id"
                ))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(sweep_from_row).collect()
            }

            async fn cancel_sweep(&self, id: &str) -> Result<SweepRecord> {
                let now = self.clock.now_ms();
                let sweep = self.get_sweep(id).await?;
                match sweep.state {
                    SweepState::Cancelled => return Ok(sweep),
                    SweepState::Running => {}
                    other => {
                        return Err(StoreError::SweepFinished {
                            id: id.to_string(),
                            state: other,
                        });
                    }
                }
                sqlx::query(
                    "UPDATE sweeps SET state = 'cancelled', message = 'cancelled by request', \
                     updated_at = $2, finished_at = $2 WHERE id = $1 AND state = 'running'",
                )
                .bind(id)
                .bind(now)
                .execute(&self.pool)
                .await?;
                self.get_sweep(id).await
            }

            async fn list_trials(&self, sweep_id: &str) -> Result<Vec<TrialRecord>> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    trial_columns!(),
                    " FROM sweep_trials WHERE sweep_id = $1 ORDER BY trial, run"
                ))
                .bind(sweep_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(trial_from_row).collect()
            }

            async fn list_sweep_events(&self, sweep_id: &str) -> Result<Vec<SweepEventRecord>> {
                let rows = sqlx::query(
                    "SELECT seq, kind, payload FROM sweep_events WHERE sweep_id = $1 ORDER BY seq",
                )
                .bind(sweep_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(SweepEventRecord {
                            seq: r.try_get("seq")?,
                            kind: r.try_get("kind")?,
                            payload: r.try_get("payload")?,
                        })
                    })
                    .collect()
            }

            #[tracing::instrument(skip_all, fields(sweep = %step.sweep_id, seq = step.expected_seq))]
            async fn advance_sweep(&self, step: &SweepAdvance) -> Result<Vec<JobRecord>> {
                let now = self.clock.now_ms();
                let mut tx = self.begin().await?;
                let next = step.expected_seq + step.events.len() as i64;
                let (state, message, finished) = match &step.finish {
                    Some((state, message)) => (state.as_str(), Some(message.as_str()), Some(now)),
                    None => ("running", None, None),
                };
                let fenced = sqlx::query(
                    "UPDATE sweeps SET last_seq = $3, state = $4, message = COALESCE($5, message), \
                     finished_at = $6, updated_at = $7 \
                     WHERE id = $1 AND last_seq = $2 AND state = 'running'",
                )
                .bind(&step.sweep_id)
                .bind(step.expected_seq)
                .bind(next)
                .bind(state)
                .bind(message)
                .bind(finished)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if fenced.rows_affected() != 1 {
                    return Err(StoreError::SweepConflict {
                        id: step.sweep_id.clone(),
                        expected: step.expected_seq,
                    });
                }
                for (i, (kind, payload)) in step.events.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO sweep_events (sweep_id, seq, kind, payload, created_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(&step.sweep_id)
                    .bind(step.expected_seq + 1 + i as i64)
                    .bind(kind)
                    .bind(payload)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                for p in &step.progress {
                    sqlx::query(
                        "UPDATE sweep_trials SET reported_seq = $4, steps = $5, last_value = $6, \
                         stop_requested = stop_requested OR $7 \
                         WHERE sweep_id = $1 AND trial = $2 AND run = $3",
                    )
                    .bind(&step.sweep_id)
                    .bind(p.trial)
                    .bind(p.run)
                    .bind(p.reported_seq)
                    .bind(p.steps)
                    .bind(p.last_value)
                    .bind(p.stop_requested)
                    .execute(&mut *tx)
                    .await?;
                }
                for r in &step.results {
                    sqlx::query(
                        "UPDATE sweep_trials SET observed = TRUE, objective = $4, cost = $5, \
                         failed = $6 WHERE sweep_id = $1 AND trial = $2 AND run = $3",
                    )
                    .bind(&step.sweep_id)
                    .bind(r.trial)
                    .bind(r.run)
                    .bind(r.objective)
                    .bind(r.cost)
                    .bind(r.failed)
                    .execute(&mut *tx)
                    .await?;
                }
                let mut created = Vec::new();
                for t in &step.new_trials {
                    let job_id = match &t.job {
                        Some(job) => {
                            let spec_json = serde_json::to_string(&job.spec).map_err(|e| {
                                corrupt("jobs", format!("spec does not serialize: {e}"))
                            })?;
                            let hash = spec_hash(&spec_json);
                            Some(insert_job_tx(&mut tx, job, &spec_json, &hash, now).await?)
                        }
                        None => None,
                    };
                    sqlx::query(
                        "INSERT INTO sweep_trials (sweep_id, trial, run, job_id, params, budget, \
                         resume, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(&step.sweep_id)
                    .bind(t.trial)
                    .bind(t.run)
                    .bind(&job_id)
                    .bind(&t.params)
                    .bind(t.budget)
                    .bind(t.resume)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    if let Some(id) = job_id {
                        self.notify_in_tx(&mut tx, JOB_CHANNEL, &id).await?;
                        created.push(id);
                    }
                }
                if !created.is_empty() {
                    self.notify_in_tx(&mut tx, QUEUE_CHANNEL, "").await?;
                }
                let mut jobs = Vec::with_capacity(created.len());
                for id in &created {
                    jobs.push(lock_job(&mut tx, id).await?.job);
                }
                tx.commit().await?;
                if !created.is_empty() {
                    self.notifier.queue_changed();
                }
                for id in &created {
                    self.notifier.job_changed(id);
                }
                Ok(jobs)
            }

            async fn acquire_leadership(&self, role: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
                let now = self.clock.now_ms();
                let row = sqlx::query(
                    "INSERT INTO leader_leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                     expires_at = excluded.expires_at \
                     WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at <= $4 \
                     RETURNING holder",
                )
                .bind(role)
                .bind(holder)
                .bind(now + ttl_ms)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.is_some())
            }

            async fn release_leadership(&self, role: &str, holder: &str) -> Result<()> {
                sqlx::query("DELETE FROM leader_leases WHERE name = $1 AND holder = $2")
                    .bind(role)
                    .bind(holder)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn count_jobs_by_state(&self) -> Result<Vec<(JobState, i64)>> {
                let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        let state: String = r.try_get("state")?;
                        Ok((parse_text("jobs", &state, JobState::parse)?, r.try_get("n")?))
                    })
                    .collect()
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

        fn event_from_row(row: &DbRow) -> Result<EventRecord> {
            let state: String = row.try_get("state")?;
            Ok(EventRecord {
                seq: row.try_get("seq")?,
                kind: row.try_get("kind")?,
                state: parse_text("job_events", &state, JobState::parse)?,
                message: row.try_get("message")?,
                attempt: row.try_get("attempt")?,
                created_at: row.try_get("created_at")?,
            })
        }

        impl $Store {
            async fn model_from_row(&self, row: &DbRow) -> Result<ModelRecord> {
                let name: String = row.try_get("name")?;
                let format: String = row.try_get("format")?;
                let rows = sqlx::query(
                    "SELECT mf.path AS model_path, f.id, f.name, f.purpose, f.format, f.size_bytes, \
                     f.sha256, f.line_count, f.blob_key, f.created_at \
                     FROM model_files mf JOIN files f ON f.id = mf.file_id \
                     WHERE mf.model = $1 ORDER BY mf.path",
                )
                .bind(&name)
                .fetch_all(&self.pool)
                .await?;
                let mut files = Vec::with_capacity(rows.len());
                for r in &rows {
                    files.push(ModelFileRecord {
                        path: r.try_get("model_path")?,
                        file: file_from_row(r)?,
                    });
                }
                Ok(ModelRecord {
                    format: parse_text("models", &format, ModelFormat::parse)?,
                    name,
                    files,
                    created_at: row.try_get("created_at")?,
                })
            }

            async fn events_between(
                &self,
                job_id: &str,
                after_seq: i64,
                upto: i64,
            ) -> Result<Vec<EventRecord>> {
                let rows = sqlx::query(
                    "SELECT seq, kind, state, message, attempt, created_at FROM job_events \
                     WHERE job_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
                )
                .bind(job_id)
                .bind(after_seq)
                .bind(upto)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(event_from_row).collect()
            }
        }
    };
}
