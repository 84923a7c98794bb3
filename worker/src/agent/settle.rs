//! Ending an attempt reliably: `CompleteJob` and `FailJob` are retried through transient
//! errors (a database blip answers UNAVAILABLE or INTERNAL for a few seconds), because giving
//! up would let the lease expire and the job be trained again, or, on its last attempt, fail
//! although its adapter was uploaded. The heartbeat keeps the lease alive meanwhile; an
//! answer that the lease is gone (FAILED_PRECONDITION) ends the retries, since a retried call
//! whose first try did land sees exactly that.

use std::future::Future;
use std::time::Duration;

use tonic::{Code, Status};

/// How long and how often to retry.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Retries stop once this much time has passed (the lease has expired by then anyway).
    pub total: Duration,
}

impl Patience {
    /// Up to `lease` of retrying.
    pub fn for_lease(lease: Duration) -> Self {
        Self {
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            total: lease.max(Duration::from_secs(5)),
        }
    }
}

/// Whether a retry can succeed where this call failed.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

/// Calls `call` until it succeeds, fails for good, or `patience` runs out; returns the last
/// result.
pub async fn settle<T, F, Fut>(patience: Patience, call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    retry(patience, "ending the attempt", is_transient, call).await
}

/// Calls `call` until it succeeds, fails with an error `transient` does not excuse, or
/// `patience` runs out (exponential backoff between tries); returns the last result. `what`
/// names the call in the warning each retry logs.
pub async fn retry<T, E, F, Fut>(
    patience: Patience,
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut call: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = tokio::time::Instant::now();
    let mut delay = patience.first_delay;
    loop {
        match call().await {
            Err(e) if transient(&e) && start.elapsed() + delay < patience.total => {
                tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(patience.max_delay);
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick() -> Patience {
        Patience {
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            total: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn completion_is_retried_through_transient_errors_until_it_lands() {
        let tries = AtomicU32::new(0);
        let result = settle(quick(), || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Status::unavailable("database unavailable, retry later")),
                1 => Err(Status::internal("internal error (correlation id err_1)")),
                2 => Err(Status::deadline_exceeded("slow")),
                _ => Ok("SUCCEEDED"),
            }
        })
        .await;
        assert_eq!(result.ok(), Some("SUCCEEDED"));
        assert_eq!(tries.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_lost_lease_or_a_refusal_ends_the_retries_at_once() {
        for status in [
            Status::failed_precondition("lease lost"),
            Status::invalid_argument("bad"),
            Status::unauthenticated("no"),
        ] {
            let code = status.code();
            let mut once = Some(status);
            let calls = AtomicU32::new(0);
            let result = settle(quick(), || {
                calls.fetch_add(1, Ordering::SeqCst);
                let s = once.take();
                async move { Err::<(), _>(s.unwrap_or_else(|| Status::ok(""))) }
            })
            .await;
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            assert_eq!(result.err().map(|s| s.code()), Some(code));
        }
    }

    #[tokio::test]
    async fn retrying_stops_when_patience_runs_out() {
        let patience = Patience {
            first_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(10),
            total: Duration::from_millis(60),
        };
        let calls = AtomicU32::new(0);
        let result = settle(patience, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(Status::unavailable("down")) }
        })
        .await;
        assert_eq!(result.err().map(|s| s.code()), Some(Code::Unavailable));
        let calls = calls.load(Ordering::SeqCst);
        assert!((3..=12).contains(&calls), "{calls}");
    }
}
