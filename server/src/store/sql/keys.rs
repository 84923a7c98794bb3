//! API keys: looked up by id on every authenticated call, so a revocation holds on the next one.

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_keys {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
        fn api_key_from_row(row: &DbRow) -> Result<ApiKeyRecord> {
            let role: String = row.try_get("role")?;
            Ok(ApiKeyRecord {
                id: row.try_get("id")?,
                tenant: row.try_get("tenant")?,
                role: parse_text("api_keys", &role, $crate::domain::access::Role::parse)?,
                name: row.try_get("name")?,
                secret_sha256: row.try_get("secret_sha256")?,
                created_at: row.try_get("created_at")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        }

        async fn insert_api_key(store: &$Store, k: &ApiKeyRecord) -> Result<()> {
            sqlx::query(
                "INSERT INTO api_keys (id, tenant, role, name, secret_sha256, created_at, \
                 revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&k.id)
            .bind(&k.tenant)
            .bind(k.role.as_str())
            .bind(&k.name)
            .bind(&k.secret_sha256)
            .bind(k.created_at)
            .bind(k.revoked_at)
            .execute(&store.pool)
            .await?;
            Ok(())
        }

        async fn get_api_key(store: &$Store, id: &str) -> Result<ApiKeyRecord> {
            let row = sqlx::query(
                "SELECT id, tenant, role, name, secret_sha256, created_at, revoked_at \
                 FROM api_keys WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&store.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "API key",
                id: id.to_string(),
            })?;
            api_key_from_row(&row)
        }

        async fn list_api_keys(store: &$Store, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>> {
            let mut q = QueryBuilder::<$Db>::new(
                "SELECT id, tenant, role, name, secret_sha256, created_at, revoked_at \
                 FROM api_keys WHERE 1 = 1",
            );
            if let Some(t) = tenant {
                q.push(" AND tenant = ").push_bind(t.to_string());
            }
            q.push(" ORDER BY created_at DESC, id DESC");
            let rows = q.build().fetch_all(&store.pool).await?;
            rows.iter().map(api_key_from_row).collect()
        }

        async fn tenant_usage(store: &$Store, tenant: &str) -> Result<$crate::store::TenantUsage> {
            let queued: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs WHERE tenant = $1 AND state = 'queued'",
            )
            .bind(tenant)
            .fetch_one(&store.pool)
            .await?;
            // SUM over no rows is NULL; SUM of BIGINT is NUMERIC on PostgreSQL, hence the cast.
            let files: Option<i64> = sqlx::query_scalar(
                "SELECT CAST(SUM(size_bytes) AS BIGINT) FROM files WHERE tenant = $1",
            )
            .bind(tenant)
            .fetch_one(&store.pool)
            .await?;
            let artifacts: Option<i64> = sqlx::query_scalar(
                "SELECT CAST(SUM(a.size_bytes) AS BIGINT) FROM artifacts a \
                 JOIN jobs j ON j.id = a.job_id WHERE j.tenant = $1",
            )
            .bind(tenant)
            .fetch_one(&store.pool)
            .await?;
            Ok($crate::store::TenantUsage {
                queued_jobs: u64::try_from(queued).unwrap_or(0),
                stored_bytes: files.unwrap_or(0).saturating_add(artifacts.unwrap_or(0)),
            })
        }

        async fn revoke_api_key(store: &$Store, id: &str) -> Result<ApiKeyRecord> {
            let now = store.clock.now_ms();
            sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now)
                .execute(&store.pool)
                .await?;
            get_api_key(store, id).await
        }
    };
}
