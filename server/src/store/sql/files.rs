//! Uploaded files; a delete is refused while an active job or a registered model uses the file.

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_files {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
        fn file_from_row(row: &DbRow) -> Result<FileRecord> {
            let purpose: String = row.try_get("purpose")?;
            let format: Option<String> = row.try_get("format")?;
            Ok(FileRecord {
                id: row.try_get("id")?,
                tenant: row.try_get("tenant")?,
                name: row.try_get("name")?,
                purpose: parse_text("files", &purpose, FilePurpose::parse)?,
                format: match format {
                    Some(f) => Some(parse_text("files", &f, DatasetFormat::parse)?),
                    None => None,
                },
                size_bytes: row.try_get("size_bytes")?,
                sha256: row.try_get("sha256")?,
                line_count: row.try_get("line_count")?,
                blob_key: row.try_get("blob_key")?,
                created_at: row.try_get("created_at")?,
            })
        }

        async fn insert_file(store: &$Store, f: &FileRecord) -> Result<()> {
            sqlx::query(
                "INSERT INTO files (id, name, purpose, format, size_bytes, sha256, line_count, \
                 blob_key, created_at, tenant) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&f.id)
            .bind(&f.name)
            .bind(f.purpose.as_str())
            .bind(f.format.map(|f| f.as_str()))
            .bind(f.size_bytes)
            .bind(&f.sha256)
            .bind(f.line_count)
            .bind(&f.blob_key)
            .bind(f.created_at)
            .bind(&f.tenant)
            .execute(&store.pool)
            .await?;
            Ok(())
        }

        async fn get_file(store: &$Store, id: &str) -> Result<FileRecord> {
            let row = sqlx::query(concat!("SELECT ", file_columns!(), " FROM files WHERE id = $1"))
                .bind(id)
                .fetch_optional(&store.pool)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "file",
                    id: id.to_string(),
                })?;
            file_from_row(&row)
        }

        async fn list_files(
            store: &$Store,
            tenant: &str,
            purpose: Option<FilePurpose>,
            after: Option<&Cursor>,
            limit: u32,
        ) -> Result<Vec<FileRecord>> {
            let mut q = QueryBuilder::<$Db>::new(concat!(
                "SELECT ",
                file_columns!(),
                " FROM files WHERE tenant = "
            ));
            q.push_bind(tenant.to_string());
            if let Some(p) = purpose {
                q.push(" AND purpose = ").push_bind(p.as_str());
            }
            push_after(&mut q, after);
            q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                .push_bind(i64::from(limit));
            let rows = q.build().fetch_all(&store.pool).await?;
            rows.iter().map(file_from_row).collect()
        }

        async fn delete_file(store: &$Store, id: &str) -> Result<FileRecord> {
            let mut tx = store.begin().await?;
            let row = sqlx::query(concat!(
                "SELECT ",
                file_columns!(),
                " FROM files WHERE id = $1",
                $LOCK
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "file",
                id: id.to_string(),
            })?;
            let file = file_from_row(&row)?;
            let user = sqlx::query(
                "SELECT id, state FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled') \
                 AND (training_file = $1 OR validation_file = $1 OR base_model = $1) LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(user) = user {
                let state: String = user.try_get("state")?;
                return Err(StoreError::FileInUse {
                    file_id: id.to_string(),
                    job_id: user.try_get("id")?,
                    state: parse_text("jobs", &state, JobState::parse)?,
                });
            }
            let model: Option<String> =
                sqlx::query_scalar("SELECT model FROM model_files WHERE file_id = $1 LIMIT 1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(model) = model {
                return Err(StoreError::InUse {
                    what: format!("file {id}"),
                    user: format!("registered model {model}"),
                });
            }
            sqlx::query("DELETE FROM files WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(file)
        }
    };
}
