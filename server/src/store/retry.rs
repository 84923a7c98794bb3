//! Lease duration and retry backoff.

use sha2::{Digest, Sha256};

/// Timing of leases and retries.
#[derive(Debug, Clone)]
pub struct QueuePolicy {
    /// A lease lasts this long after a claim or heartbeat.
    pub lease_ms: i64,
    /// Delay before the first retry of a SYSTEM failure.
    pub backoff_base_ms: i64,
    /// Upper bound of the retry delay.
    pub backoff_max_ms: i64,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self {
            lease_ms: 30_000,
            backoff_base_ms: 5_000,
            backoff_max_ms: 600_000,
        }
    }
}

impl QueuePolicy {
    /// Delay before retrying after failed attempt `attempt` (1-based):
    /// `base * 2^(attempt-1)`, times a jitter in [1, 1.25), capped at `backoff_max_ms`.
    ///
    /// The jitter is derived from the job id and attempt rather than a global RNG, so it spreads
    /// retries of different jobs while staying reproducible; and since it is below 2x, delays
    /// strictly grow until the cap.
    pub fn retry_delay_ms(&self, job_id: &str, attempt: i32) -> i64 {
        let exp = attempt.saturating_sub(1).clamp(0, 40) as u32;
        let raw = self
            .backoff_base_ms
            .saturating_mul(1_i64.checked_shl(exp).unwrap_or(i64::MAX));
        let digest = Sha256::new()
            .chain_update(job_id.as_bytes())
            .chain_update(attempt.to_le_bytes())
            .finalize();
        let jitter_permille = i64::from(u16::from_le_bytes([digest[0], digest[1]]) % 250);
        let jittered = raw.saturating_add(raw.saturating_mul(jitter_permille) / 1000);
        jittered.min(self.backoff_max_ms)
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
        };
        let delays: Vec<i64> = (1..=10).map(|a| p.retry_delay_ms("job_x", a)).collect();
        for w in delays.windows(2) {
            assert!(w[1] > w[0] || w[1] == p.backoff_max_ms, "{delays:?}");
        }
        assert!(delays[0] >= 1000 && delays[0] < 1250);
        assert_eq!(*delays.last().unwrap(), 100_000);
    }
}
