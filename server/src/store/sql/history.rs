//! A job's history: its events and metric points, one `seq` order for both.

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_history {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
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

        async fn list_updates(
            store: &$Store,
            job_id: &str,
            after_seq: i64,
            limit: u32,
        ) -> Result<Vec<UpdateRecord>> {
            let upto = after_seq.saturating_add(i64::from(limit));
            let mut updates: Vec<UpdateRecord> = store
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
            .fetch_all(&store.pool)
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
            store: &$Store,
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
            .fetch_all(&store.pool)
            .await?;
            rows.iter().map(event_from_row).collect()
        }
    };
}
