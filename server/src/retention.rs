//! Retention on the leading replica: old job history is pruned in batches, and blobs that no
//! row names (a crash between a blob and its row, a blob delete that failed) are collected.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::blobs::{BlobError, Blobs};
use crate::store::{Store, StoreError};

/// The singleton role whose lease says which replica runs retention.
const ROLE: &str = "retention";

/// Blob prefixes whose keys belong to a file or artifact row.
const OWNED_PREFIXES: &[&str] = &["files", "artifacts"];

/// Batches of history one round removes at most, so a round stays short.
const MAX_BATCHES_PER_ROUND: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// What one round removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub history_rows: u64,
    pub orphan_blobs: usize,
    pub staging_files: usize,
}

/// Settings of [`Retention`] (from `[retention]`).
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// `None` keeps history forever.
    pub job_history_max_age: Option<Duration>,
    pub prune_batch_jobs: u32,
    pub orphan_blob_grace: Duration,
    pub interval: Duration,
}

impl RetentionPolicy {
    pub fn from_config(c: &tuna_config::Retention) -> Self {
        let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        Self {
            job_history_max_age: (c.job_history_max_age_ms > 0)
                .then(|| ms(c.job_history_max_age_ms)),
            prune_batch_jobs: c.prune_batch_jobs.max(1),
            orphan_blob_grace: ms(c.orphan_blob_grace_ms),
            interval: Duration::from_millis(c.interval_ms.max(1)),
        }
    }
}

/// Runs retention rounds while this replica holds the `retention` lease.
pub struct Retention {
    store: Arc<dyn Store>,
    blobs: Blobs,
    policy: RetentionPolicy,
    holder: String,
}

impl Retention {
    pub fn new(store: Arc<dyn Store>, blobs: Blobs, policy: RetentionPolicy) -> Self {
        Self {
            store,
            blobs,
            policy,
            holder: crate::leader_holder(),
        }
    }

    /// A round every interval until `stopping` turns true; then the lease is given up.
    pub async fn run_until(self, mut stopping: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.policy.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stopping.wait_for(|s| *s) => break,
            }
            match self.round().await {
                Ok(None) => {}
                Ok(Some(s)) if s == Swept::default() => {}
                Ok(Some(s)) => tracing::info!(
                    history_rows = s.history_rows,
                    orphan_blobs = s.orphan_blobs,
                    staging_files = s.staging_files,
                    "retention round"
                ),
                Err(e) => tracing::warn!(error = %e, "retention round failed"),
            }
        }
        if let Err(e) = self.store.release_leadership(ROLE, &self.holder).await {
            tracing::warn!(error = %e, "could not release the retention lease");
        }
    }

    /// One round if this replica leads (`None` when another one does).
    pub async fn round(&self) -> Result<Option<Swept>, RetentionError> {
        // The lease outlives several rounds, so a slow round does not hand it over.
        let ttl = i64::try_from(self.policy.interval.as_millis().saturating_mul(3))
            .unwrap_or(i64::MAX)
            .max(30_000);
        if !self
            .store
            .acquire_leadership(ROLE, &self.holder, ttl)
            .await?
        {
            return Ok(None);
        }
        self.sweep().await.map(Some)
    }

    /// Prunes history and collects orphans now (tests call this directly).
    #[tracing::instrument(skip_all)]
    pub async fn sweep(&self) -> Result<Swept, RetentionError> {
        let mut swept = Swept::default();
        if let Some(age) = self.policy.job_history_max_age {
            let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            let before = self.store.clock().now_ms().saturating_sub(age_ms);
            for _ in 0..MAX_BATCHES_PER_ROUND {
                let n = self
                    .store
                    .prune_job_history(before, self.policy.prune_batch_jobs)
                    .await?;
                swept.history_rows += n;
                if n == 0 {
                    break;
                }
            }
        }
        let cutoff = SystemTime::now()
            .checked_sub(self.policy.orphan_blob_grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for prefix in OWNED_PREFIXES {
            let old: Vec<String> = self
                .blobs
                .list(prefix)
                .await?
                .into_iter()
                .filter(|b| b.last_modified < cutoff)
                .map(|b| b.key)
                .collect();
            for batch in old.chunks(1000) {
                let known = self.store.known_blob_keys(batch).await?;
                for key in batch.iter().filter(|k| !known.contains(*k)) {
                    self.blobs.delete(key).await?;
                    tracing::info!(%key, "removed an orphaned blob");
                    swept.orphan_blobs += 1;
                }
            }
        }
        let (blobs, grace) = (self.blobs.clone(), self.policy.orphan_blob_grace);
        swept.staging_files =
            tokio::task::spawn_blocking(move || blobs.remove_stale_staging(grace))
                .await
                .map_err(|e| BlobError::Io {
                    path: "staging files".into(),
                    source: std::io::Error::other(e),
                })??;
        Ok(swept)
    }
}
