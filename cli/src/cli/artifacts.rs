//! `tuna artifacts ...`: what workers produced.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use serde_json::json;
use tuna_client::{ClientError, pb};

use super::{Cli, CliError, Output, connect, output};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    Adapter,
    Checkpoint,
    Merged,
}

impl Kind {
    fn proto(self) -> pb::ArtifactKind {
        match self {
            Kind::Adapter => pb::ArtifactKind::Adapter,
            Kind::Checkpoint => pb::ArtifactKind::Checkpoint,
            Kind::Merged => pb::ArtifactKind::Merged,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// List a job's artifacts, oldest first.
    List { job: String },
    /// Download a job's newest artifact of a kind (default: the adapter), verify its sha256,
    /// and unpack it into --out (HF PEFT layout for adapters).
    Download {
        job: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "adapter")]
        kind: Kind,
    },
}

fn artifact_json(a: &pb::Artifact) -> serde_json::Value {
    json!({
        "id": a.id,
        "job_id": a.job_id,
        "attempt": a.attempt,
        "kind": a.kind().as_str_name().trim_start_matches("ARTIFACT_KIND_").to_ascii_lowercase(),
        "step": a.step,
        "name": a.name,
        "size_bytes": a.size_bytes,
        "sha256": a.sha256,
    })
}

pub async fn run(cli: &Cli, cmd: &ArtifactsCommand) -> Result<ExitCode, CliError> {
    let client = connect(cli).await?;
    match cmd {
        ArtifactsCommand::List { job } => {
            let list = client
                .list_artifacts(job, pb::ArtifactKind::Unspecified)
                .await?;
            match cli.output {
                Output::Json => output::print_json(&json!({
                    "artifacts": list.iter().map(artifact_json).collect::<Vec<_>>(),
                })),
                Output::Text => {
                    for a in &list {
                        let kind = a
                            .kind()
                            .as_str_name()
                            .trim_start_matches("ARTIFACT_KIND_")
                            .to_ascii_lowercase();
                        println!(
                            "{}  {kind:<10}  step {:<8} {:>12} bytes  {}",
                            a.id, a.step, a.size_bytes, a.name
                        );
                    }
                }
            }
        }
        ArtifactsCommand::Download { job, out, kind } => {
            let list = client.list_artifacts(job, kind.proto()).await?;
            let Some(artifact) = list.last() else {
                return Err(CliError::Client(ClientError::Rpc(
                    tonic::Status::not_found(format!("job {job} has no {kind:?} artifact yet")),
                )));
            };
            client.download_artifact_into(artifact, out).await?;
            match cli.output {
                Output::Json => output::print_json(&json!({
                    "artifact": artifact_json(artifact),
                    "out": out.display().to_string(),
                })),
                Output::Text => println!(
                    "{} (step {}, sha256 {} verified) -> {}",
                    artifact.id,
                    artifact.step,
                    artifact.sha256,
                    out.display()
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
