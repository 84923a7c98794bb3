//! Workers: registration and lookup (which also records that the worker was seen).

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_workers {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
        fn worker_from_row(row: &DbRow) -> Result<WorkerRecord> {
            Ok(WorkerRecord {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                device: row.try_get("device")?,
                memory_bytes: row.try_get("memory_bytes")?,
                capabilities: row.try_get("capabilities")?,
            })
        }

        async fn register_worker(
            store: &$Store,
            name: &str,
            device: &str,
            memory_bytes: i64,
            capabilities: &str,
        ) -> Result<WorkerRecord> {
            let now = store.clock.now_ms();
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
            .execute(&store.pool)
            .await?;
            Ok(WorkerRecord {
                id,
                name: name.to_string(),
                device: device.to_string(),
                memory_bytes,
                capabilities: capabilities.to_string(),
            })
        }

        async fn get_worker(store: &$Store, id: &str) -> Result<WorkerRecord> {
            let row = sqlx::query(
                "UPDATE workers SET last_seen_at = $2 WHERE id = $1 \
                 RETURNING id, name, device, memory_bytes, capabilities",
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
    };
}
