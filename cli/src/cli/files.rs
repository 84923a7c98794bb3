//! `tuna files ...`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use tuna_client::pb;

use super::{Cli, CliError, Output, connect, output};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Purpose {
    Dataset,
    Model,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    PromptCompletion,
    Chat,
    Classification,
    Preference,
}

#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Upload a file (datasets are validated line by line).
    Upload {
        path: PathBuf,
        #[arg(long, value_enum, default_value = "dataset")]
        purpose: Purpose,
        /// Dataset format (default: detected from line 1).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    Get {
        id: String,
    },
    List {
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    Delete {
        id: String,
    },
    /// Download a file, verifying its sha256.
    Download {
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
}

pub async fn run(cli: &Cli, cmd: &FilesCommand) -> Result<ExitCode, CliError> {
    let client = connect(cli).await?;
    match cmd {
        FilesCommand::Upload {
            path,
            purpose,
            format,
        } => {
            let purpose = match purpose {
                Purpose::Dataset => pb::FilePurpose::Dataset,
                Purpose::Model => pb::FilePurpose::Model,
            };
            let format = match format {
                None => pb::DatasetFormat::Unspecified,
                Some(Format::Text) => pb::DatasetFormat::Text,
                Some(Format::PromptCompletion) => pb::DatasetFormat::PromptCompletion,
                Some(Format::Chat) => pb::DatasetFormat::Chat,
                Some(Format::Classification) => pb::DatasetFormat::Classification,
                Some(Format::Preference) => pb::DatasetFormat::Preference,
            };
            let file = client.upload_file(path, purpose, format).await?;
            output::file(cli.output, &file);
        }
        FilesCommand::Get { id } => {
            let file = client
                .files()
                .get_file(pb::GetFileRequest { id: id.clone() })
                .await
                .map_err(tuna_client::ClientError::from)?
                .into_inner();
            output::file(cli.output, &file);
        }
        FilesCommand::List {
            page_size,
            page_token,
        } => {
            let resp = client
                .files()
                .list_files(pb::ListFilesRequest {
                    page_size: *page_size,
                    page_token: page_token.clone(),
                    purpose: 0,
                })
                .await
                .map_err(tuna_client::ClientError::from)?
                .into_inner();
            match cli.output {
                Output::Json => output::print_json(&serde_json::json!({
                    "files": resp.files.iter().map(output::file_json).collect::<Vec<_>>(),
                    "next_page_token": resp.next_page_token,
                })),
                Output::Text => {
                    for f in &resp.files {
                        output::file(Output::Text, f);
                    }
                    if !resp.next_page_token.is_empty() {
                        println!("next page: --page-token {}", resp.next_page_token);
                    }
                }
            }
        }
        FilesCommand::Download { id, out } => {
            let file = client.download_file(id, out).await?;
            match cli.output {
                Output::Json => output::print_json(&serde_json::json!({
                    "file": output::file_json(&file),
                    "path": out.display().to_string(),
                })),
                Output::Text => println!(
                    "{} -> {} ({} bytes, sha256 {} verified)",
                    file.id,
                    out.display(),
                    file.size_bytes,
                    file.sha256
                ),
            }
        }
        FilesCommand::Delete { id } => {
            client
                .files()
                .delete_file(pb::DeleteFileRequest { id: id.clone() })
                .await
                .map_err(tuna_client::ClientError::from)?;
            match cli.output {
                Output::Json => output::print_json(&serde_json::json!({ "deleted": id })),
                Output::Text => println!("deleted {id}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
