//! SQLite backend: the embedded default for one process (`tuna demo`, `tuna server` without
//! a database URL). Writers are serialized by `BEGIN IMMEDIATE`; wake-ups stay in-process.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{Clock, Notifier, QueuePolicy};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    policy: QueuePolicy,
    clock: Arc<dyn Clock>,
    notifier: Notifier,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file of a `sqlite://` URL and migrates it.
    pub async fn connect(url: &str, policy: QueuePolicy, clock: Arc<dyn Clock>) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Self::from_pool(pool, policy, clock).await
    }

    /// Wraps an existing pool and migrates it.
    pub async fn from_pool(
        pool: SqlitePool,
        policy: QueuePolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            policy,
            clock,
            notifier: Notifier::new(),
        })
    }

    /// No data-modifying statements in `WITH`: updates of two tables take two statements.
    const WRITABLE_CTE: bool = false;

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front, so two read-then-write transactions
    /// cannot deadlock on the lock upgrade.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// In-process only: the caller notifies after commit.
    async fn notify_in_tx(
        &self,
        _tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        _channel: &str,
        _payload: &str,
    ) -> Result<()> {
        Ok(())
    }

    /// In-process only: the caller notifies after commit.
    fn notify_after_commit(&self, _channel: &'static str, _payload: &str) {}

    /// One process owns the file: it is always the leader.
    async fn try_lead(&self, _tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>) -> Result<bool> {
        Ok(true)
    }
}

impl_store!(SqliteStore, sqlx::Sqlite, lock = "", skip_locked = "");
