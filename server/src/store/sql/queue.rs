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

        #[tracing::instrument(skip_all, fields(worker = %worker.id))]
        async fn claim_job(store: &$Store, worker: &WorkerRecord) -> Result<Option<Lease>> {
            let now = store.clock.now_ms();
            let mut tx = store.begin().await?;
            // Candidates, each the first in (priority DESC, created_at, id) order straight from
            // an index and locked (SKIP LOCKED on PostgreSQL): an expired lease with attempts
            // left (`queue::has_attempts_left`; an exhausted one is the reaper's), a queued job
            // for any device, one for the worker's device; the best of them wins. One query with
            // ORs would scan and sort every claimable row per claim.
            let mut rows = Vec::with_capacity(3);
            rows.extend(
                sqlx::query(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE state = 'running' AND lease_expires_at <= $1 \
                     AND attempt < max_attempts AND (device = 'any' OR device = $2) \
                     AND min_memory_bytes <= $3 ORDER BY priority DESC, created_at, id LIMIT 1",
                    $SKIP
                ))
                .bind(now)
                .bind(&worker.device)
                .bind(worker.memory_bytes)
                .fetch_optional(&mut *tx)
                .await?,
            );
            let devices: &[&str] = if worker.device == "any" {
                &["any"]
            } else {
                &["any", worker.device.as_str()]
            };
            for device in devices {
                rows.extend(
                    sqlx::query(concat!(
                        "SELECT ",
                        job_columns!(),
                        " FROM jobs WHERE state = 'queued' AND device = $2 AND run_after <= $1 \
                         AND min_memory_bytes <= $3 ORDER BY priority DESC, created_at, id LIMIT 1",
                        $SKIP
                    ))
                    .bind(now)
                    .bind(*device)
                    .bind(worker.memory_bytes)
                    .fetch_optional(&mut *tx)
                    .await?,
                );
            }
            let mut best: Option<JobRecord> = None;
            for row in &rows {
                let job = job_from_row(row)?.job;
                let key = |j: &JobRecord| (std::cmp::Reverse(j.spec.priority), j.created_at, j.id.clone());
                if best.as_ref().is_none_or(|b| key(&job) < key(b)) {
                    best = Some(job);
                }
            }
            // The other candidates stay locked until this transaction ends (milliseconds).
            let row: Option<JobRecord> = best;
            let Some(job) = row else { return Ok(None) };
            let claim = queue::claim(job.state, job.attempt);
            if claim.reclaimed {
                let msg = format!("lease of attempt {} expired; job reclaimed", job.attempt);
                push_event(&mut tx, &job.id, "lease_expired", JobState::Queued, &msg, job.attempt, now)
                    .await?;
            }
            let token = uuid::Uuid::new_v4().to_string();
            let expires_at = now + store.policy.lease_ms;
            sqlx::query(
                "UPDATE jobs SET state = 'running', attempt = $6, lease_token = $2, \
                 lease_expires_at = $3, worker_id = $4, started_at = COALESCE(started_at, $5), \
                 updated_at = $5, stop_requested = FALSE WHERE id = $1",
            )
            .bind(&job.id)
            .bind(&token)
            .bind(expires_at)
            .bind(&worker.id)
            .bind(now)
            .bind(claim.attempt)
            .execute(&mut *tx)
            .await?;
            let attempt = claim.attempt;
            let msg = format!("attempt {attempt} claimed by worker {} ({})", worker.id, worker.name);
            push_event(&mut tx, &job.id, "claimed", JobState::Running, &msg, attempt, now).await?;
            store.notify_in_tx(&mut tx, JOB_CHANNEL, &job.id).await?;
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
            store.notifier.job_changed(&job.id);
            tracing::info!(job = %job.id, attempt, "job claimed");
            Ok(Some(Lease {
                reclaimed: claim.reclaimed,
                job,
                lease_token: token,
                expires_at,
                resume_from,
            }))
        }

        async fn heartbeat(store: &$Store, fence: Fence<'_>) -> Result<HeartbeatReply> {
            let expires_at = store.clock.now_ms() + store.policy.lease_ms;
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
            .ok_or_else(|| StoreError::LeaseLost {
                job_id: fence.job_id.to_string(),
            })?;
            // The fleet view's "last seen": a busy worker heartbeats but does not long-poll.
            sqlx::query(
                "UPDATE workers SET last_seen_at = $2 \
                 WHERE id = (SELECT worker_id FROM jobs WHERE id = $1)",
            )
            .bind(fence.job_id)
            .bind(store.clock.now_ms())
            .execute(&store.pool)
            .await?;
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
                store.notify_in_tx(&mut tx, JOB_CHANNEL, id).await?;
            }
            let job = lock_job(&mut tx, id).await?.job;
            tx.commit().await?;
            store.notifier.job_changed(id);
            Ok(job)
        }

        async fn record_metrics(
            store: &$Store,
            fence: Fence<'_>,
            points: &[MetricInput],
        ) -> Result<MetricsReply> {
            let now = store.clock.now_ms();
            let mut tx = store.begin().await?;
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
            store.notify_in_tx(&mut tx, JOB_CHANNEL, &job.id).await?;
            tx.commit().await?;
            store.notifier.job_changed(&job.id);
            Ok(MetricsReply {
                last_seq: last,
                directive: queue::directive_for(job.state, stop),
            })
        }

        #[tracing::instrument(skip(store), fields(job = fence.job_id))]
        async fn complete_job(store: &$Store, fence: Fence<'_>, outcome: Outcome) -> Result<JobState> {
            let now = store.clock.now_ms();
            let mut tx = store.begin().await?;
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
            // A job back in the queue is due at once.
            let requeue = target == JobState::Queued;
            set_state(&mut tx, &job.id, target, requeue.then_some(now), now).await?;
            let msg = format!("attempt {} ended: {}", job.attempt, outcome.as_str());
            push_event(&mut tx, &job.id, outcome.as_str(), target, &msg, job.attempt, now).await?;
            store.notify_in_tx(&mut tx, JOB_CHANNEL, &job.id).await?;
            if requeue {
                store.notify_in_tx(&mut tx, QUEUE_CHANNEL, "").await?;
            }
            tx.commit().await?;
            store.notifier.job_changed(&job.id);
            if requeue {
                store.notifier.queue_changed();
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
            store.notify_in_tx(&mut tx, JOB_CHANNEL, &job.id).await?;
            tx.commit().await?;
            store.notifier.job_changed(&job.id);
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
                store.notify_in_tx(&mut tx, JOB_CHANNEL, &job.id).await?;
                changed.push(job.id);
            }
            if requeued {
                store.notify_in_tx(&mut tx, QUEUE_CHANNEL, "").await?;
            }
            tx.commit().await?;
            for id in &changed {
                store.notifier.job_changed(id);
            }
            if requeued {
                store.notifier.queue_changed();
            }
            Ok(changed.len() as u64)
        }
    };
}
