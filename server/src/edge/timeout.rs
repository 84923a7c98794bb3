//! A deadline per unary call, so a stuck query cannot hold a connection slot forever. Streaming
//! calls (watches, uploads, downloads) are exempt: their length is the user's business, and
//! they end on shutdown by themselves. The AcquireJob long-poll gets the longest wait the server
//! grants plus the unary deadline.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use super::methods::{Catalog, Kind};

/// Bounds each call by its [`Kind`].
#[derive(Clone)]
pub struct TimeoutLayer {
    pub catalog: Arc<Catalog>,
    pub unary: Duration,
    pub long_poll: Duration,
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            limits: self.clone(),
        }
    }
}

/// [`TimeoutLayer`]'s service.
#[derive(Clone)]
pub struct Timeout<S> {
    inner: S,
    limits: TimeoutLayer,
}

impl<S, B> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = match self.limits.catalog.kind(req.uri().path()) {
            Kind::Unary => Some(self.limits.unary),
            Kind::LongPoll => Some(self.limits.long_poll),
            Kind::Streaming => None,
        };
        let fut = self.inner.call(req);
        let Some(limit) = limit else {
            return Box::pin(fut);
        };
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call exceeded the server's {} ms limit",
                    limit.as_millis()
                ))
                .into_http()),
            }
        })
    }
}
