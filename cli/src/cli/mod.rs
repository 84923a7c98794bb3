//! Command-line parsing and dispatch. Every command accepts `--output json`.

mod admin;
mod artifacts;
mod demo;
mod files;
mod jobs;
mod models;
pub(crate) mod output;
mod progress;
mod server;
mod sweeps;
mod train;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tuna_client::{Client, ClientError};

/// Exit code of `jobs watch` / `jobs create --wait` when the job FAILED.
pub const EXIT_JOB_FAILED: u8 = 3;
/// Exit code of `jobs watch` / `jobs create --wait` when the job was CANCELLED.
pub const EXIT_JOB_CANCELLED: u8 = 4;

#[derive(Debug, Parser)]
#[command(name = "tuna", version, about = "Tuna: fine-tuning jobs as a service")]
pub struct Cli {
    /// Control plane address.
    #[arg(
        long,
        global = true,
        env = "TUNA_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// API key for client services (when the server requires one).
    #[arg(long, global = true, env = "TUNA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// PEM CA certificate of an https:// server with a private CA (default: system roots).
    #[arg(long, global = true, env = "TUNA_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (embedded SQLite under ./tuna-data unless --database-url is set).
    Server(server::ServerArgs),
    /// Run everything in one process on the embedded default: control plane, a worker, a
    /// tiny model, a LoRA job followed live, the adapter downloaded, a summary.
    Demo(demo::DemoArgs),
    /// Train locally (no server): the worker's engine on a model folder and a JSONL file.
    Train(Box<train::TrainArgs>),
    /// Run a training worker that pulls jobs from the control plane.
    Worker(worker::WorkerArgs),
    /// Upload and manage datasets and model files.
    #[command(subcommand)]
    Files(files::FilesCommand),
    /// Create, inspect and control fine-tuning jobs.
    #[command(subcommand)]
    Jobs(Box<jobs::JobsCommand>),
    /// Register and list base models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// List and download adapters and checkpoints.
    #[command(subcommand)]
    Artifacts(artifacts::ArtifactsCommand),
    /// Hyperparameter sweeps: each trial is a job; CARBS, ASHA, Hyperband, bandits.
    #[command(subcommand)]
    Sweeps(sweeps::SweepsCommand),
    /// Administration: API keys of tenants (needs an admin key).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
}

/// Errors of the CLI.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Serve(#[from] tuna_server::serve::ServeError),
    #[error(transparent)]
    Config(#[from] tuna_config::ConfigError),
    #[error(transparent)]
    Telemetry(#[from] tuna_telemetry::TelemetryError),
    #[error(transparent)]
    Agent(#[from] tuna_worker::agent::AgentError),
    #[error("{0}")]
    Usage(String),
}

/// `--log-format`: text (the default) or json, one object per line, for log collectors.
pub(crate) fn parse_log_format(v: &str) -> Result<tuna_config::LogFormat, String> {
    match v {
        "text" => Ok(tuna_config::LogFormat::Text),
        "json" => Ok(tuna_config::LogFormat::Json),
        other => Err(format!("{other:?} is not a log format (text or json)")),
    }
}

async fn connect(cli: &Cli) -> Result<Client, CliError> {
    Ok(Client::connect_with(&cli.server, cli.api_key.as_deref(), cli.ca_file.as_deref()).await?)
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match &cli.command {
        Command::Server(args) => server::run(args, cli.api_key.as_deref()).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Train(args) => {
            let args = args.clone();
            tokio::task::spawn_blocking(move || train::run(&args))
                .await
                .map_err(|e| CliError::Usage(format!("training thread: {e}")))?
        }
        Command::Worker(args) => {
            worker::run(
                &cli.server,
                cli.api_key.clone(),
                cli.ca_file.as_deref(),
                args,
            )
            .await
        }
        Command::Files(cmd) => traced("files", files::run(&cli, cmd)).await,
        Command::Jobs(cmd) => traced("jobs", jobs::run(&cli, cmd)).await,
        Command::Models(cmd) => traced("models", models::run(&cli, cmd)).await,
        Command::Artifacts(cmd) => traced("artifacts", artifacts::run(&cli, cmd)).await,
        Command::Sweeps(cmd) => traced("sweeps", sweeps::run(&cli, cmd)).await,
        Command::Admin(cmd) => traced("admin", admin::run(&cli, cmd)).await,
    }
}

/// Runs a client command in a `tuna <group>` span exported over OTLP when
/// `TUNA_OTLP_ENDPOINT` is set, so its calls carry a `traceparent` and the server's (and a
/// job's worker's) spans join the same trace. Without the variable nothing is set up.
async fn traced(
    group: &'static str,
    command: impl std::future::Future<Output = Result<ExitCode, CliError>>,
) -> Result<ExitCode, CliError> {
    use tracing::Instrument;
    let endpoint = std::env::var("TUNA_OTLP_ENDPOINT").unwrap_or_default();
    if endpoint.is_empty() {
        return command.await;
    }
    let config = tuna_config::Telemetry {
        otlp_endpoint: endpoint,
        log_filter: "warn,tuna=info".into(),
        ..Default::default()
    };
    // Dropped at the end of this function: pending spans are flushed before the CLI exits.
    let _telemetry = tuna_telemetry::init("tuna-cli", &config)?;
    let args: Vec<String> = std::env::args().skip(1).take(2).collect();
    let span = tracing::info_span!("cli", group, command = %args.join(" "));
    command.instrument(span).await
}
