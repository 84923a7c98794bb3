//! PostgreSQL backend: the production store, safe for many server replicas.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::mpsc;

use super::{Clock, Notifier, QueuePolicy};

/// A pooled connection idle for this long is pinged before use; see [`PgStore::pool_options`].
const PING_IDLE_AFTER: Duration = Duration::from_secs(10);

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
    /// Notifications to send after their transactions committed; see [`publish`].
    published: mpsc::UnboundedSender<(&'static str, String)>,
}

impl PgStore {
    /// Connects, applies migrations and starts the `LISTEN` task that turns other replicas'
    /// `NOTIFY`s into local wake-ups, and the task that sends this store's after commit.
    pub async fn connect(url: &str, policy: QueuePolicy, clock: Arc<dyn Clock>) -> Result<Self> {
        let pool = Self::pool_options()
            .max_connections(16)
            .connect(url)
            .await?;
        Self::from_pool(pool, policy, clock).await
    }

    /// The pool settings `connect` uses (less the size). A connection taken from the idle
    /// queue is checked with a ping only when it sat there for [`PING_IDLE_AFTER`]: sqlx's
    /// default pings before every acquire, one more round trip for each statement outside a
    /// transaction and each transaction, for connections a busy server used a moment ago (sqlx
    /// still pings each connection it takes back, after the request). A connection that broke
    /// meanwhile (a database restart) fails its request and is dropped on release.
    pub fn pool_options() -> PgPoolOptions {
        PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
    }

    /// Wraps an existing pool (tests get one per database from `#[sqlx::test]`).
    pub async fn from_pool(
        pool: PgPool,
        policy: QueuePolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        MIGRATOR.run(&pool).await?;
        let (published, pending) = mpsc::unbounded_channel();
        let store = Self {
            pool,
            policy,
            clock,
            notifier: Notifier::new(),
            published,
        };
        tokio::spawn(listen(store.pool.clone(), store.notifier.clone()));
        tokio::spawn(publish(store.pool.clone(), pending));
        Ok(store)
    }

    /// Updates of two tables can share one statement (`WITH ... AS (UPDATE ...)`).
    const WRITABLE_CTE: bool = true;

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

    /// Tells other replicas, after the commit that made the change, through [`publish`]: the
    /// queue's hot transactions (claim, metrics, the end of an attempt) do not `NOTIFY`, because
    /// PostgreSQL serializes the commits of all transactions that did on one global lock.
    fn notify_after_commit(&self, channel: &'static str, payload: &str) {
        // Only fails once the publishing task is gone (the runtime is shutting down).
        let _ = self.published.send((channel, payload.to_string()));
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

/// Sends the notifications queued by [`PgStore::notify_after_commit`] until every handle of the
/// store is dropped: all that queued up while the previous batch was on its way go in one
/// statement (so one transaction takes PostgreSQL's notify lock, not one per job change), each
/// distinct (channel, payload) once. An idle store sends at once. A batch that fails is
/// dropped: waiters also poll.
async fn publish(pool: PgPool, mut pending: mpsc::UnboundedReceiver<(&'static str, String)>) {
    let mut batch = Vec::new();
    while pending.recv_many(&mut batch, 1024).await > 0 {
        let mut seen = std::collections::HashSet::with_capacity(batch.len());
        let (channels, payloads): (Vec<&str>, Vec<String>) =
            batch.drain(..).filter(|n| seen.insert(n.clone())).unzip();
        let sent =
            sqlx::query("SELECT pg_notify(c, p) FROM UNNEST($1::text[], $2::text[]) AS n (c, p)")
                .bind(&channels)
                .bind(&payloads)
                .execute(&pool)
                .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, dropped = channels.len(), "NOTIFY failed; other replicas will poll");
        }
    }
}

impl_store!(
    PgStore,
    sqlx::Postgres,
    lock = " FOR UPDATE",
    skip_locked = " FOR UPDATE SKIP LOCKED"
);
