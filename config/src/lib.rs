//! Tuna's configuration: one TOML format with typed sections, read by both `tuna server` and
//! `tuna worker`, so a deployment keeps one file and one set of `TUNA_*` variables.
//!
//! Layering, in increasing precedence: [`Config::default`], a TOML file, `TUNA_*` environment
//! variables (see [`ENV_VARS`]), then command-line flags (applied by the caller on the loaded
//! value, followed by [`Config::validate`]). Every error names the file, key or variable at fault.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Errors loading configuration; each names where the bad value came from.
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
    #[error("invalid configuration: {key} (from {origin}): {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
}

/// The whole file. Every section and key is optional; missing ones keep their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub api: Api,
    pub queue: Queue,
    pub blobs: Blobs,
    pub retention: Retention,
    pub telemetry: Telemetry,
    pub worker: Worker,
}

/// `[api]`: the control plane's gRPC edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Api {
    /// Address of the gRPC listener.
    pub listen: String,
    /// When set, client services need `authorization: Bearer <api_key>`.
    pub api_key: String,
    /// When set, WorkerService calls need `authorization: Bearer <worker_token>`.
    pub worker_token: String,
    /// Largest accepted upload, in bytes.
    pub max_upload_bytes: i64,
    /// Longest AcquireJob long-poll the server grants, in milliseconds.
    pub max_acquire_wait_ms: i64,
    /// Deadline of one unary call (streaming calls and the AcquireJob long-poll are exempt).
    pub unary_timeout_ms: u64,
    /// Most calls the server works on at once; further calls wait for a slot.
    pub concurrency_limit: u64,
    /// Most file uploads streaming at once; more are RESOURCE_EXHAUSTED. Each holds a
    /// temporary blob (an open file locally) until it ends. Workers' artifact uploads are not
    /// counted, so clients cannot starve them.
    pub max_concurrent_uploads: u64,
    /// An upload that sends nothing for this long is abandoned (DEADLINE_EXCEEDED), so idle
    /// streams cannot hold upload slots and open files.
    pub upload_idle_timeout_ms: u64,
    /// PEM certificate chain and private key: with both set, gRPC, the JSON API and the
    /// dashboard are served over TLS only.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Calls per second one client or admin key may make, sustained (a token bucket per key;
    /// more are RESOURCE_EXHAUSTED); 0 turns the limit off. Worker calls are paced by their
    /// leases and are not limited.
    pub rate_limit_per_key: u64,
    /// Calls a key may make in a burst above the sustained rate.
    pub rate_limit_burst: u64,
    /// Most file uploads one key streams at once (within `max_concurrent_uploads`).
    pub max_uploads_per_key: u64,
    /// Most HTTP/2 streams (calls) one connection may have open at once; a client past it
    /// waits for one of its calls to end (HTTP/2 flow control, not an error).
    pub max_streams_per_connection: u32,
    /// Most QUEUED jobs one tenant may have; CreateJob past it is RESOURCE_EXHAUSTED. 0: no
    /// limit.
    pub max_queued_jobs_per_tenant: u64,
    /// Most bytes of files and artifacts one tenant may store; an upload that would pass it
    /// is RESOURCE_EXHAUSTED. 0: no limit.
    pub max_stored_bytes_per_tenant: i64,
    /// Serve a non-loopback address without TLS, an API key or a worker token. Off by default:
    /// such a server refuses to start, since anyone who reaches it (or reads its traffic)
    /// could run and read jobs.
    pub insecure: bool,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            api_key: String::new(),
            worker_token: String::new(),
            max_upload_bytes: 10 * 1024 * 1024 * 1024,
            max_acquire_wait_ms: 60_000,
            unary_timeout_ms: 30_000,
            concurrency_limit: 1_024,
            max_concurrent_uploads: 64,
            upload_idle_timeout_ms: 30_000,
            rate_limit_per_key: 100,
            rate_limit_burst: 200,
            max_uploads_per_key: 8,
            max_streams_per_connection: 256,
            max_queued_jobs_per_tenant: 10_000,
            max_stored_bytes_per_tenant: 1 << 40,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            insecure: false,
        }
    }
}

