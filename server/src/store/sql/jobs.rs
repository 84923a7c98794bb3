//! Jobs: creation with idempotency keys, lookup, listing, the user transitions and the
//! row helpers (lock, state change, event append) every other job write goes through.

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_jobs {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
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
                    tenant: row.try_get("tenant")?,
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
                    trace_context: row.try_get("trace_context")?,
                    parent_job_id: row.try_get("parent_job_id")?,
                    shard_index: row.try_get("shard_index")?,
                },
                lease_token: row.try_get("lease_token")?,
                request_hash: row.try_get("request_hash")?,
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
                tenant: &str,
                request_id: &str,
                hash: &str,
            ) -> Result<Option<JobRecord>> {
                let row = sqlx::query(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE tenant = $2 AND request_id = $1"
                ))
                .bind(request_id)
                .bind(tenant)
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
                // A lo-fi job's shards, in the same transaction: never a lo-fi job without them.
                let shards = if job.spec.replicas > 1 { job.spec.replicas } else { 0 };
                for index in 0..shards {
                    let shard = NewJob {
                        request_id: None,
                        ..job.clone()
                    };
                    let shard_id = insert_job_tx(&mut tx, &shard, spec_json, hash, now).await?;
                    sqlx::query("UPDATE jobs SET parent_job_id = $2, shard_index = $3 WHERE id = $1")
                        .bind(&shard_id)
                        .bind(&id)
                        .bind(index)
                        .execute(&mut *tx)
                        .await?;
                }
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
                 request_id, request_hash, created_at, updated_at, resume_from_job, trace_context, \
                 tenant) \
                 VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $10, $10, $14, $15, \
                 $16)",
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
            .bind(&job.trace_context)
            .bind(&job.tenant)
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

        #[tracing::instrument(skip_all, fields(request_id = job.request_id.as_deref()))]
        async fn create_job(store: &$Store, job: NewJob) -> Result<(JobRecord, bool)> {
            let spec_json = serde_json::to_string(&job.spec)
                .map_err(|e| corrupt("jobs", format!("spec does not serialize: {e}")))?;
            let hash = spec_hash(&spec_json);
            if let Some(rid) = &job.request_id {
                if let Some(existing) = store.find_by_request_id(&job.tenant, rid, &hash).await? {
                    return Ok((existing, false));
                }
            }
            match store.insert_job(&job, &spec_json, &hash).await {
                Ok(created) => Ok((created, true)),
                // A concurrent create with the same request_id won the race.
                Err(StoreError::Database(e))
                    if e.as_database_error().is_some_and(|d| d.is_unique_violation()) =>
                {
                    let rid = job.request_id.as_deref().unwrap_or_default();
                    match store.find_by_request_id(&job.tenant, rid, &hash).await? {
                        Some(existing) => Ok((existing, false)),
                        None => Err(StoreError::Database(e)),
                    }
                }
                Err(e) => Err(e),
            }
        }

        async fn get_job(store: &$Store, id: &str) -> Result<JobRecord> {
            let row = sqlx::query(concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1"))
                .bind(id)
                .fetch_optional(&store.pool)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "job",
                    id: id.to_string(),
                })?;
            Ok(job_from_row(&row)?.job)
        }

        async fn list_jobs(
            store: &$Store,
            filter: &JobFilter,
            after: Option<&Cursor>,
            limit: u32,
        ) -> Result<Vec<JobRecord>> {
            let mut q = QueryBuilder::<$Db>::new(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE 1 = 1"
            ));
            if let Some(t) = &filter.tenant {
                q.push(" AND tenant = ").push_bind(t.clone());
            }
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
            let rows = q.build().fetch_all(&store.pool).await?;
            rows.iter().map(|r| job_from_row(r).map(|j| j.job)).collect()
        }

        #[tracing::instrument(skip(store))]
        async fn cancel_job(store: &$Store, id: &str) -> Result<JobRecord> {
            store.transition(id, Action::Cancel).await
        }

        #[tracing::instrument(skip(store))]
        async fn pause_job(store: &$Store, id: &str) -> Result<JobRecord> {
            store.transition(id, Action::Pause).await
        }

        #[tracing::instrument(skip(store))]
        async fn resume_job(store: &$Store, id: &str) -> Result<JobRecord> {
            store.transition(id, Action::Resume).await
        }

        async fn count_jobs(store: &$Store) -> Result<Vec<(JobState, String, i64)>> {
            let rows = sqlx::query(
                "SELECT state, device, COUNT(*) AS n FROM jobs GROUP BY state, device",
            )
            .fetch_all(&store.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    let state: String = r.try_get("state")?;
                    Ok((
                        parse_text("jobs", &state, JobState::parse)?,
                        r.try_get("device")?,
                        r.try_get("n")?,
                    ))
                })
                .collect()
        }
    };
}
