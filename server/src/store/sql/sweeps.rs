//! Sweeps: their event log (optimistic concurrency on `last_seq`), trials and trial jobs.

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_sweeps {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
        fn sweep_from_row(row: &DbRow) -> Result<SweepRecord> {
            let state: String = row.try_get("state")?;
            Ok(SweepRecord {
                id: row.try_get("id")?,
                tenant: row.try_get("tenant")?,
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
            tenant: &str,
            request_id: &str,
            hash: &str,
        ) -> Result<Option<SweepRecord>> {
            let row = sqlx::query(concat!(
                "SELECT ",
                sweep_columns!(),
                ", request_hash FROM sweeps WHERE tenant = $2 AND request_id = $1"
            ))
            .bind(request_id)
            .bind(tenant)
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

        async fn create_sweep(
            store: &$Store,
            tenant: &str,
            spec: &[u8],
            request_id: Option<&str>,
        ) -> Result<(SweepRecord, bool)> {
            let hash = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(spec))
            };
            if let Some(rid) = request_id {
                if let Some(existing) =
                    find_sweep_by_request_id(&store.pool, tenant, rid, &hash).await?
                {
                    return Ok((existing, false));
                }
            }
            let now = store.clock.now_ms();
            let id = ids::new_id(ids::SWEEP);
            let inserted = sqlx::query(
                "INSERT INTO sweeps (id, state, spec, request_id, request_hash, created_at, \
                 updated_at, tenant) VALUES ($1, 'running', $2, $3, $4, $5, $5, $6)",
            )
            .bind(&id)
            .bind(spec)
            .bind(request_id)
            .bind(request_id.map(|_| hash.clone()))
            .bind(now)
            .bind(tenant)
            .execute(&store.pool)
            .await;
            match inserted {
                Ok(_) => Ok((get_sweep(store, &id).await?, true)),
                Err(e)
                    if e.as_database_error()
                        .is_some_and(|d| d.is_unique_violation()) =>
                {
                    let rid = request_id.unwrap_or_default();
                    match find_sweep_by_request_id(&store.pool, tenant, rid, &hash).await? {
                        Some(existing) => Ok((existing, false)),
                        None => Err(StoreError::Database(e)),
                    }
                }
                Err(e) => Err(e.into()),
            }
        }

        async fn get_sweep(store: &$Store, id: &str) -> Result<SweepRecord> {
            let row = sqlx::query(concat!(
                "SELECT ",
                sweep_columns!(),
                " FROM sweeps WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&store.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "sweep",
                id: id.to_string(),
            })?;
            sweep_from_row(&row)
        }

        async fn list_sweeps(
            store: &$Store,
            tenant: &str,
            after: Option<&Cursor>,
            limit: u32,
        ) -> Result<Vec<SweepRecord>> {
            let mut q = QueryBuilder::<$Db>::new(concat!(
                "SELECT ",
                sweep_columns!(),
                " FROM sweeps WHERE tenant = "
            ));
            q.push_bind(tenant.to_string());
            push_after(&mut q, after);
            q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                .push_bind(i64::from(limit));
            let rows = q.build().fetch_all(&store.pool).await?;
            rows.iter().map(sweep_from_row).collect()
        }

        async fn list_running_sweeps(store: &$Store) -> Result<Vec<SweepRecord>> {
            let rows = sqlx::query(concat!(
                "SELECT ",
                sweep_columns!(),
                " FROM sweeps WHERE state = 'running' ORDER BY created_at, id"
            ))
            .fetch_all(&store.pool)
            .await?;
            rows.iter().map(sweep_from_row).collect()
        }

        async fn cancel_sweep(store: &$Store, id: &str) -> Result<SweepRecord> {
            let now = store.clock.now_ms();
            let sweep = get_sweep(store, id).await?;
            match transitions::cancel_sweep(sweep.state) {
                SweepCancel::Unchanged => return Ok(sweep),
                SweepCancel::Cancel => {}
                SweepCancel::Finished => {
                    return Err(StoreError::SweepFinished {
                        id: id.to_string(),
                        state: sweep.state,
                    });
                }
            }
            sqlx::query(
                "UPDATE sweeps SET state = 'cancelled', message = 'cancelled by request', \
                 updated_at = $2, finished_at = $2 WHERE id = $1 AND state = 'running'",
            )
            .bind(id)
            .bind(now)
            .execute(&store.pool)
            .await?;
            get_sweep(store, id).await
        }

        async fn list_trials(store: &$Store, sweep_id: &str) -> Result<Vec<TrialRecord>> {
            let rows = sqlx::query(concat!(
                "SELECT ",
                trial_columns!(),
                " FROM sweep_trials WHERE sweep_id = $1 ORDER BY trial, run"
            ))
            .bind(sweep_id)
            .fetch_all(&store.pool)
            .await?;
            rows.iter().map(trial_from_row).collect()
        }

        async fn list_sweep_events(
            store: &$Store,
            sweep_id: &str,
        ) -> Result<Vec<SweepEventRecord>> {
            let rows = sqlx::query(
                "SELECT seq, kind, payload FROM sweep_events WHERE sweep_id = $1 ORDER BY seq",
            )
            .bind(sweep_id)
            .fetch_all(&store.pool)
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
        async fn advance_sweep(store: &$Store, step: &SweepAdvance) -> Result<Vec<JobRecord>> {
            let now = store.clock.now_ms();
            let mut tx = store.begin().await?;
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
                    store.notify_in_tx(&mut tx, JOB_CHANNEL, &id).await?;
                    created.push(id);
                }
            }
            if !created.is_empty() {
                store.notify_in_tx(&mut tx, QUEUE_CHANNEL, "").await?;
            }
            let mut jobs = Vec::with_capacity(created.len());
            for id in &created {
                jobs.push(lock_job(&mut tx, id).await?.job);
            }
            tx.commit().await?;
            if !created.is_empty() {
                store.notifier.queue_changed();
            }
            for id in &created {
                store.notifier.job_changed(id);
            }
            Ok(jobs)
        }
    };
}
