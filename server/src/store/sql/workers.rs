//! Workers: registration and lookup (which also records that the worker was seen).

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_workers {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
        fn worker_from_row(row: &DbRow) -> Result<WorkerRecord> {
            Ok(WorkerRecord {
                id: row.try_get("id")?,
                key_id: row.try_get("key_id")?,
                name: row.try_get("name")?,
                device: row.try_get("device")?,
                memory_bytes: row.try_get("memory_bytes")?,
                capabilities: row.try_get("capabilities")?,
            })
        }

        async fn register_worker(
            store: &$Store,
            key_id: &str,
            name: &str,
            device: &str,
            memory_bytes: i64,
            capabilities: &str,
        ) -> Result<WorkerRecord> {
            let now = store.clock.now_ms();
            let id = ids::new_id(ids::WORKER);
            sqlx::query(
                "INSERT INTO workers (id, name, device, memory_bytes, capabilities, \
                 registered_at, last_seen_at, key_id) VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
            )
            .bind(&id)
            .bind(name)
            .bind(device)
            .bind(memory_bytes)
            .bind(capabilities)
            .bind(now)
            .bind(key_id)
            .execute(&store.pool)
            .await?;
            Ok(WorkerRecord {
                id,
                key_id: key_id.to_string(),
                name: name.to_string(),
                device: device.to_string(),
                memory_bytes,
                capabilities: capabilities.to_string(),
            })
        }

        async fn get_worker(store: &$Store, id: &str) -> Result<WorkerRecord> {
            let row = sqlx::query(
                "UPDATE workers SET last_seen_at = $2 WHERE id = $1 \
                 RETURNING id, key_id, name, device, memory_bytes, capabilities",
            )
            .bind(id)
            .bind(store.clock.now_ms())
            .fetch_optional(&store.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "worker",
                id: id.to_string(),
            })?;
            worker_from_row(&row)
        }

        async fn list_workers(
            store: &$Store,
            seen_within_ms: Option<i64>,
            limit: u32,
        ) -> Result<Vec<WorkerStatus>> {
            let rows = sqlx::query(
                "SELECT w.id, w.key_id, w.name, w.device, w.memory_bytes, w.capabilities, \
                 w.registered_at, w.last_seen_at, \
                 (SELECT j.id FROM jobs j WHERE j.worker_id = w.id \
                  AND j.state IN ('running', 'cancelling', 'pausing') \
                  ORDER BY j.updated_at DESC LIMIT 1) AS current_job_id \
                 FROM workers w WHERE w.last_seen_at >= $1 \
                 ORDER BY w.last_seen_at DESC, w.id LIMIT $2",
            )
            .bind(seen_within_ms.map_or(i64::MIN, |w| store.clock.now_ms().saturating_sub(w)))
            .bind(i64::from(limit))
            .fetch_all(&store.pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(WorkerStatus {
                        worker: worker_from_row(row)?,
                        registered_at: row.try_get("registered_at")?,
                        last_seen_at: row.try_get("last_seen_at")?,
                        current_job_id: row.try_get("current_job_id")?,
                    })
                })
                .collect()
        }
    };
}
