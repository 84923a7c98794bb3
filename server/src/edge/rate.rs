//! A token bucket per API key, so one client flooding the server is refused with
//! RESOURCE_EXHAUSTED (naming the limit) while other keys' calls go on. It sits after
//! authentication, which names the key, and before the concurrency cap, so refused calls never
//! take a slot. Worker calls are paced by their leases and pass; so do health checks and the
//! anonymous callers of an open (loopback, no key configured) server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::{Either, Ready, ready};
use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::domain::access::{Caller, Role};

/// Buckets idle this long are dropped when the table grows, so it stays bounded by the keys
/// active recently.
const IDLE_SECS: f64 = 60.0;
/// Table size past which idle buckets are swept.
const SWEEP_AT: usize = 4096;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets, one per key id.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

impl RateLimiter {
    /// `per_sec` calls per second sustained, `burst` at once; `per_sec` 0 disables.
    pub fn new(per_sec: u64, burst: u64) -> Self {
        Self {
            per_sec: per_sec as f64,
            burst: burst.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key` now; Err with the wait until the next token.
    pub fn take(&self, key: &Arc<str>, now: Instant) -> Result<(), f64> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        // A poisoned lock only means another call panicked mid-update: the table is still
        // usable (at worst one bucket is a token off).
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= SWEEP_AT {
            buckets.retain(|_, b| now.duration_since(b.at).as_secs_f64() < IDLE_SECS);
        }
        let b = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - b.tokens) / self.per_sec)
        }
    }
}

/// Applies a shared [`RateLimiter`].
#[derive(Clone)]
pub struct RateLimitLayer {
    pub limiter: Arc<RateLimiter>,
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// [`RateLimitLayer`]'s service.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let refused = match req.extensions().get::<Caller>() {
            // An open server's anonymous callers hold no key to limit.
            Some(c) if c.role != Role::Worker && !c.is_anonymous() => {
                self.limiter.take(&c.key_id, Instant::now()).err()
            }
            _ => None,
        };
        match refused {
            Some(wait) => {
                let mut status = Status::resource_exhausted(format!(
                    "rate limit of {} calls/s for this API key exceeded (api.rate_limit_per_key); \
                     retry in {} ms",
                    self.limiter.per_sec,
                    (wait * 1000.0).ceil()
                ));
                if let Ok(v) = format!("{}", wait.ceil().max(1.0)).parse() {
                    status.metadata_mut().insert("retry-after", v);
                }
                Either::Left(ready(Ok(status.into_http())))
            }
            None => Either::Right(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_key_gets_its_burst_then_its_rate_and_other_keys_are_unaffected() {
        let limiter = RateLimiter::new(10, 5);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.take(&a, t0).is_ok());
        }
        let wait = limiter.take(&a, t0).unwrap_err();
        assert!((wait - 0.1).abs() < 1e-9, "{wait}");
        assert!(
            limiter.take(&b, t0).is_ok(),
            "another key has its own bucket"
        );
        // 100 ms later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.take(&a, t1).is_ok());
        assert!(limiter.take(&a, t1).is_err());
    }

    #[test]
    fn a_zero_rate_turns_the_limit_off() {
        let limiter = RateLimiter::new(0, 1);
        let a: Arc<str> = Arc::from("a");
        for _ in 0..1000 {
            assert!(limiter.take(&a, Instant::now()).is_ok());
        }
    }
}
