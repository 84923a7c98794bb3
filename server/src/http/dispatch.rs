//! Tells HTTP requests (`/api/…`, the dashboard) from gRPC calls by path, outside the gRPC edge
//! stack, and hands each to its side. gRPC paths are `/<package.Service>/<Method>`, which
//! never start with `/api/` or `/ui/`.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use super::dashboard;
use super::gateway::{Gateway, GrpcStack};
use super::routes::RouteError;
use crate::edge::auth::Authenticator;

/// Puts the HTTP side in front of the gRPC stack.
#[derive(Clone)]
pub struct HttpLayer {
    gateway: Gateway,
}

impl HttpLayer {
    /// `grpc`: the same services behind the same edge stack the server serves; `api_key`:
    /// the edge's client credential, also checked before a request body is read.
    pub fn new(grpc: GrpcStack, auth: Authenticator) -> Result<Self, RouteError> {
        Ok(Self {
            gateway: Gateway::new(grpc, auth)?,
        })
    }
}

impl<S> Layer<S> for HttpLayer {
    type Service = Dispatch<S>;

    fn layer(&self, grpc: S) -> Dispatch<S> {
        Dispatch {
            gateway: self.gateway.clone(),
            grpc,
        }
    }
}

/// [`HttpLayer`]'s service.
#[derive(Clone)]
pub struct Dispatch<S> {
    gateway: Gateway,
    grpc: S,
}

impl<S> Service<Request<Body>> for Dispatch<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.grpc.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        if let Some(rpc) = path.strip_prefix("/api/") {
            let gateway = self.gateway.clone();
            let rpc = rpc.to_string();
            let span = tracing::info_span!("http", method = %req.method(), rpc = %rpc);
            return Box::pin(async move { Ok(gateway.serve(&rpc, req).await) }.instrument(span));
        }
        if dashboard::is_dashboard(&path) {
            let response = dashboard::serve(&req);
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.grpc.call(req))
    }
}
