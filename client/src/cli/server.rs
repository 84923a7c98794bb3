//! `tuna server`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tuna_server::config::ServerConfig;
use tuna_server::serve::{ControlPlane, shutdown_signal};

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
}

pub async fn run(args: &ServerArgs) -> Result<ExitCode, CliError> {
    let mut config = ServerConfig::load(args.config.as_deref(), std::env::vars())
        .map_err(tuna_server::serve::ServeError::from)?;
    if let Some(v) = &args.listen {
        config.listen = v.clone();
    }
    if let Some(v) = &args.database_url {
        config.database_url = v.clone();
    }
    if let Some(v) = &args.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = args.lease_ms {
        config.lease_ms = v;
    }
    if let Some(v) = args.max_upload_bytes {
        config.max_upload_bytes = v;
    }
    let _telemetry = tuna_server::telemetry::init(
        "tuna-server",
        config.log_format == "json",
        &config.otlp_endpoint,
        "info",
    )?;
    let plane = ControlPlane::open(&config).await?;
    tracing::info!(
        database = %redact(&config.database_url()),
        blobs = %config.blob_dir().display(),
        "store opened"
    );
    plane.serve(&config.listen, shutdown_signal()).await?;
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
