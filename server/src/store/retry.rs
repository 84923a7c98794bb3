//! Lease duration and retry backoff.

use crate::domain::queue::retry_backoff_ms;

/// Timing of leases and retries.
#[derive(Debug, Clone)]
pub struct QueuePolicy {
    /// A lease lasts this long after a claim or heartbeat.
    pub lease_ms: i64,
    /// Delay before the first retry of a SYSTEM failure.
    pub backoff_base_ms: i64,
    /// Upper bound of the retry delay.
    pub backoff_max_ms: i64,
    /// How long after a SYSTEM failure's retry becomes claimable only other workers than the
    /// failing one may claim it.
    pub retry_elsewhere_ms: i64,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self {
            lease_ms: 30_000,
            backoff_base_ms: 5_000,
            backoff_max_ms: 600_000,
            retry_elsewhere_ms: 60_000,
        }
    }
}

impl QueuePolicy {
    /// Delay before retrying after failed attempt `attempt` (1-based): this policy's
    /// [`retry_backoff_ms`] (exponential from `backoff_base_ms`, jittered, capped at
    /// `backoff_max_ms`).
    pub fn retry_delay_ms(&self, job_id: &str, attempt: i32) -> i64 {
        retry_backoff_ms(self.backoff_base_ms, self.backoff_max_ms, job_id, attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_until_the_cap() {
        let p = QueuePolicy {
            lease_ms: 1000,
            backoff_base_ms: 1000,
            backoff_max_ms: 100_000,
            retry_elsewhere_ms: 0,
        };
        let delays: Vec<i64> = (1..=10).map(|a| p.retry_delay_ms("job_x", a)).collect();
        for w in delays.windows(2) {
            assert!(w[1] > w[0] || w[1] == p.backoff_max_ms, "{delays:?}");
        }
        assert!(delays[0] >= 1000 && delays[0] < 1250);
        assert_eq!(*delays.last().unwrap(), 100_000);
    }
}
