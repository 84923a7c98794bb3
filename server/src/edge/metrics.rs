//! Per-RPC metrics: a count and a latency per method and gRPC status code, for every call
//! including the ones the edge itself refuses (unauthenticated, timed out). A streaming call's
//! status arrives in its trailers, so its body is watched to the end; its latency is then the
//! stream's duration.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::methods::Catalog;
use crate::metrics::ServiceMetrics;

/// Records [`ServiceMetrics::rpc_finished`] once per call.
#[derive(Clone)]
pub struct MetricsLayer {
    pub catalog: Arc<Catalog>,
    pub metrics: ServiceMetrics,
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// [`MetricsLayer`]'s service.
#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    layer: MetricsLayer,
}

impl<S, B> Service<Request<B>> for Metrics<S>
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
        let call = Pending {
            method: self.layer.catalog.label(req.uri().path()),
            started: Instant::now(),
            metrics: self.layer.metrics.clone(),
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            undecodable_is_invalid_argument(response.headers_mut());
            // An error before any message is a trailers-only response: the status is here.
            if let Some(code) = status_code(response.headers()) {
                call.finish(code);
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let body = Body::new(Watched {
                inner: body,
                call: Some(call),
            });
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// tonic answers a request body that is not valid protobuf with INTERNAL (gRPC's own code
/// table says so), which reads as a server fault and hides a client's bug; the call's input
/// was invalid, so it becomes INVALID_ARGUMENT. Only trailers-only answers carry it here,
/// which is every decode error before the first response message.
fn undecodable_is_invalid_argument(headers: &mut HeaderMap) {
    const DECODE: &str = "failed%20to%20decode%20Protobuf%20message";
    let internal = status_code(headers) == Some(Code::Internal);
    let decode = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.starts_with(DECODE) || m.starts_with("failed to decode Protobuf"));
    if internal && decode {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(Code::InvalidArgument as i32),
        );
    }
}

fn status_code(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// A call not yet recorded.
struct Pending {
    method: Arc<str>,
    started: Instant,
    metrics: ServiceMetrics,
}

impl Pending {
    fn finish(self, code: Code) {
        self.metrics
            .rpc_finished(self.method, code, self.started.elapsed().as_secs_f64());
    }
}

/// A response body that records its call when the trailers (or an error, or the end) pass.
struct Watched {
    inner: Body,
    call: Option<Pending>,
}

impl Watched {
    fn finish(&mut self, code: Code) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => self.finish(status.code()),
            // tonic always ends with trailers; an end without them is not a success.
            Poll::Ready(None) => self.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    /// Dropped before its trailers: the client went away (or the server stopped).
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}