/// `[queue]`: the durable job queue and its database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Queue {
    /// `postgres://...` for production; empty means the embedded SQLite file in `data_dir`.
    pub database_url: String,
    /// Where the embedded database (and, by default, the blob store) live.
    pub data_dir: PathBuf,
    /// Lease length without a heartbeat.
    pub lease_ms: i64,
    /// First retry delay after a SYSTEM failure (doubles per attempt, with jitter).
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    /// After a SYSTEM failure, for this long after the retry becomes claimable only other
    /// workers may claim it (the failing worker may lack memory or be broken); then any may.
    pub retry_elsewhere_ms: i64,
    /// How often waiters poll when no notification arrives, and the reaper's period.
    pub poll_interval_ms: u64,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            data_dir: PathBuf::from("tuna-data"),
            lease_ms: 30_000,
            backoff_base_ms: 5_000,
            backoff_max_ms: 600_000,
            retry_elsewhere_ms: 60_000,
            poll_interval_ms: 1_000,
        }
    }
}

/// `[blobs]`: the blob store of uploads and artifacts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Blobs {
    /// Blob store directory; empty means `<queue.data_dir>/blobs`. Ignored when `url` is set.
    pub dir: PathBuf,
    /// `s3://bucket/prefix` to keep blobs in S3 (or any S3-compatible server), shared by every
    /// replica; endpoint, region and credentials come from the standard `AWS_*` variables.
    /// Empty means the local directory.
    pub url: String,
}

/// `[retention]`: what the leading replica removes, in small batches, as time passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Metric points and events of jobs finished longer ago than this are removed (the job
    /// row, its artifacts and its final state stay); 0 keeps them forever.
    pub job_history_max_age_ms: i64,
    /// Jobs whose history one batch removes (one transaction each).
    pub prune_batch_jobs: u32,
    /// Blobs no file or artifact row names are removed once older than this; the margin
    /// covers an upload whose row is being written, so it must be at least a minute.
    pub orphan_blob_grace_ms: i64,
    /// How often the leader runs retention and the orphan-blob collector.
    pub interval_ms: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            job_history_max_age_ms: 0,
            prune_batch_jobs: 100,
            orphan_blob_grace_ms: 3_600_000,
            interval_ms: 600_000,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[telemetry]`: logs, traces and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Telemetry {
    /// OTLP gRPC endpoint for traces and metrics (for example http://127.0.0.1:4317); empty
    /// disables export.
    pub otlp_endpoint: String,
    pub log_format: LogFormat,
    /// `tracing` filter directives (`RUST_LOG`, when set, wins).
    pub log_filter: String,
    /// Address of the server's Prometheus endpoint (`GET /metrics`, plain HTTP on its own
    /// port); empty disables it.
    pub metrics_listen: String,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            metrics_listen: String::new(),
        }
    }
}

/// `[worker]`: a training worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Worker {
    /// Control plane URL.
    pub server: String,
    /// Worker token, when the server requires one.
    pub token: String,
    /// Unused: workers download their inputs through their lease with the worker token alone.
    /// Kept so configs and the shared `TUNA_API_KEY` variable that set it still load.
    pub api_key: String,
    /// PEM CA certificate that signed the server's TLS certificate (for `https://` servers
    /// with a private CA; empty means the system's roots).
    pub ca_file: PathBuf,
    /// Name shown in job events; empty means the host name.
    pub name: String,
    /// cpu or cuda (cuda needs a build with `--features cuda`).
    pub device: String,
    /// Device memory to advertise, in bytes.
    pub memory_bytes: i64,
    /// Where downloaded models and datasets are cached by content hash.
    pub cache_dir: PathBuf,
    /// Longest AcquireJob long-poll the worker asks for.
    pub acquire_wait_ms: u64,
    /// How often buffered training metrics are sent.
    pub metrics_every_ms: u64,
    /// Exit after this many jobs; 0 runs until shutdown.
    pub max_jobs: u64,
}

impl Default for Worker {
    fn default() -> Self {
        Self {
            server: "http://127.0.0.1:50051".into(),
            token: String::new(),
            api_key: String::new(),
            ca_file: PathBuf::new(),
            name: String::new(),
            device: "cpu".into(),
            memory_bytes: 0,
            cache_dir: PathBuf::from("tuna-worker-cache"),
            acquire_wait_ms: 30_000,
            metrics_every_ms: 250,
            max_jobs: 0,
        }
    }
}

