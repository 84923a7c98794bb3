//! The control plane's view of the shared configuration file (`tuna-config`): the `[api]`,
//! `[queue]` and `[blobs]` sections turned into the server's own policy types.

pub use tuna_config::{Config, ConfigError};

use crate::api::Limits;
use crate::store::QueuePolicy;

/// Lease and retry timing from `[queue]`.
pub fn policy(config: &Config) -> QueuePolicy {
    QueuePolicy {
        lease_ms: config.queue.lease_ms,
        backoff_base_ms: config.queue.backoff_base_ms,
        backoff_max_ms: config.queue.backoff_max_ms,
        retry_elsewhere_ms: config.queue.retry_elsewhere_ms,
    }
}

/// Request limits from `[api]` and `[queue]`.
pub fn limits(config: &Config) -> Limits {
    Limits {
        max_upload_bytes: config.api.max_upload_bytes,
        max_acquire_wait_ms: config.api.max_acquire_wait_ms,
        poll_interval_ms: config.queue.poll_interval_ms,
        max_concurrent_uploads: usize::try_from(config.api.max_concurrent_uploads)
            .unwrap_or(usize::MAX),
        upload_idle_timeout_ms: config.api.upload_idle_timeout_ms,
        max_uploads_per_key: usize::try_from(config.api.max_uploads_per_key).unwrap_or(usize::MAX),
        max_queued_jobs_per_tenant: config.api.max_queued_jobs_per_tenant,
        max_stored_bytes_per_tenant: config.api.max_stored_bytes_per_tenant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file's defaults and the library's defaults (used by tests and embedders) agree.
    #[test]
    fn config_defaults_match_the_library_defaults() {
        let c = Config::default();
        let (p, q) = (policy(&c), QueuePolicy::default());
        assert_eq!(
            (
                p.lease_ms,
                p.backoff_base_ms,
                p.backoff_max_ms,
                p.retry_elsewhere_ms
            ),
            (
                q.lease_ms,
                q.backoff_base_ms,
                q.backoff_max_ms,
                q.retry_elsewhere_ms
            )
        );
        let (l, d) = (limits(&c), Limits::default());
        assert_eq!(
            (
                l.max_upload_bytes,
                l.max_acquire_wait_ms,
                l.poll_interval_ms,
                l.max_concurrent_uploads,
                l.upload_idle_timeout_ms,
                l.max_uploads_per_key,
                l.max_queued_jobs_per_tenant,
                l.max_stored_bytes_per_tenant,
            ),
            (
                d.max_upload_bytes,
                d.max_acquire_wait_ms,
                d.poll_interval_ms,
                d.max_concurrent_uploads,
                d.upload_idle_timeout_ms,
                d.max_uploads_per_key,
                d.max_queued_jobs_per_tenant,
                d.max_stored_bytes_per_tenant,
            )
        );
    }
}
