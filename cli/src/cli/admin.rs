//! `tuna admin keys ...`: API keys of tenants.

use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use serde_json::json;
use tuna_client::{ClientError, pb};

use super::{Cli, CliError, Output, connect, output};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once (the server keeps only its digest).
    Create {
        /// The tenant whose jobs, files, models and sweeps the key reaches.
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum, default_value_t = Role::Client)]
        role: Role,
        /// A note for people: who or what uses the key.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (never their secrets), newest first.
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id; effective on its next call.
    Revoke { id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Jobs, files, models, artifacts and sweeps of its tenant.
    Client,
    /// A client that also manages keys (of every tenant).
    Admin,
    /// Worker protocol only, acting only as the workers it registered.
    Worker,
}

impl Role {
    fn proto(self) -> pb::ApiKeyRole {
        match self {
            Role::Client => pb::ApiKeyRole::Client,
            Role::Admin => pb::ApiKeyRole::Admin,
            Role::Worker => pb::ApiKeyRole::Worker,
        }
    }
}

fn role_name(k: &pb::ApiKey) -> String {
    k.role()
        .as_str_name()
        .trim_start_matches("API_KEY_ROLE_")
        .to_ascii_lowercase()
}

fn key_json(k: &pb::ApiKey) -> serde_json::Value {
    json!({
        "id": k.id,
        "tenant": k.tenant,
        "role": role_name(k),
        "name": k.name,
        "created_at_ms": k.created_at.as_ref().map(tuna_proto::ts_to_ms),
        "revoked_at_ms": k.revoked_at.as_ref().map(tuna_proto::ts_to_ms),
    })
}

fn key_line(k: &pb::ApiKey) -> String {
    format!(
        "{}  {}  {}  {}{}",
        k.id,
        output::clean(&k.tenant),
        role_name(k),
        output::clean(&k.name),
        if k.revoked_at.is_some() {
            "  (revoked)"
        } else {
            ""
        }
    )
}

pub async fn run(cli: &Cli, cmd: &AdminCommand) -> Result<ExitCode, CliError> {
    let client = connect(cli).await?;
    let rpc = |s: tonic::Status| CliError::Client(ClientError::from(s));
    let AdminCommand::Keys(cmd) = cmd;
    match cmd {
        KeysCommand::Create { tenant, role, name } => {
            let resp = client
                .admin()
                .create_api_key(pb::CreateApiKeyRequest {
                    tenant: tenant.clone(),
                    role: role.proto() as i32,
                    name: name.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let key = resp.key.unwrap_or_default();
            match cli.output {
                Output::Json => {
                    let mut v = key_json(&key);
                    v["secret"] = json!(resp.secret);
                    output::print_json(&v);
                }
                Output::Text => {
                    println!("{}", key_line(&key));
                    println!("{}", resp.secret);
                    eprintln!("this is the only time the key is shown: store it now");
                }
            }
        }
        KeysCommand::List { tenant } => {
            let keys = client
                .admin()
                .list_api_keys(pb::ListApiKeysRequest {
                    tenant: tenant.clone().unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .keys;
            match cli.output {
                Output::Json => output::print_json(&json!({
                    "keys": keys.iter().map(key_json).collect::<Vec<_>>(),
                })),
                Output::Text => keys.iter().for_each(|k| println!("{}", key_line(k))),
            }
        }
        KeysCommand::Revoke { id } => {
            let key = client
                .admin()
                .revoke_api_key(pb::RevokeApiKeyRequest { id: id.clone() })
                .await
                .map_err(rpc)?
                .into_inner();
            match cli.output {
                Output::Json => output::print_json(&key_json(&key)),
                Output::Text => println!("{}", key_line(&key)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