/// The environment variables read, as (variable, section, key). A secret shared by both sides
/// (the worker token, the API key) is one variable setting both sections' keys.
pub const ENV_VARS: &[(&str, &str, &str)] = &[
    ("TUNA_LISTEN", "api", "listen"),
    ("TUNA_API_KEY", "api", "api_key"),
    ("TUNA_WORKER_TOKEN", "api", "worker_token"),
    ("TUNA_MAX_UPLOAD_BYTES", "api", "max_upload_bytes"),
    ("TUNA_MAX_ACQUIRE_WAIT_MS", "api", "max_acquire_wait_ms"),
    ("TUNA_UNARY_TIMEOUT_MS", "api", "unary_timeout_ms"),
    ("TUNA_CONCURRENCY_LIMIT", "api", "concurrency_limit"),
    (
        "TUNA_MAX_CONCURRENT_UPLOADS",
        "api",
        "max_concurrent_uploads",
    ),
    (
        "TUNA_UPLOAD_IDLE_TIMEOUT_MS",
        "api",
        "upload_idle_timeout_ms",
    ),
    ("TUNA_RATE_LIMIT_PER_KEY", "api", "rate_limit_per_key"),
    ("TUNA_RATE_LIMIT_BURST", "api", "rate_limit_burst"),
    ("TUNA_MAX_UPLOADS_PER_KEY", "api", "max_uploads_per_key"),
    (
        "TUNA_MAX_STREAMS_PER_CONNECTION",
        "api",
        "max_streams_per_connection",
    ),
    (
        "TUNA_MAX_QUEUED_JOBS_PER_TENANT",
        "api",
        "max_queued_jobs_per_tenant",
    ),
    (
        "TUNA_MAX_STORED_BYTES_PER_TENANT",
        "api",
        "max_stored_bytes_per_tenant",
    ),
    ("TUNA_TLS_CERT", "api", "tls_cert"),
    ("TUNA_TLS_KEY", "api", "tls_key"),
    ("TUNA_INSECURE", "api", "insecure"),
    ("TUNA_CA_FILE", "worker", "ca_file"),
    ("TUNA_DATABASE_URL", "queue", "database_url"),
    ("TUNA_DATA_DIR", "queue", "data_dir"),
    ("TUNA_LEASE_MS", "queue", "lease_ms"),
    ("TUNA_BACKOFF_BASE_MS", "queue", "backoff_base_ms"),
    ("TUNA_BACKOFF_MAX_MS", "queue", "backoff_max_ms"),
    ("TUNA_RETRY_ELSEWHERE_MS", "queue", "retry_elsewhere_ms"),
    ("TUNA_POLL_INTERVAL_MS", "queue", "poll_interval_ms"),
    ("TUNA_BLOB_DIR", "blobs", "dir"),
    ("TUNA_BLOB_URL", "blobs", "url"),
    (
        "TUNA_JOB_HISTORY_MAX_AGE_MS",
        "retention",
        "job_history_max_age_ms",
    ),
    (
        "TUNA_ORPHAN_BLOB_GRACE_MS",
        "retention",
        "orphan_blob_grace_ms",
    ),
    ("TUNA_RETENTION_INTERVAL_MS", "retention", "interval_ms"),
    ("TUNA_OTLP_ENDPOINT", "telemetry", "otlp_endpoint"),
    ("TUNA_LOG_FORMAT", "telemetry", "log_format"),
    ("TUNA_LOG_FILTER", "telemetry", "log_filter"),
    ("TUNA_METRICS_LISTEN", "telemetry", "metrics_listen"),
    ("TUNA_SERVER", "worker", "server"),
    ("TUNA_WORKER_TOKEN", "worker", "token"),
    ("TUNA_API_KEY", "worker", "api_key"),
    ("TUNA_WORKER_NAME", "worker", "name"),
    ("TUNA_WORKER_DEVICE", "worker", "device"),
    ("TUNA_WORKER_MEMORY_BYTES", "worker", "memory_bytes"),
    ("TUNA_WORKER_CACHE_DIR", "worker", "cache_dir"),
    ("TUNA_WORKER_ACQUIRE_WAIT_MS", "worker", "acquire_wait_ms"),
    ("TUNA_WORKER_METRICS_EVERY_MS", "worker", "metrics_every_ms"),
    ("TUNA_WORKER_MAX_JOBS", "worker", "max_jobs"),
];

