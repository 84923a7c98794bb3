//! Helpers for end-to-end tests that run real `tuna` processes over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the `tuna` binary of this workspace, building it if it is missing.
pub fn tuna_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/tuna
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = profile_dir.join("tuna");
    // Always (once per test process) let cargo bring the binary up to date: a stale `tuna`
    // from an earlier build would test old server and worker code. A no-op when it is current.
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "tuna", "--bin", "tuna"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the tuna binary failed");
    });
    bin
}

/// A free loopback port (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The PostgreSQL server the tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database created for one test and dropped afterwards.
pub struct TestDb {
    pub url: String,
    name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        use sqlx::Connection;
        let admin = database_url();
        let name = format!("tuna_e2e_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn drop_db(self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&database_url()).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

/// A `tuna server` child process.
pub struct ServerProcess {
    child: Child,
    pub url: String,
    pub log: PathBuf,
    /// The server's `TUNA_API_KEY`, which [`Self::cli`] passes on.
    pub api_key: Option<String>,
}

impl ServerProcess {
    /// Starts `tuna server` with `args` on a free port and waits until it answers.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// Like [`Self::start`], on a given port (to restart a server where clients expect it).
    pub fn start_on(data_dir: &Path, port: &str, extra: &[&str]) -> Self {
        Self::start_on_with_env(data_dir, port, extra, &[])
    }

    /// Like [`Self::start_on`], with extra environment variables.
    pub fn start_on_with_env(
        data_dir: &Path,
        port: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let port: u16 = port.parse().expect("a port number");
        Self::spawn(data_dir, port, extra, env)
    }

    /// Like [`Self::start`], with extra environment variables.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(data_dir, free_port(), extra, env)
    }

    fn spawn(data_dir: &Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = data_dir.join(format!("server-{port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["server", "--listen", &listen, "--data-dir"];
        let dir = data_dir.display().to_string();
        args.push(&dir);
        args.extend_from_slice(extra);
        let child = Command::new(tuna_bin())
            .args(&args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let api_key = env
            .iter()
            .find(|(k, _)| *k == "TUNA_API_KEY")
            .map(|(_, v)| v.to_string());
        let server = Self {
            child,
            url: format!("http://{listen}"),
            log,
            api_key,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.cli(&["jobs", "list"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("server did not become ready; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the `tuna` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(tuna_bin());
        cmd.args(args).env("TUNA_SERVER", &self.url);
        if let Some(key) = &self.api_key {
            cmd.env("TUNA_API_KEY", key);
        }
        cmd.output().unwrap()
    }

    /// Runs the CLI with `--output json` and parses stdout; panics with stderr on failure.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "tuna {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "tuna {args:?} printed invalid JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Sends SIGTERM and waits for a graceful exit; returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        false
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Single-digit additions as prompt/completion JSONL: every `stride`-th of the 100 pairs.
pub fn dataset(stride: usize) -> String {
    (0..100)
        .step_by(stride)
        .map(|i| {
            format!(
                "{{\"prompt\":\"{}+{}=\",\"completion\":\"{}\"}}\n",
                i / 10,
                i % 10,
                i / 10 + i % 10
            )
        })
        .collect()
}

/// A `tuna worker` child process, killed when dropped so a failing test leaves none behind.
pub struct Worker(Child);

impl std::ops::Deref for Worker {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn worker(server: &ServerProcess, dir: &std::path::Path, name: &str) -> Worker {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(tuna_bin())
        .args(["worker", "--name", name, "--cache-dir"])
        .arg(dir.join(format!("{name}-cache")))
        .env("TUNA_SERVER", &server.url)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Worker(child)
}

/// A registered tiny model and uploaded training / validation files.
pub struct Setup {
    pub model: String,
    pub train: String,
    pub valid: String,
}

impl Setup {
    /// `jobs create` on this model and training file, then `extra` (`--r 4`, ...).
    pub fn create_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "jobs",
            "create",
            "--model",
            &self.model,
            "--training-file",
            &self.train,
        ];
        args.extend_from_slice(extra);
        args
    }

    /// Creates a job with [`Self::create_args`] on `server`; returns its id.
    pub fn create_job(&self, server: &ServerProcess, extra: &[&str]) -> String {
        let job = server.json(&self.create_args(extra));
        job["id"]
            .as_str()
            .unwrap_or_else(|| panic!("jobs create answered {job}"))
            .to_string()
    }
}

/// Makes and registers the tiny model `tiny` and uploads the addition datasets.
pub fn setup(server: &ServerProcess, dir: &std::path::Path) -> Setup {
    let model_dir = dir.join("tiny");
    let out = server.cli(&[
        "models",
        "make-tiny",
        "--out",
        model_dir.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    assert!(out.status.success());
    server.json(&[
        "models",
        "register",
        "tiny",
        "--path",
        model_dir.to_str().unwrap(),
    ]);
    let (t, v) = (dir.join("train.jsonl"), dir.join("valid.jsonl"));
    std::fs::write(&t, dataset(1)).unwrap();
    std::fs::write(&v, dataset(4)).unwrap();
    let train = server.json(&["files", "upload", t.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let valid = server.json(&["files", "upload", v.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    Setup {
        model: "tiny".into(),
        train,
        valid,
    }
}

impl ServerProcess {
    /// The server's process id (replica tests match it against leadership holders).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to release leases or finish requests.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real S3-compatible server (moto's standalone server, from PyPI) on a loopback port, with
/// one bucket, killed when dropped.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
}

impl S3Server {
    /// Starts the server, or returns `None` (the caller skips) when it is not installed and
    /// `TUNA_TEST_S3` is unset; with `TUNA_TEST_S3` set (CI) a missing server fails loudly.
    pub fn start() -> Option<Self> {
        let port = free_port();
        let spawned = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => return Self::missing(&format!("python3 could not start: {e}")),
        };
        let mut server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: format!("tuna-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Self::missing(&format!(
                    "`python3 -m moto.server` exited with {status} (pip install 'moto[server]')"
                ));
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "the S3 server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        server.create_bucket();
        Some(server)
    }

    fn missing(why: &str) -> Option<Self> {
        assert!(
            std::env::var_os("TUNA_TEST_S3").is_none(),
            "TUNA_TEST_S3 is set but no S3 server could be started: {why}"
        );
        eprintln!("skipped: no S3 server ({why})");
        None
    }

    /// `PUT /<bucket>` (path-style), retried while the server finishes starting.
    fn create_bucket(&mut self) {
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        for _ in 0..50 {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let req = format!(
                    "PUT /{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.bucket
                );
                let mut reply = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut reply).is_ok()
                    && reply.starts_with("HTTP/1.1 200")
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "could not create bucket {} on {}",
            self.bucket, self.endpoint
        );
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The standard AWS variables a client of this server needs.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "tuna-test"),
            ("AWS_SECRET_ACCESS_KEY", "tuna-test-secret"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
