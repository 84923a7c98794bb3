//! Leases on singleton roles (the sweep controller), so one replica leads at a time.

/// Expands this aggregate's queries inside `impl_store!`; see the parent module.
macro_rules! sql_leadership {
    ($Store:ident, $Db:ty, lock = $LOCK:literal, skip_locked = $SKIP:literal) => {
        async fn acquire_leadership(store: &$Store, role: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
            let now = store.clock.now_ms();
            let row = sqlx::query(
                "INSERT INTO leader_leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at <= $4 \
                 RETURNING holder",
            )
            .bind(role)
            .bind(holder)
            .bind(now + ttl_ms)
            .bind(now)
            .fetch_optional(&store.pool)
            .await?;
            Ok(row.is_some())
        }

        async fn release_leadership(store: &$Store, role: &str, holder: &str) -> Result<()> {
            sqlx::query("DELETE FROM leader_leases WHERE name = $1 AND holder = $2")
                .bind(role)
                .bind(holder)
                .execute(&store.pool)
                .await?;
            Ok(())
        }
    };
}
