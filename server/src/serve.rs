//! The composition root: store, blob store, services, health, reflection, background reaper
//! and sweep controller, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tuna_proto::v1::artifact_service_server::ArtifactServiceServer;
use tuna_proto::v1::file_service_server::FileServiceServer;
use tuna_proto::v1::job_service_server::JobServiceServer;
use tuna_proto::v1::model_service_server::ModelServiceServer;
use tuna_proto::v1::sweep_service_server::SweepServiceServer;
use tuna_proto::v1::worker_service_server::WorkerServiceServer;

use crate::api::artifacts::Artifacts;
use crate::api::files::Files;
use crate::api::jobs::Jobs;
use crate::api::models::Models;
use crate::api::sweeps::Sweeps;
use crate::api::workers::Workers;
use crate::api::{ApiContext, Limits};
use crate::auth::Token;
use crate::blobs::{BlobError, Blobs};
use crate::config::{ConfigError, ServerConfig};
use crate::metrics::{ServiceMetrics, sample_forever};
use crate::store::{self, Clock, Store, StoreError, SystemClock};
use crate::sweeps::Controller;

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error("opening the blob store: {0}")]
    Blob(#[from] BlobError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A configured control plane, ready to serve.
pub struct ControlPlane {
    pub ctx: ApiContext,
    stopping: tokio::sync::watch::Sender<bool>,
    api_key: Token,
    worker_token: Token,
}

impl ControlPlane {
    /// Opens the store (migrating it) and the blob store named by `config`.
    pub async fn open(config: &ServerConfig) -> Result<Self, ServeError> {
        Self::open_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn open_with_clock(
        config: &ServerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServeError> {
        config.validate()?;
        let url = config.database_url();
        if url.starts_with("sqlite:") {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| {
                ServeError::Blob(BlobError::Io {
                    path: config.data_dir.display().to_string(),
                    source,
                })
            })?;
        }
        let store = store::open(&url, config.policy(), clock).await?;
        let blobs = Blobs::local(&config.blob_dir())?;
        Ok(Self::new(store, blobs, config.limits(), config))
    }

    /// Assembles a control plane from parts (tests pass their own store).
    pub fn new(store: Arc<dyn Store>, blobs: Blobs, limits: Limits, config: &ServerConfig) -> Self {
        let (stopping, shutdown) = tokio::sync::watch::channel(false);
        Self {
            ctx: ApiContext {
                store,
                blobs,
                limits,
                metrics: ServiceMetrics::new(),
                shutdown,
            },
            stopping,
            api_key: Token::new(&config.api_key, "API key"),
            worker_token: Token::new(&config.worker_token, "worker token"),
        }
    }

    /// Binds `addr` and serves until `shutdown` resolves.
    pub async fn serve(
        self,
        addr: &str,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        self.serve_on(listener, shutdown).await
    }

    /// Serves on an already-bound listener (port 0 in tests) until `shutdown` resolves.
    pub async fn serve_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let local: Option<SocketAddr> = listener.local_addr().ok();
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<JobServiceServer<Jobs>>()
            .await;
        health_reporter
            .set_serving::<FileServiceServer<Files>>()
            .await;
        health_reporter
            .set_serving::<ArtifactServiceServer<Artifacts>>()
            .await;
        health_reporter
            .set_serving::<WorkerServiceServer<Workers>>()
            .await;
        health_reporter
            .set_serving::<ModelServiceServer<Models>>()
            .await;
        health_reporter
            .set_serving::<SweepServiceServer<Sweeps>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tuna_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tuna_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let reaper = tokio::spawn(reap_forever(
            self.ctx.store.clone(),
            self.ctx.metrics.clone(),
            Duration::from_millis(self.ctx.limits.poll_interval_ms),
        ));
        let tick = Duration::from_millis(self.ctx.limits.poll_interval_ms.clamp(100, 2_000));
        let controller = tokio::spawn(
            Controller::new(self.ctx.store.clone(), tick)
                .run_until(tick, self.ctx.shutdown.clone()),
        );
        let sampler = tokio::spawn(sample_forever(
            self.ctx.store.clone(),
            self.ctx.metrics.clone(),
            Duration::from_secs(15),
        ));

        let api_key = self.api_key.clone();
        let client_auth = move |req| api_key.check(req);
        let worker_token = self.worker_token.clone();
        let worker_auth = move |req| worker_token.check(req);
        let ctx = self.ctx;
        let reporter = health_reporter.clone();
        let stopping = self.stopping;
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: draining requests");
            // Watches and long-polls end now; unary calls in flight finish.
            let _ = stopping.send(true);
            reporter.set_not_serving::<JobServiceServer<Jobs>>().await;
            reporter
                .set_not_serving::<WorkerServiceServer<Workers>>()
                .await;
        };
        tracing::info!(addr = ?local, "tuna control plane serving");
        let result = Server::builder()
            .trace_fn(|req| tracing::info_span!("grpc", method = %req.uri().path()))
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(JobServiceServer::with_interceptor(
                Jobs::new(ctx.clone()),
                client_auth.clone(),
            ))
            .add_service(FileServiceServer::with_interceptor(
                Files::new(ctx.clone()),
                client_auth.clone(),
            ))
            .add_service(ArtifactServiceServer::with_interceptor(
                Artifacts::new(ctx.clone()),
                client_auth.clone(),
            ))
            .add_service(ModelServiceServer::with_interceptor(
                Models::new(ctx.clone()),
                client_auth.clone(),
            ))
            .add_service(SweepServiceServer::with_interceptor(
                Sweeps::new(ctx.clone()),
                client_auth,
            ))
            .add_service(WorkerServiceServer::with_interceptor(
                Workers::new(ctx),
                worker_auth,
            ))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await;
        reaper.abort();
        // It saw the shutdown signal; give it a moment to release its lease.
        if tokio::time::timeout(Duration::from_secs(2), controller)
            .await
            .is_err()
        {
            tracing::warn!("the sweep controller did not stop in time");
        }
        sampler.abort();
        result?;
        tracing::info!("tuna control plane stopped");
        Ok(())
    }
}

/// Periodically finishes what expired leases left behind (leader-only on PostgreSQL).
async fn reap_forever(store: Arc<dyn Store>, metrics: ServiceMetrics, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.reap_expired().await {
            Ok(0) => {}
            Ok(n) => {
                metrics.leases_lost(n);
                tracing::info!(jobs = n, "reaped expired leases");
            }
            Err(e) => tracing::warn!(error = %e, "reaping expired leases failed"),
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
