//! The queue: claims, heartbeats, worker reports and the end of an attempt, and the reaping of
//! expired leases. Every worker write is fenced by its lease token.

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_queue {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
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

        /// Inserts `events` of job `job_id` numbered from `first_seq` (the caller has already
        /// advanced the job's `last_seq` past them): one statement, whatever their number.
        async fn insert_events(
            tx: &mut Tx,
            job_id: &str,
            first_seq: i64,
            events: &[(&str, JobState, &str, i32)],
            now: i64,
        ) -> Result<()> {
            let mut q = QueryBuilder::<$Db>::new(
                "INSERT INTO job_events (job_id, seq, kind, state, message, attempt, created_at) ",
            );
            q.push_values(events.iter().zip(first_seq..), |mut b, ((kind, state, msg, attempt), seq)| {
                b.push_bind(job_id.to_string())
                    .push_bind(seq)
                    .push_bind(kind.to_string())
                    .push_bind(state.as_str())
                    .push_bind(msg.to_string())
                    .push_bind(*attempt)
                    .push_bind(now);
            });
            q.build().execute(&mut **tx).await?;
            Ok(())
        }

        /// Ends the attempt that `fence` holds in `target` (`set_state`, plus the failure when
        /// given) and takes the next event number, in one statement; returns the attempt and
        /// that number, or `None` when the fence does not hold.
        async fn end_attempt(
            tx: &mut Tx,
            fence: Fence<'_>,
            target: JobState,
            run_after: Option<i64>,
            failure: Option<(FailureKind, &str)>,
            now: i64,
        ) -> Result<Option<(i32, i64)>> {
            let row = sqlx::query(
                "UPDATE jobs SET state = $2, updated_at = $3, \
                 finished_at = CASE WHEN $4 THEN $3 ELSE NULL END, \
                 run_after = COALESCE($5, run_after), \
                 lease_token = CASE WHEN $6 THEN lease_token ELSE NULL END, \
                 lease_expires_at = CASE WHEN $6 THEN lease_expires_at ELSE NULL END, \
                 worker_id = CASE WHEN $6 THEN worker_id ELSE NULL END, \
                 failure_kind = COALESCE($7, failure_kind), \
                 failure_message = CASE WHEN $7 IS NULL THEN failure_message ELSE $8 END, \
                 avoid_worker_id = CASE WHEN $10 THEN worker_id ELSE avoid_worker_id END, \
                 last_seq = last_seq + 1 \
                 WHERE id = $1 AND lease_token = $9 AND state IN ('running', 'cancelling', 'pausing') \
                 RETURNING attempt, last_seq",
            )
            .bind(fence.job_id)
            .bind(target.as_str())
            .bind(now)
            .bind(target.is_terminal())
            .bind(run_after)
            .bind(target.is_leased())
            .bind(failure.map(|(kind, _)| kind.as_str()))
            .bind(failure.map(|(_, message)| message))
            .bind(fence.lease_token)
            // A SYSTEM failure that will be retried: the retry prefers other workers.
            .bind(target == JobState::Queued && failure.is_some_and(|(k, _)| k == FailureKind::System))
            .fetch_optional(&mut **tx)
            .await?;
            row.map(|r| Ok((r.try_get("attempt")?, r.try_get("last_seq")?))).transpose()
        }

        /// Records what happened to a lo-fi shard in its lo-fi job's history too (an event of
        /// kind `shard`), so watching the job follows its shards. Locks the shard's row before
        /// the job's, the only order in which both are locked. Returns the job to notify.
        async fn note_parent(tx: &mut Tx, shard_id: &str, what: &str, now: i64) -> Result<Option<String>> {
            let row = sqlx::query("SELECT parent_job_id, shard_index FROM jobs WHERE id = $1")
                .bind(shard_id)
                .fetch_one(&mut **tx)
                .await?;
            let parent: Option<String> = row.try_get("parent_job_id")?;
            let Some(parent) = parent else { return Ok(None) };
            let index: Option<i32> = row.try_get("shard_index")?;
            let job = lock_job(tx, &parent).await?.job;
            let message = format!("shard {} ({shard_id}): {what}", index.unwrap_or_default());
            push_event(tx, &parent, "shard", job.state, &message, job.attempt, now).await?;
            Ok(Some(parent))
        }

        #[tracing::instrument(skip_all, fields(worker = %worker.id))]
        async fn claim_job(store: &$Store, worker: &WorkerRecord) -> Result<Option<Lease>> {
            let now = store.clock.now_ms();
            let mut tx = store.begin().await?;
            // Candidates, each the first in (priority DESC, created_at, id) order straight from
            // an index and locked (SKIP LOCKED on PostgreSQL): an expired lease with attempts
            // left (`queue::has_attempts_left`; an exhausted one is the reaper's), a queued job
            // for any device, one for the worker's device; the best of them wins. One query with
            // ORs would scan and sort every claimable row per claim. Each lookup is a subquery
            // of one UNION ALL (one round trip) so that it keeps its own ORDER BY, LIMIT and
            // locking clause: PostgreSQL refuses FOR UPDATE on a UNION itself.
            let rows = sqlx::query(concat!(
                "SELECT * FROM (SELECT ",
                job_columns!(),
                " FROM jobs WHERE state = 'running' AND lease_expires_at <= $1 \
                 AND attempt < max_attempts AND (device = 'any' OR device = $2) \
                 AND min_memory_bytes <= $3 ORDER BY priority DESC, created_at, id LIMIT 1",
                $SKIP,
                ") expired UNION ALL SELECT * FROM (SELECT ",
                job_columns!(),
                " FROM jobs WHERE state = 'queued' AND device = 'any' AND run_after <= $1 \
                 AND min_memory_bytes <= $3 AND ",
                elsewhere!(),
                " AND ",
                shards_done!(),
                " ORDER BY priority DESC, created_at, id LIMIT 1",
                $SKIP,
                ") for_any UNION ALL SELECT * FROM (SELECT ",
                job_columns!(),
                " FROM jobs WHERE state = 'queued' AND device = $2 AND $2 <> 'any' \
                 AND run_after <= $1 AND min_memory_bytes <= $3 AND ",
                elsewhere!(),
                " AND ",
                shards_done!(),
                " ORDER BY priority DESC, created_at, id LIMIT 1",
                $SKIP,
                ") for_device"
            ))
            .bind(now)
            .bind(&worker.device)
            .bind(worker.memory_bytes)
            .bind(&worker.id)
            .bind(now - store.policy.retry_elsewhere_ms)
            .fetch_all(&mut *tx)
            .await?;
            let mut best: Option<JobRecord> = None;
            for row in &rows {
                let job = job_from_row(row)?.job;
                let key = |j: &JobRecord| (std::cmp::Reverse(j.spec.priority), j.created_at, j.id.clone());
                if best.as_ref().is_none_or(|b| key(&job) < key(b)) {
                    best = Some(job);
                }
            }
            // The other candidates stay locked until this transaction ends (milliseconds).
            let Some(job) = best else { return Ok(None) };
            let claim = queue::claim(job.state, job.attempt);
            let attempt = claim.attempt;
            let reclaimed_msg = format!("lease of attempt {} expired; job reclaimed", job.attempt);
            let claimed_msg = format!("attempt {attempt} claimed by worker {} ({})", worker.id, worker.name);
            let mut events = Vec::with_capacity(2);
            if claim.reclaimed {
                events.push(("lease_expired", JobState::Queued, reclaimed_msg.as_str(), job.attempt));
            }
            events.push(("claimed", JobState::Running, claimed_msg.as_str(), attempt));
            let token = uuid::Uuid::new_v4().to_string();
            let expires_at = now + store.policy.lease_ms;
            // The lease, the events' sequence numbers, the updated row and whose checkpoint to
            // resume from (the job's own, else for an ASHA promotion the run it continues) in
            // one statement.
            let row = sqlx::query(concat!(
                "UPDATE jobs SET state = 'running', attempt = $6, lease_token = $2, \
                 lease_expires_at = $3, worker_id = $4, started_at = COALESCE(started_at, $5), \
                 updated_at = $5, stop_requested = FALSE, last_seq = last_seq + $7 \
                 WHERE id = $1 RETURNING ",
                job_columns!(),
                ", CASE WHEN EXISTS (SELECT 1 FROM artifacts a WHERE a.job_id = jobs.id \
                 AND a.kind = 'checkpoint') THEN jobs.id \
                 WHEN EXISTS (SELECT 1 FROM artifacts a WHERE a.job_id = jobs.resume_from_job \
                 AND a.kind = 'checkpoint') THEN jobs.resume_from_job END AS resume_job"
            ))
            .bind(&job.id)
            .bind(&token)
            .bind(expires_at)
            .bind(&worker.id)
            .bind(now)
            .bind(attempt)
            .bind(events.len() as i64)
            .fetch_one(&mut *tx)
            .await?;
            let resume_job: Option<String> = row.try_get("resume_job")?;
            let job = job_from_row(&row)?.job;
            let first_seq = job.last_seq + 1 - events.len() as i64;
            insert_events(&mut tx, &job.id, first_seq, &events, now).await?;
            let parent = note_parent(&mut tx, &job.id, &claimed_msg, now).await?;
            let resume_from = match resume_job {
                Some(id) if id != job.id => promotion_checkpoint(&mut tx, &job, &id).await?,
                Some(id) => latest_checkpoint(&mut tx, &id).await?,
                None => None,
            };
            tx.commit().await?;
            store.notifier.job_changed(&job.id);
            store.notify_after_commit(JOB_CHANNEL, &job.id);
            if let Some(parent) = parent {
                store.notifier.job_changed(&parent);
                store.notify_after_commit(JOB_CHANNEL, &parent);
            }
            // The API logs the claim in the job's trace.
            tracing::debug!(job = %job.id, attempt, "job claimed");
            Ok(Some(Lease {
                reclaimed: claim.reclaimed,
                job,
                lease_token: token,
                expires_at,
                resume_from,
            }))
        }

        async fn heartbeat(store: &$Store, fence: Fence<'_>) -> Result<HeartbeatReply> {
            let now = store.clock.now_ms();
            let expires_at = now + store.policy.lease_ms;
            let lost = || StoreError::LeaseLost {
                job_id: fence.job_id.to_string(),
            };
            // Also the fleet view's "last seen" of the worker: a busy worker heartbeats but does
            // not long-poll. One statement where the backend can update two tables in one.
            let row = if <$Store>::WRITABLE_CTE {
                sqlx::query(
                    "WITH job AS (UPDATE jobs SET lease_expires_at = $3 WHERE id = $1 \
                     AND lease_token = $2 AND state IN ('running', 'cancelling', 'pausing') \
                     RETURNING worker_id, state, stop_requested), \
                     seen AS (UPDATE workers SET last_seen_at = $4 \
                     WHERE id IN (SELECT worker_id FROM job)) \
                     SELECT state, stop_requested FROM job",
                )
                .bind(fence.job_id)
                .bind(fence.lease_token)
                .bind(expires_at)
                .bind(now)
                .fetch_optional(&store.pool)
                .await?
                .ok_or_else(lost)?
            } else {
                let row = sqlx::query(
                    "UPDATE jobs SET lease_expires_at = $3 WHERE id = $1 AND lease_token = $2 \
                     AND state IN ('running', 'cancelling', 'pausing') \
                     RETURNING state, stop_requested",
                )
                .bind(fence.job_id)
                .bind(fence.lease_token)
                .bind(expires_at)
                .fetch_optional(&store.pool)
                .await?
                .ok_or_else(lost)?;
                sqlx::query(
                    "UPDATE workers SET last_seen_at = $2 \
                     WHERE id = (SELECT worker_id FROM jobs WHERE id = $1)",
                )
                .bind(fence.job_id)
                .bind(now)
                .execute(&store.pool)
                .await?;
                row
            };
            let state: String = row.try_get("state")?;
            let stop: bool = row.try_get("stop_requested")?;
            let directive = queue::directive_for(parse_text("jobs", &state, JobState::parse)?, stop);
            Ok(HeartbeatReply {
                directive,
                expires_at,
            })
        }

        #[tracing::instrument(skip(store))]
        async fn request_stop_early(store: &$Store, id: &str, reason: &str) -> Result<JobRecord> {
            let now = store.clock.now_ms();
            let mut tx = store.begin().await?;
            let job = lock_job(&mut tx, id).await?.job;
            let already: bool = sqlx::query_scalar("SELECT stop_requested FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            let decision = queue::stop_early(job.state, already);
            if decision == StopEarly::Disallowed {
                return Err(StoreError::InvalidTransition {
                    id: id.to_string(),
                    state: job.state,
                    action: "stop early",
                });
            }
            if decision == StopEarly::Request {
                sqlx::query("UPDATE jobs SET stop_requested = TRUE, updated_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let msg = format!("stop early requested: {reason}");
                push_event(&mut tx, id, "stop_early_requested", job.state, &msg, job.attempt, now)
                    .await?;
            }
            let job = lock_job(&mut tx, id).await?.job;
            tx.commit().await?;
            store.notifier.job_changed(id);
            if decision == StopEarly::Request {
                store.notify_after_commit(JOB_CHANNEL, id);
            }
            Ok(job)
        }

        async fn record_metrics(
            store: &$Store,
            fence: Fence<'_>,
            points: &[MetricInput],
        ) -> Result<MetricsReply> {
            let now = store.clock.now_ms();
            let mut tx = store.begin().await?;
            // Fences, locks and takes one sequence number per point in one statement.
            let row = sqlx::query(
                "UPDATE jobs SET last_seq = last_seq + $3 WHERE id = $1 AND lease_token = $2 \
                 AND state IN ('running', 'cancelling', 'pausing') \
                 RETURNING state, attempt, last_seq, stop_requested",
            )
            .bind(fence.job_id)
            .bind(fence.lease_token)
            .bind(points.len() as i64)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::LeaseLost {
                job_id: fence.job_id.to_string(),
            })?;
            let job_id = fence.job_id;
            let state: String = row.try_get("state")?;
            let state = parse_text("jobs", &state, JobState::parse)?;
            let attempt: i32 = row.try_get("attempt")?;
            let last: i64 = row.try_get("last_seq")?;
            let stop: bool = row.try_get("stop_requested")?;
            let mut rows = Vec::new();
            for (p, seq) in points.iter().zip(last + 1 - points.len() as i64..) {
                for (name, value) in &p.values {
                    rows.push((seq, p.step, name, *value, p.time.unwrap_or(now)));
                }
            }
            // Batched to stay under SQLite's bound-parameter limit.
            for chunk in rows.chunks(500) {
                let mut q = QueryBuilder::<$Db>::new(
                    "INSERT INTO job_metrics (job_id, seq, attempt, step, name, value, created_at) ",
                );
                q.push_values(chunk, |mut b, (seq, step, name, value, time)| {
                    b.push_bind(job_id)
                        .push_bind(*seq)
                        .push_bind(attempt)
                        .push_bind(*step)
                        .push_bind((*name).clone())
                        .push_bind(*value)
                        .push_bind(*time);
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            store.notifier.job_changed(job_id);
            store.notify_after_commit(JOB_CHANNEL, job_id);
            Ok(MetricsReply {
                last_seq: last,
                directive: queue::directive_for(state, stop),
            })
        }

        #[tracing::instrument(skip(store), fields(job = fence.job_id))]
        async fn complete_job(store: &$Store, fence: Fence<'_>, outcome: Outcome) -> Result<JobState> {
            let now = store.clock.now_ms();
            let lost = || StoreError::LeaseLost {
                job_id: fence.job_id.to_string(),
            };
            // A job back in the queue is due at once.
            let run_after = |target: JobState| (target == JobState::Queued).then_some(now);
            let mut tx = store.begin().await?;
            // An outcome that ends every leased state the same way (success) needs no read of
            // the job first: the fenced update is the whole check.
            let leased = JobState::ALL.iter().filter(|s| s.is_leased());
            let mut targets = leased.map(|s| queue::after_completion(outcome, *s));
            let first = targets.next().flatten();
            let (target, attempt, seq) = match first.filter(|t| targets.all(|o| o == Some(*t))) {
                Some(target) => {
                    let ended = end_attempt(&mut tx, fence, target, run_after(target), None, now);
                    let (attempt, seq) = ended.await?.ok_or_else(lost)?;
                    (target, attempt, seq)
                }
                None => {
                    let job = lock_fenced(&mut tx, fence).await?;
                    let Some(target) = queue::after_completion(outcome, job.state) else {
                        return Err(StoreError::InvalidTransition {
                            id: job.id,
                            state: job.state,
                            action: match outcome {
                                Outcome::Cancelled => "acknowledge a cancel that was not requested",
                                _ => "acknowledge a pause that was not requested",
                            },
                        });
                    };
                    let ended = end_attempt(&mut tx, fence, target, run_after(target), None, now);
                    let (attempt, seq) = ended.await?.ok_or_else(lost)?;
                    (target, attempt, seq)
                }
            };
            let msg = format!("attempt {attempt} ended: {}", outcome.as_str());
            insert_events(&mut tx, fence.job_id, seq, &[(outcome.as_str(), target, &msg, attempt)], now)
                .await?;
            let parent = note_parent(&mut tx, fence.job_id, &msg, now).await?;
            tx.commit().await?;
            store.notifier.job_changed(fence.job_id);
            store.notify_after_commit(JOB_CHANNEL, fence.job_id);
            if let Some(parent) = parent {
                store.notifier.job_changed(&parent);
                store.notify_after_commit(JOB_CHANNEL, &parent);
            }
            if target == JobState::Queued {
                store.notifier.queue_changed();
                store.notify_after_commit(QUEUE_CHANNEL, "");
            }
            Ok(target)
        }

        #[tracing::instrument(skip(store, message), fields(job = fence.job_id))]
        async fn fail_job(
            store: &$Store,
            fence: Fence<'_>,
            kind: FailureKind,
            message: &str,
        ) -> Result<FailReply> {
            let now = store.clock.now_ms();
            let mut tx = store.begin().await?;
            let job = lock_fenced(&mut tx, fence).await?;
            let target = queue::after_failure(kind, job.state, job.attempt, job.max_attempts);
            let retry = target == JobState::Queued;
            let run_after = if retry {
                now + store.policy.retry_delay_ms(&job.id, job.attempt)
            } else {
                job.run_after
            };
            let failure = Some((kind, message));
            let ended = end_attempt(&mut tx, fence, target, Some(run_after), failure, now).await?;
            let (_, seq) = ended.ok_or_else(|| StoreError::LeaseLost {
                job_id: fence.job_id.to_string(),
            })?;
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
            insert_events(&mut tx, &job.id, seq, &[(event, target, &msg, job.attempt)], now).await?;
            let parent = note_parent(&mut tx, &job.id, &msg, now).await?;
            tx.commit().await?;
            store.notifier.job_changed(&job.id);
            store.notify_after_commit(JOB_CHANNEL, &job.id);
            if let Some(parent) = parent {
                store.notifier.job_changed(&parent);
                store.notify_after_commit(JOB_CHANNEL, &parent);
            }
            Ok(FailReply {
                state: target,
                will_retry: retry,
                run_after,
            })
        }

        async fn reap_expired(store: &$Store) -> Result<u64> {
            let now = store.clock.now_ms();
            let mut tx = store.begin().await?;
            if !store.try_lead(&mut tx).await? {
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
                let target = queue::after_lease_expiry(job.state, job.attempt, job.max_attempts);
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
                changed.push(job.id);
            }
            tx.commit().await?;
            for id in &changed {
                store.notifier.job_changed(id);
                store.notify_after_commit(JOB_CHANNEL, id);
            }
            if requeued {
                store.notifier.queue_changed();
                store.notify_after_commit(QUEUE_CHANNEL, "");
            }
            Ok(changed.len() as u64)
        }
    };
}
