//! `tuna models ...`: the base-model registry.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use tuna_client::{ClientError, pb};

use super::{Cli, CliError, Output, connect, output};

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Upload a model (an HF folder with config.json + safetensors + tokenizer.json, or one
    /// .gguf file) and register it under NAME for jobs' --model.
    Register {
        name: String,
        #[arg(long)]
        path: PathBuf,
    },
    /// Write a small deterministic Llama model folder (random weights from --seed, HF layout)
    /// for tests and demos.
    MakeTiny {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    Get {
        name: String,
    },
    List,
    /// Unregister a model (its files stay until deleted).
    Delete {
        name: String,
    },
}

/// Writes the tiny model folder.
pub fn make_tiny(out: &std::path::Path, seed: u64) -> Result<(), CliError> {
    tuna_worker::engine::model::tiny::TinySpec::default()
        .write(out, seed)
        .map(drop)
        .map_err(|e| CliError::Usage(e.to_string()))
}

fn model_json(m: &pb::Model) -> serde_json::Value {
    json!({
        "name": m.name,
        "format": m.format().as_str_name().trim_start_matches("MODEL_FORMAT_").to_ascii_lowercase(),
        "files": m.files.iter().map(|f| json!({
            "path": f.path, "file_id": f.file_id, "sha256": f.sha256, "size_bytes": f.size_bytes,
        })).collect::<Vec<_>>(),
    })
}

fn print_model(out: Output, m: &pb::Model) {
    match out {
        Output::Json => output::print_json(&model_json(m)),
        Output::Text => {
            let bytes: i64 = m.files.iter().map(|f| f.size_bytes).sum();
            let format = m
                .format()
                .as_str_name()
                .trim_start_matches("MODEL_FORMAT_")
                .to_ascii_lowercase();
            println!(
                "{}  {format}  {} files  {bytes} bytes",
                m.name,
                m.files.len()
            );
        }
    }
}

pub async fn run(cli: &Cli, cmd: &ModelsCommand) -> Result<ExitCode, CliError> {
    if let ModelsCommand::MakeTiny { out, seed } = cmd {
        make_tiny(out, *seed)?;
        match cli.output {
            Output::Json => {
                output::print_json(&json!({ "out": out.display().to_string(), "seed": seed }))
            }
            Output::Text => println!(
                "tiny Llama model (seed {seed}) written to {}",
                out.display()
            ),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let client = connect(cli).await?;
    let rpc = |s: tonic::Status| CliError::Client(ClientError::from(s));
    match cmd {
        ModelsCommand::Register { name, path } => {
            let model = client.register_model(name, path).await?;
            print_model(cli.output, &model);
        }
        ModelsCommand::MakeTiny { .. } => {}
        ModelsCommand::Get { name } => {
            let req = pb::GetModelRequest { name: name.clone() };
            print_model(
                cli.output,
                &client
                    .models()
                    .get_model(req)
                    .await
                    .map_err(rpc)?
                    .into_inner(),
            );
        }
        ModelsCommand::List => {
            let resp = client
                .models()
                .list_models(pb::ListModelsRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            match cli.output {
                Output::Json => output::print_json(&json!({
                    "models": resp.models.iter().map(model_json).collect::<Vec<_>>(),
                })),
                Output::Text => resp
                    .models
                    .iter()
                    .for_each(|m| print_model(Output::Text, m)),
            }
        }
        ModelsCommand::Delete { name } => {
            let req = pb::DeleteModelRequest { name: name.clone() };
            client.models().delete_model(req).await.map_err(rpc)?;
            match cli.output {
                Output::Json => output::print_json(&json!({ "deleted": name })),
                Output::Text => println!("deleted {name}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
