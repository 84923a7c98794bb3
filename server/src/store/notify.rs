//! In-process wake-ups for long-polling acquirers and job watchers.
//!
//! Notifications are hints, never the source of truth: waiters re-read the database after a
//! wake-up and also poll on a timer, so a lost notification only costs latency. On PostgreSQL
//! a `LISTEN` task feeds the same notifier from other replicas' `NOTIFY`s.

use std::sync::Arc;

use tokio::sync::{Notify, broadcast};

/// Postgres channel for "a job may be claimable".
pub const QUEUE_CHANNEL: &str = "tuna_queue";
/// Postgres channel for "job X has new events"; the payload is the job id.
pub const JOB_CHANNEL: &str = "tuna_job";

/// Fan-out of store changes to waiters in this process.
#[derive(Debug, Clone)]
pub struct Notifier {
    queue: Arc<Notify>,
    jobs: broadcast::Sender<Arc<str>>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Notifier {
    pub fn new() -> Self {
        let (jobs, _) = broadcast::channel(1024);
        Self {
            queue: Arc::new(Notify::new()),
            jobs,
        }
    }

    /// Wakes every waiting acquirer.
    pub fn queue_changed(&self) {
        self.queue.notify_waiters();
    }

    /// Wakes watchers of `job_id`.
    pub fn job_changed(&self, job_id: &str) {
        // No receivers is fine: nobody is watching.
        let _ = self.jobs.send(Arc::from(job_id));
    }

    /// The queue's notify handle; create `notified()` before checking the queue so a wake-up
    /// between the check and the wait is not missed.
    pub fn queue(&self) -> &Notify {
        &self.queue
    }

    /// Subscribes to job change notifications (all jobs; filter by id).
    pub fn subscribe_jobs(&self) -> broadcast::Receiver<Arc<str>> {
        self.jobs.subscribe()
    }
}