/// Where each non-default value came from, so validation errors can say.
type Origins = BTreeMap<String, String>;

impl Config {
    /// Defaults, overridden by `file` (if any), overridden by the [`ENV_VARS`] present in `env`;
    /// validated. Other variables, `TUNA_*` or not, are ignored.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut origins = Origins::new();
        let base = match file {
            Some(path) => Self::read_file(path, &mut origins)?,
            None => Self::default(),
        };
        let config = base.apply_env(env, &mut origins)?;
        config.check(&origins)?;
        Ok(config)
    }

    /// Parses a file; unknown sections or keys and ill-typed values fail with line and column.
    fn read_file(path: &Path, origins: &mut Origins) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let parse = |message: String| ConfigError::Parse {
            path: p.clone(),
            message,
        };
        let config: Self = toml::from_str(&text).map_err(|e| parse(e.to_string()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse(e.to_string()))?;
        for (section, value) in &table {
            if let Some(keys) = value.as_table() {
                for key in keys.keys() {
                    origins.insert(format!("{section}.{key}"), p.clone());
                }
            }
        }
        Ok(config)
    }

    /// Overlays the known `TUNA_*` variables, each checked against its key's type.
    fn apply_env(
        self,
        env: impl IntoIterator<Item = (String, String)>,
        origins: &mut Origins,
    ) -> Result<Self, ConfigError> {
        let mut table = toml::Table::try_from(&self).map_err(|e| ConfigError::Invalid {
            key: "(all)".into(),
            origin: "defaults".into(),
            message: e.to_string(),
        })?;
        for (var, raw) in env {
            for (_, section, key) in ENV_VARS.iter().filter(|(v, _, _)| *v == var) {
                let env_error = |message: String| ConfigError::Env {
                    var: var.clone(),
                    message,
                };
                let Some(sect) = table.get_mut(*section).and_then(|s| s.as_table_mut()) else {
                    continue;
                };
                let value = match sect.get(*key) {
                    Some(toml::Value::Integer(_)) => raw
                        .trim()
                        .parse::<i64>()
                        .map(toml::Value::Integer)
                        .map_err(|e| env_error(format!("expected an integer: {e}")))?,
                    Some(toml::Value::Boolean(_)) => raw
                        .trim()
                        .parse::<bool>()
                        .map(toml::Value::Boolean)
                        .map_err(|e| env_error(format!("expected true or false: {e}")))?,
                    _ => toml::Value::String(raw.clone()),
                };
                sect.insert((*key).to_string(), value);
                // Type errors (a negative count, an unknown log format) name the variable.
                check_section(section, sect).map_err(|e| env_error(e.to_string()))?;
                origins.insert(format!("{section}.{key}"), var.clone());
            }
        }
        Self::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Invalid {
            key: "(all)".into(),
            origin: "environment".into(),
            message: e.to_string(),
        })
    }

    /// Cross-field checks, naming the key (and where it was set, when known).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(&Origins::new())
    }

    fn check(&self, origins: &Origins) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            origin: origins
                .get(key)
                .cloned()
                .unwrap_or_else(|| "defaults or flags".into()),
            message,
        };
        let q = &self.queue;
        if q.lease_ms < 100 {
            return Err(bad(
                "queue.lease_ms",
                format!("must be >= 100, got {}", q.lease_ms),
            ));
        }
        if q.backoff_base_ms < 0 {
            return Err(bad(
                "queue.backoff_base_ms",
                format!("must be >= 0, got {}", q.backoff_base_ms),
            ));
        }
        if q.backoff_max_ms < q.backoff_base_ms {
            return Err(bad(
                "queue.backoff_max_ms",
                format!(
                    "must be >= queue.backoff_base_ms ({}), got {}",
                    q.backoff_base_ms, q.backoff_max_ms
                ),
            ));
        }
        if q.retry_elsewhere_ms < 0 {
            return Err(bad(
                "queue.retry_elsewhere_ms",
                format!("must be >= 0, got {}", q.retry_elsewhere_ms),
            ));
        }
        if q.poll_interval_ms == 0 {
            return Err(bad("queue.poll_interval_ms", "must be > 0".into()));
        }
        let a = &self.api;
        if a.max_upload_bytes <= 0 {
            return Err(bad("api.max_upload_bytes", "must be > 0".into()));
        }
        if a.max_acquire_wait_ms < 0 {
            return Err(bad("api.max_acquire_wait_ms", "must be >= 0".into()));
        }
        if a.unary_timeout_ms == 0 {
            return Err(bad("api.unary_timeout_ms", "must be > 0".into()));
        }
        if a.concurrency_limit == 0 {
            return Err(bad("api.concurrency_limit", "must be > 0".into()));
        }
        if a.max_concurrent_uploads == 0 {
            return Err(bad("api.max_concurrent_uploads", "must be > 0".into()));
        }
        if a.max_streams_per_connection == 0 {
            return Err(bad("api.max_streams_per_connection", "must be > 0".into()));
        }
        if a.max_uploads_per_key == 0 {
            return Err(bad("api.max_uploads_per_key", "must be > 0".into()));
        }
        if a.rate_limit_per_key > 0 && a.rate_limit_burst == 0 {
            return Err(bad(
                "api.rate_limit_burst",
                "must be > 0 while api.rate_limit_per_key is set".into(),
            ));
        }
        if a.max_stored_bytes_per_tenant < 0 {
            return Err(bad(
                "api.max_stored_bytes_per_tenant",
                "must be >= 0".into(),
            ));
        }
        if a.tls_cert.as_os_str().is_empty() != a.tls_key.as_os_str().is_empty() {
            return Err(bad(
                "api.tls_cert",
                "api.tls_cert and api.tls_key go together: set both or neither".into(),
            ));
        }
        if a.upload_idle_timeout_ms == 0 {
            return Err(bad("api.upload_idle_timeout_ms", "must be > 0".into()));
        }
        let url = &self.blobs.url;
        if !url.is_empty() {
            let bucket = url
                .strip_prefix("s3://")
                .map(|r| r.split('/').next().unwrap_or(""));
            match bucket {
                Some(b) if !b.is_empty() => {}
                Some(_) => return Err(bad("blobs.url", "the bucket name is missing".into())),
                None => {
                    return Err(bad(
                        "blobs.url",
                        format!("must be s3://bucket/prefix (or empty for blobs.dir), got {url:?}"),
                    ));
                }
            }
        }
        let r = &self.retention;
        if r.job_history_max_age_ms < 0 {
            return Err(bad(
                "retention.job_history_max_age_ms",
                "must be >= 0 (0 keeps history forever)".into(),
            ));
        }
        if r.prune_batch_jobs == 0 {
            return Err(bad("retention.prune_batch_jobs", "must be > 0".into()));
        }
        if r.orphan_blob_grace_ms < 60_000 {
            return Err(bad(
                "retention.orphan_blob_grace_ms",
                format!("must be >= 60000, got {}", r.orphan_blob_grace_ms),
            ));
        }
        if r.interval_ms == 0 {
            return Err(bad("retention.interval_ms", "must be > 0".into()));
        }
        let w = &self.worker;
        if w.memory_bytes < 0 {
            return Err(bad("worker.memory_bytes", "must be >= 0".into()));
        }
        if w.metrics_every_ms == 0 {
            return Err(bad("worker.metrics_every_ms", "must be > 0".into()));
        }
        Ok(())
    }

    /// The database URL, defaulting to the embedded SQLite file in `queue.data_dir`.
    pub fn database_url(&self) -> String {
        if self.queue.database_url.is_empty() {
            format!("sqlite://{}", self.queue.data_dir.join("tuna.db").display())
        } else {
            self.queue.database_url.clone()
        }
    }

    /// The blob directory, defaulting to `<queue.data_dir>/blobs`.
    pub fn blob_dir(&self) -> PathBuf {
        if self.blobs.dir.as_os_str().is_empty() {
            self.queue.data_dir.join("blobs")
        } else {
            self.blobs.dir.clone()
        }
    }
}

