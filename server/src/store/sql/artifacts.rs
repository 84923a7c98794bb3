//! Artifacts committed by the lease holder (adapters, checkpoints, merged models).

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_artifacts {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
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

        /// The checkpoint a promoted run (`job`, an ASHA promotion) continues from `previous`:
        /// with a schedule whose early steps do not depend on the total (WSD, constant), the
        /// latest one within `previous`'s stable phase, so the longer run continues exactly
        /// as if it had been planned that long (its decay still ahead); else the latest.
        async fn promotion_checkpoint(
            tx: &mut Tx,
            job: &JobRecord,
            previous: &str,
        ) -> Result<Option<ArtifactRecord>> {
            let h = &job.spec.hyperparameters;
            let spec: Option<String> = sqlx::query_scalar("SELECT spec FROM jobs WHERE id = $1")
                .bind(previous)
                .fetch_optional(&mut **tx)
                .await?;
            let prev_total = spec
                .and_then(|s| serde_json::from_str::<JobSpec>(&s).ok())
                .filter(|p| p.hyperparameters.schedule == h.schedule)
                .and_then(|p| p.hyperparameters.max_steps)
                .map(|s| s.max(1) as u64);
            let bound = prev_total.and_then(|t| h.stable_until(t));
            if let Some(bound) = bound {
                let row = sqlx::query(concat!(
                    "SELECT ",
                    artifact_columns!(),
                    " FROM artifacts WHERE job_id = $1 AND kind = 'checkpoint' AND step <= $2 \
                     ORDER BY step DESC, created_at DESC, id DESC LIMIT 1"
                ))
                .bind(previous)
                .bind(i64::try_from(bound).unwrap_or(i64::MAX))
                .fetch_optional(&mut **tx)
                .await?;
                if let Some(row) = row {
                    return artifact_from_row(&row).map(Some);
                }
            }
            latest_checkpoint(tx, previous).await
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

        async fn insert_artifact(
            store: &$Store,
            fence: Fence<'_>,
            a: &NewArtifact,
        ) -> Result<ArtifactRecord> {
            let now = store.clock.now_ms();
            let mut tx = store.begin().await?;
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
            tx.commit().await?;
            store.notifier.job_changed(&job.id);
            store.notify_after_commit(JOB_CHANNEL, &job.id);
            artifact_from_row(&row)
        }

        async fn get_artifact(store: &$Store, id: &str) -> Result<ArtifactRecord> {
            let row = sqlx::query(concat!(
                "SELECT ",
                artifact_columns!(),
                " FROM artifacts WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&store.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "artifact",
                id: id.to_string(),
            })?;
            artifact_from_row(&row)
        }

        async fn list_artifacts(
            store: &$Store,
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
            .fetch_all(&store.pool)
            .await?;
            rows.iter().map(artifact_from_row).collect()
        }
    };
}
