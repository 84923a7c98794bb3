//! `tuna worker`: one training worker process per device.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;
use tuna_worker::agent::{Agent, AgentConfig};
use tuna_worker::runner::EngineRunner;

use super::CliError;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Control plane URL (defaults to --server / TUNA_SERVER).
    #[arg(long = "server-url")]
    server_url: Option<String>,
    /// Worker token (when the server requires one).
    #[arg(long, env = "TUNA_WORKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Name shown in job events (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// cpu (cuda needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Device memory to advertise, in bytes.
    #[arg(long, default_value_t = 0)]
    memory_bytes: i64,
    /// Where downloaded models and datasets are cached by content hash.
    #[arg(long, default_value = "tuna-worker-cache")]
    cache_dir: PathBuf,
    /// Exit after this many jobs.
    #[arg(long)]
    max_jobs: Option<usize>,
}

impl WorkerArgs {
    /// A CPU worker inside another command (demo, embedded server).
    pub fn in_process(cache_dir: PathBuf) -> Self {
        Self {
            server_url: None,
            token: None,
            name: Some("in-process".into()),
            device: "cpu".into(),
            memory_bytes: 0,
            cache_dir,
            max_jobs: None,
        }
    }
}

/// The agent configuration for a worker talking to `server`.
pub fn agent_config(server: &str, args: &WorkerArgs, api_key: Option<String>) -> AgentConfig {
    AgentConfig {
        server: server.to_string(),
        worker_token: args.token.clone(),
        api_key,
        name: args.name.clone().unwrap_or_else(host_name),
        device: args.device.clone(),
        memory_bytes: args.memory_bytes,
        cache_dir: args.cache_dir.clone(),
        acquire_wait: Duration::from_secs(30),
        metrics_every: Duration::from_millis(250),
        max_jobs: args.max_jobs,
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// Runs an agent until SIGTERM/Ctrl-C (draining a running job) or `max_jobs`.
pub async fn run_agent(config: AgentConfig) -> Result<(), CliError> {
    let agent = Agent::register(config, Arc::new(EngineRunner)).await?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tuna_server::serve::shutdown_signal().await;
        tracing::info!("worker shutting down: draining");
        let _ = tx.send(true);
    });
    agent.run(rx).await?;
    Ok(())
}

pub async fn run(
    server: &str,
    api_key: Option<String>,
    args: &WorkerArgs,
) -> Result<ExitCode, CliError> {
    let _telemetry = tuna_server::telemetry::init("tuna-worker", false, "", "info")?;
    let server = args.server_url.as_deref().unwrap_or(server);
    run_agent(agent_config(server, args, api_key)).await?;
    Ok(ExitCode::SUCCESS)
}