/// Deserializes one section alone, for errors at the granularity of a variable.
fn check_section(section: &str, table: &toml::Table) -> Result<(), toml::de::Error> {
    fn de<T: DeserializeOwned>(t: &toml::Table) -> Result<(), toml::de::Error> {
        T::deserialize(toml::Value::Table(t.clone())).map(|_| ())
    }
    match section {
        "api" => de::<Api>(table),
        "queue" => de::<Queue>(table),
        "blobs" => de::<Blobs>(table),
        "retention" => de::<Retention>(table),
        "telemetry" => de::<Telemetry>(table),
        "worker" => de::<Worker>(table),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tuna.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let (_d, path) = file(
            "[queue]\nlease_ms = 5000\n[api]\nlisten = \"0.0.0.0:1\"\n[worker]\ndevice = \"cuda\"\n",
        );
        let vars = env(&[
            ("TUNA_LISTEN", "127.0.0.1:9"),
            ("TUNA_UNRELATED_THING", "x"),
            ("HOME", "/root"),
        ]);
        let c = Config::load(Some(&path), vars).unwrap();
        assert_eq!(c.queue.lease_ms, 5000);
        assert_eq!(c.api.listen, "127.0.0.1:9");
        assert_eq!(c.worker.device, "cuda");
        assert_eq!(c.queue.backoff_base_ms, Queue::default().backoff_base_ms);
    }

    #[test]
    fn one_secret_variable_sets_both_sides() {
        let c = Config::load(None, env(&[("TUNA_WORKER_TOKEN", "s3cret")])).unwrap();
        assert_eq!(c.api.worker_token, "s3cret");
        assert_eq!(c.worker.token, "s3cret");
    }

    #[test]
    fn bad_values_name_their_source() {
        let err = Config::load(None, env(&[("TUNA_LEASE_MS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TUNA_LEASE_MS"), "{err}");
        let err = Config::load(None, env(&[("TUNA_LOG_FORMAT", "xml")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TUNA_LOG_FORMAT"), "{err}");
        let err = Config::load(None, env(&[("TUNA_WORKER_MAX_JOBS", "-1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TUNA_WORKER_MAX_JOBS"), "{err}");

        let (_d, path) = file("[queue]\nleese_ms = 5\n");
        let err = Config::load(Some(&path), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("leese_ms") && err.contains("tuna.toml"),
            "{err}"
        );
        // The pre-section flat keys are refused, naming the key.
        let (_d, path) = file("lease_ms = 5000\n");
        let err = Config::load(Some(&path), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("lease_ms"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key_and_where_it_was_set() {
        let (_d, path) = file("[queue]\nlease_ms = 5\n");
        let err = Config::load(Some(&path), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("queue.lease_ms"), "{err}");
        assert!(err.contains("tuna.toml"), "{err}");
        let err = Config::load(None, env(&[("TUNA_CONCURRENCY_LIMIT", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("api.concurrency_limit") && err.contains("TUNA_CONCURRENCY_LIMIT"),
            "{err}"
        );
    }

    #[test]
    fn defaults_resolve_paths_under_the_data_dir() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.blob_dir(), PathBuf::from("tuna-data/blobs"));
        assert_eq!(c.database_url(), "sqlite://tuna-data/tuna.db");
    }

    /// The documented example stays loadable and documents the defaults.
    #[test]
    fn the_example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tuna.toml");
        assert_eq!(
            Config::load(Some(&path), Vec::new()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn a_blob_url_names_an_s3_bucket_and_retention_keeps_a_grace_period() {
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let ok = Config::load(None, env("TUNA_BLOB_URL", "s3://bucket/some/prefix")).unwrap();
        assert_eq!(ok.blobs.url, "s3://bucket/some/prefix");
        for bad in ["gs://bucket", "s3://", "/var/lib/blobs"] {
            let err = Config::load(None, env("TUNA_BLOB_URL", bad))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("blobs.url") && err.contains("TUNA_BLOB_URL"),
                "{err}"
            );
        }
        let err = Config::load(None, env("TUNA_ORPHAN_BLOB_GRACE_MS", "10"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention.orphan_blob_grace_ms"), "{err}");
    }

    #[test]
    fn every_env_var_names_an_existing_key() {
        let table = toml::Table::try_from(Config::default()).unwrap();
        for (var, section, key) in ENV_VARS {
            assert!(
                table
                    .get(*section)
                    .and_then(|s| s.as_table())
                    .is_some_and(|s| s.contains_key(*key)),
                "{var} -> {section}.{key}"
            );
        }
    }
}
