//! `tuna models ...`: the base-model registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use tuna::{ClientError, pb};

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
    Get {
        name: String,
    },
    List,
    /// Unregister a model (its files stay until deleted).
    Delete {
        name: String,
    },
}

/// The files to upload for a model path, with their names inside the model folder.
fn model_files(path: &Path) -> Result<(pb::ModelFormat, Vec<PathBuf>), CliError> {
    let usage = |m: String| CliError::Usage(format!("{}: {m}", path.display()));
    if path.is_file() {
        if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
            return Err(usage("a single model file must be a .gguf file".into()));
        }
        return Ok((pb::ModelFormat::Gguf, vec![path.to_path_buf()]));
    }
    let entries = std::fs::read_dir(path).map_err(|e| usage(e.to_string()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| usage(e.to_string()))?;
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = name == "config.json"
            || name == "tokenizer.json"
            || name == "tokenizer_config.json"
            || name == "generation_config.json"
            || name == "special_tokens_map.json"
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json";
        if p.is_file() && wanted {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(usage(
            "no model files (config.json, *.safetensors, tokenizer.json) found".into(),
        ));
    }
    Ok((pb::ModelFormat::Hf, files))
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
    let client = connect(cli).await?;
    let rpc = |s: tonic::Status| CliError::Client(ClientError::from(s));
    match cmd {
        ModelsCommand::Register { name, path } => {
            let (format, paths) = model_files(path)?;
            let mut files = Vec::with_capacity(paths.len());
            for p in &paths {
                let uploaded = client
                    .upload_file(p, pb::FilePurpose::Model, pb::DatasetFormat::Unspecified)
                    .await?;
                files.push(pb::ModelFile {
                    path: uploaded.name.clone(),
                    file_id: uploaded.id,
                    ..Default::default()
                });
            }
            let model = client
                .models()
                .register_model(pb::RegisterModelRequest {
                    name: name.clone(),
                    format: format as i32,
                    files,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            print_model(cli.output, &model);
        }
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
