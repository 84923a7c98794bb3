//! The one tower stack in front of every service, applied once at the composition root
//! (`Server::builder().layer(...)`) instead of per service, so no service can be added without
//! authentication, metrics, a deadline and the concurrency cap.
//!
//! Order, outermost first: metrics (sees every outcome, refusals included), authentication
//! (refuses before a slot is taken), the unary deadline (which also bounds the wait for a
//! slot), the concurrency limit, then the routes.

pub mod auth;
pub mod limit;
pub mod methods;
pub mod metrics;
pub mod timeout;

use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use crate::metrics::ServiceMetrics;
use auth::{Auth, AuthLayer, Token};
use limit::{ConcurrencyLimit, ConcurrencyLimitLayer};
use methods::Catalog;
use metrics::{Metrics, MetricsLayer};
use timeout::{Timeout, TimeoutLayer};

/// Settings of the edge, from the `[api]` section.
#[derive(Clone)]
pub struct EdgeConfig {
    pub api_key: Token,
    pub worker_token: Token,
    pub unary_timeout: Duration,
    /// Longest AcquireJob wait the server grants; the long-poll's deadline adds the unary one.
    pub max_acquire_wait: Duration,
    pub concurrency_limit: usize,
    /// Serve a non-loopback address even without TLS or both secrets (`--insecure`).
    pub insecure: bool,
    /// PEM certificate chain and key: serve TLS only.
    pub tls: Option<TlsFiles>,
}

/// Where the server's certificate and key are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// The whole stack as one layer.
#[derive(Clone)]
pub struct EdgeLayer {
    metrics: MetricsLayer,
    auth: AuthLayer,
    timeout: TimeoutLayer,
    limit: ConcurrencyLimitLayer,
}

impl EdgeLayer {
    pub fn new(config: EdgeConfig, metrics: ServiceMetrics) -> Self {
        let catalog = Arc::new(Catalog::served());
        Self {
            metrics: MetricsLayer {
                catalog: catalog.clone(),
                metrics,
            },
            auth: AuthLayer {
                api_key: config.api_key,
                worker_token: config.worker_token,
            },
            timeout: TimeoutLayer {
                catalog,
                unary: config.unary_timeout,
                long_poll: config.max_acquire_wait + config.unary_timeout,
            },
            limit: ConcurrencyLimitLayer::new(config.concurrency_limit),
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Metrics<Auth<Timeout<ConcurrencyLimit<S>>>>;

    fn layer(&self, routes: S) -> Self::Service {
        self.metrics.layer(
            self.auth
                .layer(self.timeout.layer(self.limit.layer(routes))),
        )
    }
}
