//! Deletion and retention: removing finished jobs, pruning old history, and telling the blob
//! collector which blob keys still have a row.

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_retention {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
        async fn delete_job(store: &$Store, id: &str) -> Result<Vec<String>> {
            let mut tx = store.begin().await?;
            let row = sqlx::query(concat!(
                "SELECT state, sweep_id, parent_job_id FROM jobs WHERE id = $1",
                $LOCK
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "job",
                id: id.to_string(),
            })?;
            let state: String = row.try_get("state")?;
            let state = parse_text("jobs", &state, JobState::parse)?;
            if !state.is_terminal() {
                return Err(StoreError::InvalidTransition {
                    id: id.to_string(),
                    state,
                    action: "delete (only finished jobs can be deleted; cancel it first)",
                });
            }
            let sweep: Option<String> = row.try_get("sweep_id")?;
            if let Some(sweep) = sweep {
                return Err(StoreError::InUse {
                    what: format!("job {id}"),
                    user: format!("sweep {sweep} (a trial's job is kept with its sweep)"),
                });
            }
            let parent: Option<String> = row.try_get("parent_job_id")?;
            if let Some(parent) = parent {
                return Err(StoreError::InUse {
                    what: format!("job {id}"),
                    user: format!("lo-fi job {parent} (delete that job, which deletes its shards)"),
                });
            }
            // A lo-fi job goes with its shards, which must have ended too.
            let shards = sqlx::query("SELECT id, state FROM jobs WHERE parent_job_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            let mut doomed = vec![id.to_string()];
            for shard in &shards {
                let shard_id: String = shard.try_get("id")?;
                let state: String = shard.try_get("state")?;
                let state = parse_text("jobs", &state, JobState::parse)?;
                if !state.is_terminal() {
                    return Err(StoreError::InvalidTransition {
                        id: shard_id,
                        state,
                        action: "delete (a shard of this job is still running; wait for it)",
                    });
                }
                doomed.push(shard_id);
            }
            let mut keys = Vec::new();
            // Shards first: nothing references a lo-fi job but its shards.
            for job in doomed.iter().rev() {
                let blobs: Vec<String> =
                    sqlx::query_scalar("SELECT blob_key FROM artifacts WHERE job_id = $1")
                        .bind(job)
                        .fetch_all(&mut *tx)
                        .await?;
                keys.extend(blobs);
                // Labels, events, metric points and artifact rows go with it (ON DELETE
                // CASCADE).
                sqlx::query("DELETE FROM jobs WHERE id = $1")
                    .bind(job)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(keys)
        }

        async fn prune_job_history(
            store: &$Store,
            finished_before_ms: i64,
            max_jobs: u32,
        ) -> Result<u64> {
            let mut tx = store.begin().await?;
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1 \
                 AND (EXISTS (SELECT 1 FROM job_metrics m WHERE m.job_id = jobs.id) \
                   OR EXISTS (SELECT 1 FROM job_events e WHERE e.job_id = jobs.id)) \
                 ORDER BY finished_at LIMIT $2",
            )
            .bind(finished_before_ms)
            .bind(i64::from(max_jobs))
            .fetch_all(&mut *tx)
            .await?;
            let mut removed = 0u64;
            for id in &ids {
                for table in [
                    "DELETE FROM job_metrics WHERE job_id = $1",
                    "DELETE FROM job_events WHERE job_id = $1",
                ] {
                    removed += sqlx::query(table)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
            }
            tx.commit().await?;
            Ok(removed)
        }

        async fn known_blob_keys(
            store: &$Store,
            keys: &[String],
        ) -> Result<std::collections::HashSet<String>> {
            let mut known = std::collections::HashSet::new();
            // Bounded IN lists (SQLite allows 32,766 parameters; stay far below).
            for batch in keys.chunks(500) {
                for table in ["files", "artifacts"] {
                    let mut q = QueryBuilder::<$Db>::new("SELECT blob_key FROM ");
                    q.push(table).push(" WHERE blob_key IN (");
                    let mut sep = q.separated(", ");
                    for key in batch {
                        sep.push_bind(key.clone());
                    }
                    q.push(")");
                    let rows = q.build().fetch_all(&store.pool).await?;
                    for row in rows {
                        known.insert(row.try_get::<String, _>("blob_key")?);
                    }
                }
            }
            Ok(known)
        }
    };
}
