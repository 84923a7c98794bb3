//! `tuna worker`: one training worker process per device.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use tokio::sync::watch;
use tuna_config::Config;
use tuna_worker::agent::{Agent, AgentConfig};
use tuna_worker::runner::EngineRunner;

use super::CliError;

/// Flags override the config file's `[worker]` section and `TUNA_*` variables.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// TOML config file, the same format as `tuna server --config` (its [worker] and
    /// [telemetry] sections).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Control plane URL (defaults to --server / TUNA_SERVER / [worker] server).
    #[arg(long = "server-url")]
    server_url: Option<String>,
    /// Worker token (when the server requires one; also TUNA_WORKER_TOKEN).
    #[arg(long, hide_env_values = true)]
    token: Option<String>,
    /// Name shown in job events (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// cpu (default). cuda / cuda:N are refused until the engine trains on CUDA.
    #[arg(long)]
    device: Option<String>,
    /// Device memory to advertise, in bytes.
    #[arg(long)]
    memory_bytes: Option<i64>,
    /// Where downloaded models and datasets are cached by content hash (default
    /// tuna-worker-cache).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Exit after this many jobs.
    #[arg(long)]
    max_jobs: Option<usize>,
    /// Log lines as text (default) or json (also TUNA_LOG_FORMAT, [telemetry] log_format).
    #[arg(long, value_parser = super::parse_log_format)]
    log_format: Option<tuna_config::LogFormat>,
}

impl WorkerArgs {
    /// A CPU worker inside another command (demo, embedded server).
    pub fn in_process(cache_dir: PathBuf) -> Self {
        Self {
            config: None,
            server_url: None,
            token: None,
            name: Some("in-process".into()),
            device: None,
            memory_bytes: None,
            cache_dir: Some(cache_dir),
            max_jobs: None,
            log_format: None,
        }
    }

    /// The flags given, over `w`.
    fn apply(&self, w: &mut tuna_config::Worker) {
        if let Some(v) = &self.server_url {
            w.server = v.clone();
        }
        if let Some(v) = &self.token {
            w.token = v.clone();
        }
        if let Some(v) = &self.name {
            w.name = v.clone();
        }
        if let Some(v) = &self.device {
            w.device = v.clone();
        }
        if let Some(v) = self.memory_bytes {
            w.memory_bytes = v;
        }
        if let Some(v) = &self.cache_dir {
            w.cache_dir = v.clone();
        }
        if let Some(v) = self.max_jobs {
            w.max_jobs = v as u64;
        }
    }
}

/// The agent configuration of an in-process worker talking to `server` (defaults, then `args`).
pub fn agent_config(server: &str, args: &WorkerArgs) -> AgentConfig {
    let mut w = tuna_config::Worker {
        server: server.to_string(),
        ..Default::default()
    };
    args.apply(&mut w);
    AgentConfig::from_section(&w)
}

/// Runs an agent until SIGTERM/Ctrl-C (draining a running job) or `max_jobs`.
pub async fn run_agent(config: AgentConfig) -> Result<(), CliError> {
    let agent = Agent::register(config, Arc::new(EngineRunner)).await?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tuna_telemetry::shutdown_signal().await;
        tracing::info!("worker shutting down: draining");
        let _ = tx.send(true);
    });
    agent.run(rx).await?;
    Ok(())
}

pub async fn run(
    server: &str,
    api_key: Option<String>,
    ca_file: Option<&std::path::Path>,
    args: &WorkerArgs,
) -> Result<ExitCode, CliError> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    // The global --server always has a value; only one that differs from its default (so was
    // given as a flag or TUNA_SERVER) outranks the file.
    if server != tuna_config::Worker::default().server {
        config.worker.server = server.to_string();
    }
    if let Some(key) = api_key {
        config.worker.api_key = key;
    }
    if let Some(ca) = ca_file {
        config.worker.ca_file = ca.to_path_buf();
    }
    args.apply(&mut config.worker);
    config.validate()?;
    if let Some(v) = args.log_format {
        config.telemetry.log_format = v;
    }
    let _telemetry = tuna_telemetry::init("tuna-worker", &config.telemetry)?;
    run_agent(AgentConfig::from_section(&config.worker)).await?;
    Ok(ExitCode::SUCCESS)
}
