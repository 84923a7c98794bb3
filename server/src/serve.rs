//! The composition root: store, blob store, services behind one edge stack (authentication,
//! per-RPC metrics, deadlines, a concurrency cap), health, reflection, background reaper and
//! sweep controller, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tower::Layer;
use tower::util::BoxCloneSyncService;
use tuna_proto::v1::admin_service_server::AdminServiceServer;
use tuna_proto::v1::artifact_service_server::ArtifactServiceServer;
use tuna_proto::v1::file_service_server::FileServiceServer;
use tuna_proto::v1::fleet_service_server::FleetServiceServer;
use tuna_proto::v1::job_service_server::JobServiceServer;
use tuna_proto::v1::model_service_server::ModelServiceServer;
use tuna_proto::v1::sweep_service_server::SweepServiceServer;
use tuna_proto::v1::worker_service_server::WorkerServiceServer;

use crate::api::admin::Admin;
use crate::api::artifacts::Artifacts;
use crate::api::files::Files;
use crate::api::fleet::Fleet;
use crate::api::jobs::Jobs;
use crate::api::models::Models;
use crate::api::sweeps::Sweeps;
use crate::api::workers::Workers;
use crate::api::{ApiContext, Limits};
use crate::blobs::{BlobError, Blobs};
use crate::config::{Config, ConfigError};
use crate::edge::auth::Token;
use crate::edge::{EdgeConfig, EdgeLayer};
use crate::http::{GrpcStack, HttpLayer, RouteError};
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
    #[error(transparent)]
    Routes(#[from] RouteError),
    #[error(
        "refusing to serve {addr} without {missing}: anyone who reaches a non-loopback address \
         could run, read and cancel jobs, and bearer tokens would cross the network in clear. \
         Set TUNA_API_KEY and TUNA_WORKER_TOKEN (or [api] api_key and worker_token; `openssl \
         rand -hex 32` makes one) and TLS (--tls-cert/--tls-key, [api] tls_cert and tls_key), \
         listen on 127.0.0.1, or pass --insecure (TUNA_INSECURE=true) when TLS ends in front of \
         the server or an open server is meant"
    )]
    Insecure { addr: SocketAddr, missing: String },
    #[error("TLS: {path}: {message}")]
    Tls { path: String, message: String },
}

/// Refuses a non-loopback listener when a secret is missing, unless `insecure`: an empty
/// secret disables its check, which is only safe where no one else can connect.
pub fn check_exposure(addr: SocketAddr, edge: &EdgeConfig) -> Result<(), ServeError> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    let mut missing: Vec<&str> = [&edge.api_key, &edge.worker_token]
        .into_iter()
        .filter(|t| !t.is_set())
        .map(|t| t.what())
        .collect();
    if edge.tls.is_none() {
        missing.push("TLS");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if edge.insecure {
        tracing::warn!(
            %addr,
            missing = %missing.join(", "),
            "serving a non-loopback address without credentials (--insecure)"
        );
        return Ok(());
    }
    Err(ServeError::Insecure {
        addr,
        missing: missing.join(" and "),
    })
}

/// A configured control plane, ready to serve.
pub struct ControlPlane {
    pub ctx: ApiContext,
    stopping: tokio::sync::watch::Sender<bool>,
    edge: EdgeConfig,
    /// Where to serve Prometheus `GET /metrics`, if anywhere.
    metrics_listen: Option<String>,
    retention: crate::retention::RetentionPolicy,
}

