//! A global cap on calls being worked on, so a burst queues at the edge instead of exhausting
//! the database pool. A call holds its slot until its response head is ready: a unary call for
//! its whole run, a long-poll while it waits, a server stream only until it starts streaming.
//! Health checks and reflection bypass the cap, so probes still answer under load.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use super::methods::{Audience, audience};

/// At most `limit` calls at once; more wait for a slot (within their deadline, since the
/// timeout layer sits outside this one).
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
}

impl ConcurrencyLimitLayer {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// [`ConcurrencyLimitLayer`]'s service.
#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B> Service<Request<B>> for ConcurrencyLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if audience(req.uri().path()) == Audience::Public {
            return Box::pin(self.inner.call(req));
        }
        // The service polled ready is the one that must be called: take it, leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let permits = self.permits.clone();
        Box::pin(async move {
            // Waiting here, not in poll_ready, keeps one busy connection from stalling others
            // multiplexed on it.
            let Ok(_permit) = permits.acquire_owned().await else {
                return Ok(Status::unavailable("server is shutting down").into_http());
            };
            inner.call(req).await
        })
    }
}
