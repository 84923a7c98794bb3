//! PostgreSQL backend: the production store, safe for many server replicas.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::{Clock, Notifier, QueuePolicy};

/// Advisory-lock key of the leader-only maintenance work (lease reaping).
const REAPER_LOCK_KEY: i64 = 0x7475_6e61_7265_6170; // "tunareap"

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    policy: QueuePolicy,
    clock: Arc<dyn Clock>,
    notifier: Notifier,
}

impl PgStore {
    /// Connects, applies migrations and starts the `LISTEN` task that turns other replicas'
    /// `NOTIFY`s into local wake-ups.
    pub async fn connect(url: &str, policy: QueuePolicy, clock: Arc<dyn Clock>) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Self::from_pool(pool, policy, clock).await
    }

    /// Wraps an existing pool (tests get one per database from `#[sqlx::test]`).
    pub async fn from_pool(
        pool: PgPool,
        policy: QueuePolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        MIGRATOR.run(&pool).await?;
        let store = Self {
            pool,
            policy,
            clock,
            notifier: Notifier::new(),
        };
        tokio::spawn(listen(store.pool.clone(), store.notifier.clone()));
        Ok(store)
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// `NOTIFY` is transactional: it is delivered to listeners only if the transaction commits.
    async fn notify_in_tx(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        channel: &str,
        payload: &str,
    ) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Only the replica holding the advisory lock reaps in this round.
    async fn try_lead(&self, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>) -> Result<bool> {
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(REAPER_LOCK_KEY)
            .fetch_one(&mut **tx)
            .await?;
        Ok(leader)
    }
}

/// Forwards `NOTIFY`s to the in-process notifier until the pool closes. Notifications are only
/// wake-ups: waiters also poll, so a dropped connection costs latency, not correctness.
async fn listen(pool: PgPool, notifier: Notifier) {
    loop {
        if pool.is_closed() {
            return;
        }
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; polling until it is back");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen_all([QUEUE_CHANNEL, JOB_CHANNEL]).await {
            tracing::warn!(error = %e, "LISTEN failed; polling until it is back");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) if n.channel() == QUEUE_CHANNEL => notifier.queue_changed(),
                Ok(Some(n)) => notifier.job_changed(n.payload()),
                // The connection dropped; notifications may have been lost, so wake everyone.
                Ok(None) => {
                    notifier.queue_changed();
                    if pool.is_closed() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection lost");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl_store!(
    PgStore,
    sqlx::Postgres,
    lock = " FOR UPDATE",
    skip_locked = " FOR UPDATE SKIP LOCKED"
);