impl ControlPlane {
    /// Opens the store (migrating it) and the blob store named by `config`.
    pub async fn open(config: &Config) -> Result<Self, ServeError> {
        Self::open_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn open_with_clock(
        config: &Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServeError> {
        config.validate()?;
        let url = config.database_url();
        if url.starts_with("sqlite:") {
            let data_dir = &config.queue.data_dir;
            std::fs::create_dir_all(data_dir).map_err(|source| {
                ServeError::Blob(BlobError::Io {
                    path: data_dir.display().to_string(),
                    source,
                })
            })?;
        }
        let store = store::open(&url, crate::config::policy(config), clock).await?;
        let blobs = Blobs::open(&config.blobs.url, &config.blob_dir())?;
        Ok(Self::new(
            store,
            blobs,
            crate::config::limits(config),
            config,
        ))
    }

    /// Assembles a control plane from parts (tests pass their own store and limits); the edge
    /// settings come from `config.api`.
    pub fn new(store: Arc<dyn Store>, blobs: Blobs, limits: Limits, config: &Config) -> Self {
        let (stopping, shutdown) = tokio::sync::watch::channel(false);
        let api = &config.api;
        let edge = EdgeConfig {
            api_key: Token::new(&api.api_key, "API key"),
            worker_token: Token::new(&api.worker_token, "worker token"),
            unary_timeout: Duration::from_millis(api.unary_timeout_ms),
            max_acquire_wait: Duration::from_millis(
                u64::try_from(limits.max_acquire_wait_ms).unwrap_or(0),
            ),
            concurrency_limit: usize::try_from(api.concurrency_limit).unwrap_or(usize::MAX),
            max_streams_per_connection: api.max_streams_per_connection,
            rate_limit_per_key: api.rate_limit_per_key,
            rate_limit_burst: api.rate_limit_burst,
            insecure: api.insecure,
            tls: (!api.tls_cert.as_os_str().is_empty()).then(|| crate::edge::TlsFiles {
                cert: api.tls_cert.clone(),
                key: api.tls_key.clone(),
            }),
        };
        Self {
            ctx: ApiContext {
                store,
                blobs,
                uploads: Arc::new(tokio::sync::Semaphore::new(
                    limits
                        .max_concurrent_uploads
                        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
                )),
                key_uploads: Arc::default(),
                limits,
                metrics: ServiceMetrics::new(),
                shutdown,
            },
            stopping,
            edge,
            metrics_listen: (!config.telemetry.metrics_listen.is_empty())
                .then(|| config.telemetry.metrics_listen.clone()),
            retention: crate::retention::RetentionPolicy::from_config(&config.retention),
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
        if let Some(addr) = local {
            check_exposure(addr, &self.edge)?;
        }
        let (health_reporter, health) = tonic_health::server::health_reporter();
        let services = vec![
            <JobServiceServer<Jobs> as NamedService>::NAME,
            <FileServiceServer<Files> as NamedService>::NAME,
            <ArtifactServiceServer<Artifacts> as NamedService>::NAME,
            <WorkerServiceServer<Workers> as NamedService>::NAME,
            <ModelServiceServer<Models> as NamedService>::NAME,
            <SweepServiceServer<Sweeps> as NamedService>::NAME,
            <FleetServiceServer<Fleet> as NamedService>::NAME,
            <AdminServiceServer<Admin> as NamedService>::NAME,
        ];
        for service in &services {
            health_reporter
                .set_service_status(*service, tonic_health::ServingStatus::Serving)
                .await;
        }
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
        let retention = tokio::spawn(
            crate::retention::Retention::new(
                self.ctx.store.clone(),
                self.ctx.blobs.clone(),
                self.retention.clone(),
            )
            .run_until(self.ctx.shutdown.clone()),
        );
        let prometheus = match &self.metrics_listen {
            Some(addr) => {
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ServeError::Bind {
                            addr: addr.clone(),
                            source,
                        })?;
                tracing::info!(addr = ?listener.local_addr().ok(), "Prometheus metrics at /metrics");
                Some(tokio::spawn(crate::prometheus::serve(
                    listener,
                    self.ctx.metrics.prometheus(),
                    self.ctx.store.clone(),
                    self.ctx.shutdown.clone(),
                )))
            }
            None => None,
        };
        let readiness = tokio::spawn(crate::readiness::watch(
            self.ctx.store.clone(),
            self.ctx.blobs.clone(),
            health_reporter.clone(),
            services,
            Duration::from_secs(1),
            self.ctx.shutdown.clone(),
        ));
        let sampler = tokio::spawn(sample_forever(
            self.ctx.store.clone(),
            self.ctx.metrics.clone(),
            Duration::from_secs(15),
        ));

        let tls = self.edge.tls.as_ref().map(tls_config).transpose()?;
        let max_streams = self.edge.max_streams_per_connection;
        let edge = EdgeLayer::new(self.edge, self.ctx.metrics.clone(), self.ctx.store.clone());
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
        let routes = Routes::new(health)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(JobServiceServer::new(Jobs::new(ctx.clone())))
            .add_service(FileServiceServer::new(Files::new(ctx.clone())))
            .add_service(ArtifactServiceServer::new(Artifacts::new(ctx.clone())))
            .add_service(ModelServiceServer::new(Models::new(ctx.clone())))
            .add_service(SweepServiceServer::new(Sweeps::new(ctx.clone())))
            .add_service(FleetServiceServer::new(Fleet::new(ctx.clone())))
            .add_service(AdminServiceServer::new(Admin::new(ctx.clone())))
            .add_service(WorkerServiceServer::new(Workers::new(ctx)))
            .prepare();
        // The JSON gateway calls the services through the same edge stack (and the same
        // concurrency cap and metrics), in-process.
        let grpc: GrpcStack = BoxCloneSyncService::new(edge.clone().layer(routes.clone()));
        let http = HttpLayer::new(grpc, edge.authenticator())?;
        tracing::info!(addr = ?local, "tuna control plane serving (gRPC, and HTTP: /api/, dashboard at /)");
        let mut server = Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).map_err(|e| ServeError::Tls {
                path: "certificate and key".into(),
                message: e.to_string(),
            })?;
        }
        let result = server
            .accept_http1(true)
            .trace_fn(|req| {
                let span = tracing::info_span!("grpc", method = %req.uri().path());
                tuna_telemetry::propagation::continue_from_headers(&span, req.headers());
                span
            })
            .tcp_nodelay(true)
            .max_concurrent_streams(Some(max_streams))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(http)
            .layer(edge)
            .add_routes(routes)
            // `tcp_nodelay` above only applies to listeners tonic binds itself: set it on each
            // accepted socket, or small responses wait on Nagle + delayed ACK (~40 ms).
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await;
        reaper.abort();
        // It saw the shutdown signal; give it a moment to release its lease.
        if tokio::time::timeout(Duration::from_secs(2), controller)
            .await
            .is_err()
        {
            tracing::warn!("the sweep controller did not stop in time");
        }
        if tokio::time::timeout(Duration::from_secs(2), retention)
            .await
            .is_err()
        {
            tracing::warn!("retention did not stop in time");
        }
        sampler.abort();
        readiness.abort();
        if let Some(task) = prometheus {
            task.abort();
        }
        result?;
        tracing::info!("tuna control plane stopped");
        Ok(())
    }
}

/// The server's TLS settings from its PEM files (read at start-up, so a bad path or file
/// stops the server with the file named).
fn tls_config(files: &crate::edge::TlsFiles) -> Result<ServerTlsConfig, ServeError> {
    tuna_telemetry::install_tls_provider();
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ServeError::Tls {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    };
    let cert = read(&files.cert)?;
    let key = read(&files.key)?;
    for (path, pem, marker) in [
        (&files.cert, &cert, "CERTIFICATE"),
        (&files.key, &key, "PRIVATE KEY"),
    ] {
        if !String::from_utf8_lossy(pem).contains(marker) {
            return Err(ServeError::Tls {
                path: path.display().to_string(),
                message: format!("not a PEM file with a {marker} block"),
            });
        }
    }
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
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
