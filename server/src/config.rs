//! Server configuration, layered: defaults, then a TOML file, then `TUNA_*` environment
//! variables, then command-line flags (applied by the caller on the loaded value).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::Limits;
use crate::store::QueuePolicy;

/// Errors loading configuration; each names the source and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Everything `tuna server` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the gRPC listener.
    pub listen: String,
    /// `postgres://...` for production; empty means the embedded SQLite file in `data_dir`.
    pub database_url: String,
    /// Where the embedded database and the local blob store live.
    pub data_dir: PathBuf,
    /// Blob store directory; empty means `<data_dir>/blobs`.
    pub blob_dir: PathBuf,
    /// Lease length without a heartbeat.
    pub lease_ms: i64,
    /// First retry delay after a SYSTEM failure (doubles per attempt, with jitter).
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    /// Largest accepted upload.
    pub max_upload_bytes: i64,
    /// How often waiters poll when no notification arrives, and the reaper's period.
    pub poll_interval_ms: u64,
    /// When set, WorkerService calls need `authorization: Bearer <worker_token>`.
    pub worker_token: String,
    /// When set, client services need `authorization: Bearer <api_key>`.
    pub api_key: String,
    /// OTLP gRPC endpoint for traces (for example http://127.0.0.1:4317); empty disables.
    pub otlp_endpoint: String,
    /// `text` or `json` logs.
    pub log_format: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let policy = QueuePolicy::default();
        let limits = Limits::default();
        Self {
            listen: "127.0.0.1:50051".into(),
            database_url: String::new(),
            data_dir: PathBuf::from("tuna-data"),
            blob_dir: PathBuf::new(),
            lease_ms: policy.lease_ms,
            backoff_base_ms: policy.backoff_base_ms,
            backoff_max_ms: policy.backoff_max_ms,
            max_upload_bytes: limits.max_upload_bytes,
            poll_interval_ms: limits.poll_interval_ms,
            worker_token: String::new(),
            api_key: String::new(),
            otlp_endpoint: String::new(),
            log_format: "text".into(),
        }
    }
}

impl ServerConfig {
    /// Defaults, overridden by `file` (if any), overridden by `TUNA_<KEY>` variables of `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match toml::Table::try_from(Self::default()) {
            Ok(t) => t,
            Err(e) => return Err(ConfigError::Invalid(e.to_string())),
        };
        if let Some(path) = file {
            let p = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?;
            let overlay: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: p.clone(),
                        message: e.to_string(),
                    })?;
            for (k, v) in overlay {
                if !table.contains_key(&k) {
                    return Err(ConfigError::Parse {
                        path: p,
                        message: format!("unknown key {k:?}"),
                    });
                }
                table.insert(k, v);
            }
            // Type errors surface with the file's name.
            Self::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
                ConfigError::Parse {
                    path: p,
                    message: e.to_string(),
                }
            })?;
        }
        for (var, raw) in env {
            let Some(key) = var.strip_prefix("TUNA_").map(str::to_ascii_lowercase) else {
                continue;
            };
            let Some(current) = table.get(&key) else {
                continue;
            };
            let value = match current {
                toml::Value::Integer(_) => raw
                    .trim()
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|e| ConfigError::Env {
                        var: var.clone(),
                        message: format!("expected an integer: {e}"),
                    })?,
                _ => toml::Value::String(raw),
            };
            table.insert(key, value);
        }
        let config = Self::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_ms < 100 {
            return Err(ConfigError::Invalid(format!(
                "lease_ms must be >= 100, got {}",
                self.lease_ms
            )));
        }
        if self.backoff_base_ms < 0 || self.backoff_max_ms < self.backoff_base_ms {
            return Err(ConfigError::Invalid(
                "backoff_base_ms must be >= 0 and <= backoff_max_ms".into(),
            ));
        }
        if self.max_upload_bytes <= 0 {
            return Err(ConfigError::Invalid("max_upload_bytes must be > 0".into()));
        }
        if self.poll_interval_ms == 0 {
            return Err(ConfigError::Invalid("poll_interval_ms must be > 0".into()));
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "log_format must be text or json, got {:?}",
                self.log_format
            )));
        }
        Ok(())
    }

    /// The database URL, defaulting to the embedded SQLite file.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("tuna.db").display())
        } else {
            self.database_url.clone()
        }
    }

    /// The blob directory, defaulting to `<data_dir>/blobs`.
    pub fn blob_dir(&self) -> PathBuf {
        if self.blob_dir.as_os_str().is_empty() {
            self.data_dir.join("blobs")
        } else {
            self.blob_dir.clone()
        }
    }

    pub fn policy(&self) -> QueuePolicy {
        QueuePolicy {
            lease_ms: self.lease_ms,
            backoff_base_ms: self.backoff_base_ms,
            backoff_max_ms: self.backoff_max_ms,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_upload_bytes: self.max_upload_bytes,
            poll_interval_ms: self.poll_interval_ms,
            ..Limits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tuna.toml");
        std::fs::write(&path, "lease_ms = 5000\nlisten = \"0.0.0.0:1\"\n").unwrap();
        let env = vec![
            ("TUNA_LISTEN".to_string(), "127.0.0.1:9".to_string()),
            ("TUNA_UNRELATED_THING".to_string(), "x".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let c = ServerConfig::load(Some(&path), env).unwrap();
        assert_eq!(c.lease_ms, 5000);
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.backoff_base_ms, ServerConfig::default().backoff_base_ms);
    }

    #[test]
    fn bad_values_name_their_source() {
        let env = vec![("TUNA_LEASE_MS".to_string(), "soon".to_string())];
        let err = ServerConfig::load(None, env).unwrap_err().to_string();
        assert!(err.contains("TUNA_LEASE_MS"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tuna.toml");
        std::fs::write(&path, "leese_ms = 5\n").unwrap();
        let err = ServerConfig::load(Some(&path), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("leese_ms"), "{err}");
    }
}
