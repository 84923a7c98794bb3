//! Registered base models: a name over a set of uploaded files.

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_models {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
        impl $Store {
            async fn model_from_row(&self, row: &DbRow) -> Result<ModelRecord> {
                let name: String = row.try_get("name")?;
                let tenant: String = row.try_get("tenant")?;
                let format: String = row.try_get("format")?;
                let rows = sqlx::query(
                    "SELECT mf.path AS model_path, f.id, f.tenant, f.name, f.purpose, f.format, \
                     f.size_bytes, f.sha256, f.line_count, f.blob_key, f.created_at \
                     FROM model_files mf JOIN files f ON f.id = mf.file_id \
                     WHERE mf.tenant = $1 AND mf.model = $2 ORDER BY mf.path",
                )
                .bind(&tenant)
                .bind(&name)
                .fetch_all(&self.pool)
                .await?;
                let mut files = Vec::with_capacity(rows.len());
                for r in &rows {
                    files.push(ModelFileRecord {
                        path: r.try_get("model_path")?,
                        file: file_from_row(r)?,
                    });
                }
                Ok(ModelRecord {
                    format: parse_text("models", &format, ModelFormat::parse)?,
                    tenant,
                    name,
                    files,
                    created_at: row.try_get("created_at")?,
                })
            }

        }

        async fn insert_model(
            store: &$Store,
            tenant: &str,
            name: &str,
            format: ModelFormat,
            files: &[(String, String)],
        ) -> Result<ModelRecord> {
            let now = store.clock.now_ms();
            let mut tx = store.begin().await?;
            let taken: Option<String> =
                sqlx::query_scalar("SELECT name FROM models WHERE tenant = $1 AND name = $2")
                    .bind(tenant)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            if taken.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: "model",
                    id: name.to_string(),
                });
            }
            sqlx::query(
                "INSERT INTO models (name, format, created_at, tenant) VALUES ($1, $2, $3, $4)",
            )
                .bind(name)
                .bind(format.as_str())
                .bind(now)
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
            for (path, file_id) in files {
                // Lock the file so a concurrent delete cannot remove it under the model.
                let exists: Option<String> = sqlx::query_scalar(concat!(
                    "SELECT id FROM files WHERE id = $1 AND tenant = $2",
                    $LOCK
                ))
                .bind(file_id)
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
                if exists.is_none() {
                    return Err(StoreError::NotFound {
                        kind: "file",
                        id: file_id.clone(),
                    });
                }
                sqlx::query(
                    "INSERT INTO model_files (model, path, file_id, tenant) VALUES ($1, $2, $3, $4)",
                )
                    .bind(name)
                    .bind(path)
                    .bind(file_id)
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            get_model(store, tenant, name).await
        }

        async fn get_model(store: &$Store, tenant: &str, name: &str) -> Result<ModelRecord> {
            let row = sqlx::query(
                "SELECT tenant, name, format, created_at FROM models WHERE tenant = $1 AND name = $2",
            )
                .bind(tenant)
                .bind(name)
                .fetch_optional(&store.pool)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "model",
                    id: name.to_string(),
                })?;
            store.model_from_row(&row).await
        }

        async fn list_models(store: &$Store, tenant: &str) -> Result<Vec<ModelRecord>> {
            let rows = sqlx::query(
                "SELECT tenant, name, format, created_at FROM models WHERE tenant = $1 ORDER BY name",
            )
            .bind(tenant)
            .fetch_all(&store.pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(store.model_from_row(row).await?);
            }
            Ok(out)
        }

        async fn delete_model(store: &$Store, tenant: &str, name: &str) -> Result<()> {
            let mut tx = store.begin().await?;
            let user: Option<String> = sqlx::query_scalar(
                "SELECT id FROM jobs WHERE base_model = $1 AND tenant = $2 \
                 AND state NOT IN ('succeeded', 'failed', 'cancelled') LIMIT 1",
            )
            .bind(name)
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(job) = user {
                return Err(StoreError::InUse {
                    what: format!("model {name}"),
                    user: format!("job {job}"),
                });
            }
            let deleted = sqlx::query("DELETE FROM models WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted == 0 {
                return Err(StoreError::NotFound {
                    kind: "model",
                    id: name.to_string(),
                });
            }
            tx.commit().await?;
            Ok(())
        }
    };
}
