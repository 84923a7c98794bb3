//! The one tower stack in front of every service, applied once at the composition root
//! (`Server::builder().layer(...)`) instead of per service, so no service can be added without
//! authentication, metrics, a deadline and the concurrency cap.
//!
//! Order, outermost first: metrics (sees every outcome, refusals included), authentication
//! (refuses before a slot is taken, and names the caller), the per-key rate limit, the unary
//! deadline (which also bounds the wait for a slot), the concurrency limit, then the routes.

pub mod auth;
pub mod limit;
pub mod methods;
pub mod metrics;
pub mod rate;
pub mod timeout;

use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use crate::metrics::ServiceMetrics;
use auth::{Auth, AuthLayer, Authenticator, Token};
use limit::{ConcurrencyLimit, ConcurrencyLimitLayer};
use methods::Catalog;
use metrics::{Metrics, MetricsLayer};
use rate::{RateLimit, RateLimitLayer, RateLimiter};
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
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Calls per second per client or admin key (0: unlimited), and the burst above it.
    pub rate_limit_per_key: u64,
    pub rate_limit_burst: u64,
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
    rate: RateLimitLayer,
    timeout: TimeoutLayer,
    limit: ConcurrencyLimitLayer,
}

impl EdgeLayer {
    /// `store` holds the API keys.
    pub fn new(
        config: EdgeConfig,
        metrics: ServiceMetrics,
        store: Arc<dyn crate::store::Store>,
    ) -> Self {
        let catalog = Arc::new(Catalog::served());
        Self {
            metrics: MetricsLayer {
                catalog: catalog.clone(),
                metrics,
            },
            auth: AuthLayer {
                authenticator: Authenticator {
                    api_key: config.api_key,
                    worker_token: config.worker_token,
                    store,
                },
            },
            rate: RateLimitLayer {
                limiter: Arc::new(RateLimiter::new(
                    config.rate_limit_per_key,
                    config.rate_limit_burst,
                )),
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

impl EdgeLayer {
    /// Who a call is, decided the way this stack decides it (the HTTP gateway asks before it
    /// reads a body).
    pub fn authenticator(&self) -> Authenticator {
        self.auth.authenticator.clone()
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Metrics<Auth<RateLimit<Timeout<ConcurrencyLimit<S>>>>>;

    fn layer(&self, routes: S) -> Self::Service {
        self.metrics.layer(
            self.auth.layer(
                self.rate
                    .layer(self.timeout.layer(self.limit.layer(routes))),
            ),
        )
    }
}
