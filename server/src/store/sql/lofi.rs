//! lo-fi jobs (`spec.replicas > 1`): their shards, and ending a lo-fi job whose shard failed.
//! The shards are inserted with the job (`insert_job` in `jobs.rs`); a lo-fi job is claimable
//! only once they all succeeded (`shards_done!`, in the claim).

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_lofi {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
        async fn list_shards(store: &$Store, parent_id: &str) -> Result<Vec<JobRecord>> {
            let rows = sqlx::query(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE parent_job_id = $1 ORDER BY shard_index"
            ))
            .bind(parent_id)
            .fetch_all(&store.pool)
            .await?;
            rows.iter().map(|r| Ok(job_from_row(r)?.job)).collect()
        }

        async fn list_stalled_lofi(store: &$Store) -> Result<Vec<JobRecord>> {
            let rows = sqlx::query(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE state IN ('queued', 'paused') AND id IN (SELECT parent_job_id \
                 FROM jobs WHERE parent_job_id IS NOT NULL AND state IN ('failed', 'cancelled'))"
            ))
            .fetch_all(&store.pool)
            .await?;
            rows.iter().map(|r| Ok(job_from_row(r)?.job)).collect()
        }

        async fn fail_waiting_job(
            store: &$Store,
            id: &str,
            kind: FailureKind,
            message: &str,
        ) -> Result<JobRecord> {
            let now = store.clock.now_ms();
            let mut tx = store.begin().await?;
            let job = lock_job(&mut tx, id).await?.job;
            if !matches!(job.state, JobState::Queued | JobState::Paused) {
                return Ok(job);
            }
            set_state(&mut tx, id, JobState::Failed, None, now).await?;
            set_failure(&mut tx, id, kind, message).await?;
            push_event(&mut tx, id, "failed", JobState::Failed, message, job.attempt, now).await?;
            store.notify_in_tx(&mut tx, JOB_CHANNEL, id).await?;
            let job = lock_job(&mut tx, id).await?.job;
            tx.commit().await?;
            store.notifier.job_changed(id);
            Ok(job)
        }
    };
}
