//! `tuna server`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tuna_config::Config;
use tuna_server::serve::{ControlPlane, ServeError};
use tuna_telemetry::shutdown_signal;

use super::CliError;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML config file (flags and TUNA_* variables override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long)]
    listen: Option<String>,
    /// postgres://... ; default: sqlite file <data-dir>/tuna.db.
    #[arg(long)]
    database_url: Option<String>,
    /// Directory of the embedded database and local blob store.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Lease length in milliseconds.
    #[arg(long)]
    lease_ms: Option<i64>,
    /// Largest accepted upload in bytes.
    #[arg(long)]
    max_upload_bytes: Option<i64>,
    /// Also run a CPU training worker in this process (single-machine use).
    #[arg(long)]
    embedded_worker: bool,
    /// Serve Prometheus `GET /metrics` on this address (plain HTTP, its own port).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// PEM certificate chain: serve TLS only (with --tls-key).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Serve a non-loopback address without TLS, an API key or a worker token (refused
    /// otherwise): for TLS ended by a proxy in front, or an open server on purpose.
    #[arg(long)]
    insecure: bool,
    /// Log lines as text (default) or json (also TUNA_LOG_FORMAT, [telemetry] log_format).
    #[arg(long, value_parser = super::parse_log_format)]
    log_format: Option<tuna_config::LogFormat>,
}

/// `api_key` is the global `--api-key` (or TUNA_API_KEY).
pub async fn run(args: &ServerArgs, api_key: Option<&str>) -> Result<ExitCode, CliError> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(v) = &args.listen {
        config.api.listen = v.clone();
    }
    if let Some(v) = &args.database_url {
        config.queue.database_url = v.clone();
    }
    if let Some(v) = &args.data_dir {
        config.queue.data_dir = v.clone();
    }
    if let Some(v) = args.lease_ms {
        config.queue.lease_ms = v;
    }
    if let Some(v) = args.max_upload_bytes {
        config.api.max_upload_bytes = v;
    }
    if let Some(v) = api_key {
        config.api.api_key = v.to_string();
    }
    if args.insecure {
        config.api.insecure = true;
    }
    if let Some(v) = &args.metrics_listen {
        config.telemetry.metrics_listen = v.clone();
    }
    if let Some(v) = &args.tls_cert {
        config.api.tls_cert = v.clone();
    }
    if let Some(v) = &args.tls_key {
        config.api.tls_key = v.clone();
    }
    if let Some(v) = args.log_format {
        config.telemetry.log_format = v;
    }
    config.validate()?;
    let _telemetry = tuna_telemetry::init("tuna-server", &config.telemetry)?;
    let plane = ControlPlane::open(&config).await?;
    tracing::info!(
        database = %redact(&config.database_url()),
        blobs = %if config.blobs.url.is_empty() {
            config.blob_dir().display().to_string()
        } else {
            config.blobs.url.clone()
        },
        "store opened"
    );
    if !args.embedded_worker {
        plane.serve(&config.api.listen, shutdown_signal()).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let listen = &config.api.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: listen.clone(),
        source,
    })?;
    // Shutdown order: the worker drains first (checkpoint, release the lease) while the
    // server still answers, then the server stops.
    let (stop_worker, worker_stopped) = tokio::sync::watch::channel(false);
    let (stop_server, mut server_stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(plane.serve_on(listener, async move {
        let _ = server_stopped.wait_for(|s| *s).await;
    }));
    // The worker reaches its own process over loopback, through the same API as any worker.
    let worker_args =
        super::worker::WorkerArgs::in_process(config.queue.data_dir.join("worker-cache"));
    // Over TLS the worker verifies the server like any client: TUNA_CA_FILE / [worker] ca_file
    // (the server's own certificate, when self-signed), else the system's roots.
    let scheme = if config.api.tls_cert.as_os_str().is_empty() {
        "http"
    } else {
        "https"
    };
    let mut agent_config =
        super::worker::agent_config(&format!("{scheme}://{local}"), &worker_args);
    if !config.worker.ca_file.as_os_str().is_empty() {
        agent_config.ca_file = Some(config.worker.ca_file.clone());
    }
    let api = &config.api;
    agent_config.worker_token = (!api.worker_token.is_empty()).then(|| api.worker_token.clone());
    let agent = tuna_worker::agent::Agent::register(
        agent_config,
        std::sync::Arc::new(tuna_worker::runner::EngineRunner),
    )
    .await?;
    let worker = tokio::spawn(async move { agent.run(worker_stopped).await });
    shutdown_signal().await;
    let _ = stop_worker.send(true);
    let _ = worker.await;
    let _ = stop_server.send(true);
    server
        .await
        .map_err(|e| CliError::Usage(format!("server task: {e}")))??;
    Ok(ExitCode::SUCCESS)
}

/// Hides a password in a database URL before it is logged.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
