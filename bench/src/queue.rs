//! Queue throughput and claim latency through a real `tuna server` process on PostgreSQL,
//! against the raw baseline: the store's own claim, heartbeat, metrics and complete SQL driven
//! directly over N pooled connections (no gRPC, no server), in the same run.
//!
//! - tuna: `tuna server` (the binary next to this one) with an API key and a worker token on a
//!   scratch database; J jobs enqueued with `CreateJob`; N simulated workers, one HTTP/2
//!   connection each, loop `AcquireJob` (long-poll) → `Heartbeat` → `ReportMetrics` (one point)
//!   → `UploadArtifact` (a 256-byte adapter: a success needs one) → `CompleteJob` until the
//!   queue is empty. Throughput is J over the time from the first
//!   acquire to the last complete; claim latency is the `AcquireJob` round trip of the calls
//!   that returned a lease (jobs were always available).
//! - raw: the same J jobs in a fresh database, burned down by N tasks calling the `Store`
//!   trait's `claim_job`, `heartbeat`, `record_metrics`, `insert_artifact` and `complete_job` on a `PgStore` over
//!   a pool of N connections with the server's pool settings (`PgStore::pool_options`):
//!   exactly the SQL the server runs, without the RPC layer.
//! - idle (skip with `--no-idle-phase`): 10,000 queued jobs that need `cuda` while every worker
//!   has `cpu`, and 200 workers long-polling `AcquireJob`; PostgreSQL connections of the
//!   database and the CPU of the server process and of PostgreSQL over the window.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tonic::transport::Channel;
use tuna_proto::v1 as pb;
use tuna_server::domain::Outcome;
use tuna_server::domain::spec::JobSpec;
use tuna_server::store::postgres::PgStore;
use tuna_server::store::{
    Fence, MetricInput, NewArtifact, NewJob, QueuePolicy, Store, SystemClock,
};

use crate::grpc::{Api, E, err, fixtures, register};

#[derive(clap::Args)]
pub struct QueueArgs {
    /// Jobs to burn down (through the server, then again raw).
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// Concurrent simulated workers (and raw connections).
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Run the idle long-poll phase (the default).
    #[arg(long, overrides_with = "no_idle_phase")]
    idle_phase: bool,
    /// Skip the idle long-poll phase.
    #[arg(long, overrides_with = "idle_phase")]
    no_idle_phase: bool,
    /// Unclaimable jobs queued in the idle phase.
    #[arg(long, default_value_t = 10_000)]
    idle_jobs: usize,
    /// Workers long-polling in the idle phase.
    #[arg(long, default_value_t = 200)]
    idle_workers: usize,
    /// Length of the idle measurement window, in seconds.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// The `tuna` binary; default: the one next to this executable.
    #[arg(long)]
    tuna_bin: Option<PathBuf>,
    /// PostgreSQL server (scratch databases are created and dropped).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
}

const API_KEY: &str = "bench-api-key";
const WORKER_TOKEN: &str = "bench-worker-token";
/// Long-poll of the burn-down workers (they stop as soon as every job is claimed).
const BURN_WAIT_MS: i64 = 2_000;
/// Long-poll of the idle workers: the worker agent's default.
const IDLE_WAIT_MS: i64 = 30_000;
/// CreateJob / create_job calls in flight while enqueueing.
const ENQUEUE_CONCURRENCY: usize = 32;
/// The adapter each simulated job uploads before it succeeds (the server refuses a success
/// without one).
const ADAPTER: &[u8] = &[7u8; 256];

// ---------------------------------------------------------------------------------------------
// Scratch databases and the server process.

async fn create_db(admin: &str, name: &str) -> Result<String, E> {
    let mut conn = sqlx::PgConnection::connect(admin).await.map_err(err)?;
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .map_err(err)?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .map_err(err)?;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    Ok(format!("{base}/{name}"))
}

fn tuna_bin(arg: Option<&Path>) -> Result<PathBuf, E> {
    let bin = match arg {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .map_err(err)?
            .parent()
            .ok_or("the executable has no directory")?
            .join("tuna"),
    };
    if !bin.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p tuna` in the same target \
             directory, or pass --tuna-bin",
            bin.display()
        ));
    }
    Ok(bin)
}

/// A `tuna server` child process, killed when dropped.
struct Server {
    child: tokio::process::Child,
    pid: u32,
    /// A client on the first connection.
    api: Api,
    url: String,
}

impl Server {
    async fn start(bin: &Path, db: &str, dir: &Path) -> Result<Self, E> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(err)?
            .port();
        let listen = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(dir).map_err(err)?;
        let log = dir.join(format!("server-{port}.log"));
        let log_file = std::fs::File::create(&log).map_err(err)?;
        let mut child = tokio::process::Command::new(bin)
            .args([
                "server",
                "--listen",
                &listen,
                "--database-url",
                db,
                "--data-dir",
            ])
            .arg(dir)
            .env("TUNA_API_KEY", API_KEY)
            .env("TUNA_WORKER_TOKEN", WORKER_TOKEN)
            // The benchmark's one client key enqueues thousands of jobs at once: no rate limit
            // or queued-job quota (their defaults protect a shared server, not this one).
            .env("TUNA_RATE_LIMIT_PER_KEY", "0")
            .env("TUNA_MAX_QUEUED_JOBS_PER_TENANT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let pid = child.id().ok_or("tuna server exited at once")?;
        let url = format!("http://{listen}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().map_err(err)? {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("tuna server exited ({status}); log:\n{text}"));
            }
            if let Ok(channel) = Channel::from_shared(url.clone())
                .map_err(err)?
                .connect()
                .await
            {
                let api = Api::new(channel, Some(API_KEY), Some(WORKER_TOKEN))?;
                let ready = api
                    .jobs()
                    .list_jobs(pb::ListJobsRequest {
                        page_size: 1,
                        ..Default::default()
                    })
                    .await;
                if ready.is_ok() {
                    return Ok(Self {
                        child,
                        pid,
                        api,
                        url,
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "tuna server not ready after 60 s; log {}",
                    log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client on a new HTTP/2 connection, as a separate worker process would have.
    async fn connect(&self) -> Result<Api, E> {
        let channel = Channel::from_shared(self.url.clone())
            .map_err(err)?
            .connect()
            .await
            .map_err(err)?;
        Ok(self.api.on(channel))
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Enqueueing over gRPC.

/// `CreateJob` `n` times, a few calls in flight.
async fn enqueue_grpc(api: &Api, spec: &pb::JobSpec, n: usize) -> Result<(), E> {
    let client = api.jobs();
    futures::stream::iter(0..n)
        .map(|_| {
            let mut c = client.clone();
            let spec = spec.clone();
            async move {
                c.create_job(pb::CreateJobRequest {
                    spec: Some(spec),
                    request_id: String::new(),
                })
                .await
                .map(|_| ())
                .map_err(err)
            }
        })
        .buffer_unordered(ENQUEUE_CONCURRENCY)
        .try_collect::<()>()
        .await
}

// ---------------------------------------------------------------------------------------------
// Burn-down through the server.

struct Run {
    jobs_per_s: f64,
    /// Sorted claim round trips.
    claims: Vec<Duration>,
}

impl Run {
    fn pct_ms(&self, p: f64) -> f64 {
        let v = &self.claims;
        v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }
}

/// What a simulated worker hands back: its claim latencies and when it last completed a job.
type WorkerResult = (Vec<Duration>, Option<Instant>);

async fn grpc_worker(
    api: Api,
    worker_id: String,
    total: usize,
    claimed: Arc<AtomicUsize>,
    done: Arc<watch::Sender<bool>>,
    mut go: watch::Receiver<bool>,
) -> Result<WorkerResult, E> {
    let mut w = api.workers();
    let mut stop = done.subscribe();
    let mut latencies = Vec::new();
    let mut last = None;
    go.wait_for(|g| *g).await.map_err(err)?;
    while claimed.load(Ordering::SeqCst) < total {
        let t = Instant::now();
        let acquire = w.acquire_job(pb::AcquireJobRequest {
            worker_id: worker_id.clone(),
            wait_ms: BURN_WAIT_MS,
        });
        let reply = tokio::select! {
            r = acquire => r.map_err(err)?.into_inner(),
            _ = stop.wait_for(|d| *d) => break,
        };
        let Some(lease) = reply.lease else { continue };
        latencies.push(t.elapsed());
        if claimed.fetch_add(1, Ordering::SeqCst) + 1 == total {
            // Nobody else will get a lease: end the others' long-polls.
            done.send_replace(true);
        }
        w.heartbeat(pb::HeartbeatRequest {
            job_id: lease.job_id.clone(),
            lease_token: lease.lease_token.clone(),
            step: 1,
        })
        .await
        .map_err(err)?;
        w.report_metrics(pb::ReportMetricsRequest {
            job_id: lease.job_id.clone(),
            lease_token: lease.lease_token.clone(),
            points: vec![pb::MetricPoint {
                step: 1,
                values: [("loss".to_string(), 1.0)].into_iter().collect(),
                ..Default::default()
            }],
        })
        .await
        .map_err(err)?;
        // A success needs the attempt's adapter: a small one, as a worker would upload.
        let header = pb::UploadArtifactHeader {
            job_id: lease.job_id.clone(),
            lease_token: lease.lease_token.clone(),
            kind: pb::ArtifactKind::Adapter as i32,
            step: 1,
            name: "adapter.tar".into(),
            size_bytes: ADAPTER.len() as i64,
            sha256: hex::encode(Sha256::digest(ADAPTER)),
        };
        w.upload_artifact(futures::stream::iter([
            pb::UploadArtifactRequest {
                data: Some(pb::upload_artifact_request::Data::Header(header)),
            },
            pb::UploadArtifactRequest {
                data: Some(pb::upload_artifact_request::Data::Chunk(ADAPTER.to_vec())),
            },
        ]))
        .await
        .map_err(err)?;
        w.complete_job(pb::CompleteJobRequest {
            job_id: lease.job_id,
            lease_token: lease.lease_token,
            outcome: pb::Outcome::Succeeded as i32,
        })
        .await
        .map_err(err)?;
        last = Some(Instant::now());
    }
    Ok((latencies, last))
}

/// A scratch database: the admin URL it was created from, its name and its URL.
struct Db<'a> {
    admin: &'a str,
    name: &'a str,
    url: &'a str,
}

async fn tuna_run(
    bin: &Path,
    db: &Db<'_>,
    dir: &Path,
    jobs: usize,
    workers: usize,
) -> Result<Run, E> {
    let server = Server::start(bin, db.url, dir).await?;
    let result = tuna_burn(&server, db, jobs, workers).await;
    server.stop().await;
    result
}

async fn tuna_burn(server: &Server, db: &Db<'_>, jobs: usize, workers: usize) -> Result<Run, E> {
    let spec = fixtures(&server.api).await?;
    let t = Instant::now();
    enqueue_grpc(&server.api, &spec, jobs).await?;
    println!(
        "  tuna: enqueued {jobs} jobs with CreateJob in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let claimed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(watch::channel(false).0);
    let (go_tx, go) = watch::channel(false);
    let mut handles = Vec::with_capacity(workers);
    for i in 0..workers {
        let api = server.connect().await?;
        let id = register(&api, format!("bench-{i}")).await?;
        handles.push(tokio::spawn(grpc_worker(
            api,
            id,
            jobs,
            claimed.clone(),
            done.clone(),
            go.clone(),
        )));
    }
    let meter = Meter::start(db.admin, db.name, Some(server.pid)).await?;
    let started = Instant::now();
    go_tx.send(true).map_err(err)?;
    let mut claims = Vec::with_capacity(jobs);
    let mut end = started;
    for h in handles {
        let (lat, last) = h.await.map_err(err)??;
        claims.extend(lat);
        end = end.max(last.unwrap_or(started));
    }
    println!("{}", meter.stop().await?.line("tuna"));
    if claims.len() != jobs {
        return Err(format!("claimed {} of {jobs} jobs", claims.len()));
    }
    claims.sort();
    Ok(Run {
        jobs_per_s: jobs as f64 / end.duration_since(started).as_secs_f64(),
        claims,
    })
}

// ---------------------------------------------------------------------------------------------
// The raw baseline: the store's SQL on N connections.

async fn raw_run(db: &Db<'_>, spec: &pb::JobSpec, jobs: usize, workers: usize) -> Result<Run, E> {
    // The server's pool settings, on N connections.
    let pool = PgStore::pool_options()
        .max_connections(u32::try_from(workers).map_err(err)?)
        .connect(db.url)
        .await
        .map_err(err)?;
    let store: Arc<dyn Store> = Arc::new(
        PgStore::from_pool(pool.clone(), QueuePolicy::default(), Arc::new(SystemClock))
            .await
            .map_err(err)?,
    );
    let spec = JobSpec::from_proto(Some(spec)).map_err(|v| format!("{v:?}"))?;
    let t = Instant::now();
    futures::stream::iter(0..jobs)
        .map(|_| {
            let store = store.clone();
            let job = NewJob {
                tenant: "default".into(),
                spec: spec.clone(),
                request_id: None,
                sweep_id: None,
                resume_from_job: None,
                trace_context: None,
            };
            async move { store.create_job(job).await.map(|_| ()).map_err(err) }
        })
        .buffer_unordered(ENQUEUE_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    println!(
        "  raw:  enqueued {jobs} jobs with create_job in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut registered = Vec::with_capacity(workers);
    for w in 0..workers {
        registered.push(
            store
                .register_worker("bench", &format!("bench-{w}"), "cpu", 1 << 30, "{}")
                .await
                .map_err(err)?,
        );
    }
    let meter = Meter::start(db.admin, db.name, None).await?;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(workers);
    for worker in registered {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut last = None;
            loop {
                let t = Instant::now();
                let Some(lease) = store.claim_job(&worker).await.map_err(err)? else {
                    break;
                };
                latencies.push(t.elapsed());
                let fence = Fence {
                    job_id: &lease.job.id,
                    lease_token: &lease.lease_token,
                };
                store.heartbeat(fence).await.map_err(err)?;
                let point = MetricInput {
                    step: 1,
                    values: [("loss".to_string(), 1.0)].into_iter().collect(),
                    time: None,
                };
                store.record_metrics(fence, &[point]).await.map_err(err)?;
                // The adapter's row, as the server commits it (the raw path writes no blob).
                let adapter = NewArtifact {
                    id: tuna_server::domain::ids::new_id(tuna_server::domain::ids::ARTIFACT),
                    kind: tuna_server::domain::ArtifactKind::Adapter,
                    step: 1,
                    name: "adapter.tar".into(),
                    size_bytes: ADAPTER.len() as i64,
                    sha256: hex::encode(Sha256::digest(ADAPTER)),
                    blob_key: "artifacts/raw-bench".into(),
                };
                store.insert_artifact(fence, &adapter).await.map_err(err)?;
                store
                    .complete_job(fence, Outcome::Succeeded)
                    .await
                    .map_err(err)?;
                last = Some(Instant::now());
            }
            Ok::<WorkerResult, E>((latencies, last))
        }));
    }
    let mut claims = Vec::with_capacity(jobs);
    let mut end = started;
    for h in handles {
        let (lat, last) = h.await.map_err(err)??;
        claims.extend(lat);
        end = end.max(last.unwrap_or(started));
    }
    println!("{}", meter.stop().await?.line("raw "));
    drop(store);
    pool.close().await;
    if claims.len() != jobs {
        return Err(format!("claimed {} of {jobs} jobs", claims.len()));
    }
    claims.sort();
    Ok(Run {
        jobs_per_s: jobs as f64 / end.duration_since(started).as_secs_f64(),
        claims,
    })
}

// ---------------------------------------------------------------------------------------------
// Where the CPU goes: /proc of the server process, of this process and of PostgreSQL.

type Ticks = HashMap<u32, u64>;

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks (all its threads); `None` once it is gone.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); utime and stime are fields 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn ticks_of(pids: impl IntoIterator<Item = u32>) -> Ticks {
    pids.into_iter()
        .filter_map(|p| cpu_ticks(p).map(|t| (p, t)))
        .collect()
}

/// Every PostgreSQL process of this machine (any database, background processes included).
fn postgres_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .collect()
}

/// The backends connected to database `name`.
async fn db_backends(admin: &mut PgConnection, name: &str) -> Result<Vec<u32>, E> {
    let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
        .bind(name)
        .fetch_all(&mut *admin)
        .await
        .map_err(err)?;
    Ok(pids
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect())
}

/// Transactions committed or rolled back in database `name` (an empty claim rolls back).
async fn xacts(admin: &mut PgConnection, name: &str) -> Result<i64, E> {
    sqlx::query_scalar(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_one(&mut *admin)
    .await
    .map_err(err)
}

/// CPU seconds spent between two samples; a process first seen in `after` (a backend that
/// connected in between) counts whole.
fn spent(before: &Ticks, after: &Ticks, hz: f64) -> f64 {
    after
        .iter()
        .map(|(p, t1)| t1.saturating_sub(before.get(p).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        / hz
}

/// CPU use over a window: the server process, this process, the bench database's backends
/// and every PostgreSQL process, each in percent of one core.
struct Meter {
    admin: PgConnection,
    db: String,
    hz: f64,
    started: Instant,
    server: Option<u32>,
    ticks: [Ticks; 4],
    xacts: i64,
}

struct Usage {
    has_server: bool,
    secs: f64,
    server: f64,
    bench: f64,
    db: f64,
    postgres: f64,
    xacts_per_s: f64,
}

impl Meter {
    async fn sample(&mut self) -> Result<[Ticks; 4], E> {
        let backends = db_backends(&mut self.admin, &self.db).await?;
        Ok([
            ticks_of(self.server),
            ticks_of([std::process::id()]),
            ticks_of(backends),
            ticks_of(postgres_pids()),
        ])
    }

    async fn start(admin: &str, db: &str, server: Option<u32>) -> Result<Self, E> {
        let mut m = Self {
            admin: PgConnection::connect(admin).await.map_err(err)?,
            db: db.to_string(),
            hz: clock_ticks(),
            started: Instant::now(),
            server,
            ticks: Default::default(),
            xacts: 0,
        };
        m.xacts = xacts(&mut m.admin, db).await?;
        m.ticks = m.sample().await?;
        m.started = Instant::now();
        Ok(m)
    }

    async fn connections(&mut self) -> Result<usize, E> {
        Ok(db_backends(&mut self.admin, &self.db).await?.len())
    }

    async fn stop(mut self) -> Result<Usage, E> {
        let after = self.sample().await?;
        let secs = self.started.elapsed().as_secs_f64();
        let pct = |i: usize| spent(&self.ticks[i], &after[i], self.hz) / secs * 100.0;
        let (server, bench, db, postgres) = (pct(0), pct(1), pct(2), pct(3));
        // Statistics reach pg_stat_database within a second or so of the transactions.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let xacts = xacts(&mut self.admin, &self.db).await? - self.xacts;
        Ok(Usage {
            has_server: self.server.is_some(),
            secs,
            server,
            bench,
            db,
            postgres,
            xacts_per_s: xacts as f64 / secs,
        })
    }
}

impl Usage {
    fn line(&self, what: &str) -> String {
        let server = if self.has_server {
            format!("server {:.0}%, ", self.server)
        } else {
            String::new()
        };
        format!(
            "  {what}: cpu over {:.1} s (% of one core; {} cores): {server}bench database \
             backends {:.0}%, all postgres {:.0}%, this process {:.0}%; {:.0} transactions/s",
            self.secs,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            self.db,
            self.postgres,
            self.bench,
            self.xacts_per_s
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The idle phase: many long-pollers, a deep queue nobody can claim.

struct IdleArgs<'a> {
    admin: &'a str,
    bin: &'a Path,
    dir: &'a Path,
    name: &'a str,
    jobs: usize,
    workers: usize,
    window: Duration,
}

async fn idle_phase(a: IdleArgs<'_>) -> Result<(), E> {
    let db = create_db(a.admin, a.name).await?;
    let server = Server::start(a.bin, &db, a.dir).await?;
    let result = idle_measure(&a, &server).await;
    server.stop().await;
    result
}

async fn idle_measure(a: &IdleArgs<'_>, server: &Server) -> Result<(), E> {
    let mut spec = fixtures(&server.api).await?;
    spec.resources = Some(pb::Resources {
        device: "cuda".into(),
        min_memory_bytes: 0,
        ..Default::default()
    });
    let t = Instant::now();
    enqueue_grpc(&server.api, &spec, a.jobs).await?;
    println!(
        "  idle: enqueued {} cuda jobs in {:.1} s; {} cpu workers long-poll AcquireJob (wait_ms {IDLE_WAIT_MS})",
        a.jobs,
        t.elapsed().as_secs_f64(),
        a.workers
    );
    let (stop_tx, stop) = watch::channel(false);
    let leases = Arc::new(AtomicUsize::new(0));
    let polls = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(a.workers);
    for i in 0..a.workers {
        let api = server.connect().await?;
        let id = register(&api, format!("idle-{i}")).await?;
        let mut w = api.workers();
        let mut stop = stop.clone();
        let (leases, polls) = (leases.clone(), polls.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let acquire = w.acquire_job(pb::AcquireJobRequest {
                    worker_id: id.clone(),
                    wait_ms: IDLE_WAIT_MS,
                });
                let reply = tokio::select! {
                    r = acquire => r.map_err(err)?.into_inner(),
                    _ = stop.wait_for(|s| *s) => return Ok::<(), E>(()),
                };
                polls.fetch_add(1, Ordering::SeqCst);
                if reply.lease.is_some() {
                    leases.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    // Let every long-poll reach its wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut meter = Meter::start(a.admin, a.name, Some(server.pid)).await?;
    let t0 = Instant::now();
    let mut max_conns = meter.connections().await?;
    while t0.elapsed() < a.window {
        tokio::time::sleep(Duration::from_millis(500)).await;
        max_conns = max_conns.max(meter.connections().await?);
    }
    let polls_in_window = polls.load(Ordering::SeqCst);
    let usage = meter.stop().await?;
    stop_tx.send_replace(true);
    for h in handles {
        h.await.map_err(err)??;
    }
    let leased = leases.load(Ordering::SeqCst);
    if leased > 0 {
        return Err(format!("{leased} unclaimable jobs were handed out"));
    }
    println!("{}", usage.line("idle"));
    println!("  idle: {polls_in_window} long-polls answered (empty) during the window");
    println!(
        "idle: {} long-polling workers, {} queued: postgres connections {max_conns}, \
         server cpu {:.1}%, postgres cpu {:.1}%",
        a.workers, a.jobs, usage.server, usage.db
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

pub async fn run(a: QueueArgs) -> Result<(), E> {
    let bin = tuna_bin(a.tuna_bin.as_deref())?;
    let workers = a.workers.max(1);
    let jobs = a.jobs.max(1);
    let dir = tempfile::tempdir().map_err(err)?;
    let prefix = format!("tuna_bench_queue_{}", std::process::id());
    println!(
        "queue: {jobs} jobs, {workers} workers, each job AcquireJob -> Heartbeat -> \
         ReportMetrics (1 point) -> CompleteJob; PostgreSQL"
    );

    let tuna_db = format!("{prefix}_tuna");
    let url = create_db(&a.database_url, &tuna_db).await?;
    let db = Db {
        admin: &a.database_url,
        name: &tuna_db,
        url: &url,
    };
    let tuna = tuna_run(&bin, &db, &dir.path().join("tuna"), jobs, workers).await;
    crate::drop_pg(&a.database_url, &tuna_db).await;
    let tuna = tuna?;

    let raw_db = format!("{prefix}_raw");
    let url = create_db(&a.database_url, &raw_db).await?;
    let spec = pb::JobSpec {
        base_model: "bench".into(),
        training_file: "file_00000000000000000000000000000000".into(),
        method: Some(pb::Method {
            r#type: "lora".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let db = Db {
        admin: &a.database_url,
        name: &raw_db,
        url: &url,
    };
    let raw = raw_run(&db, &spec, jobs, workers).await;
    crate::drop_pg(&a.database_url, &raw_db).await;
    let raw = raw?;

    for (label, r) in [
        ("tuna server (gRPC)", &tuna),
        ("raw store SQL (baseline)", &raw),
    ] {
        println!(
            "  {label:<26} {:>7.1} jobs/s  claim p50 {:>6.2} ms  p99 {:>6.2} ms",
            r.jobs_per_s,
            r.pct_ms(0.5),
            r.pct_ms(0.99)
        );
    }
    let ratio = tuna.jobs_per_s / raw.jobs_per_s;
    let p99 = tuna.pct_ms(0.99);
    println!(
        "  target (set for 16 workers; this run {workers}): ratio >= 0.5: {}; p99 claim < 20 ms: {}",
        if ratio >= 0.5 { "met" } else { "MISSED" },
        if p99 < 20.0 { "met" } else { "MISSED" }
    );

    if !a.no_idle_phase {
        let name = format!("{prefix}_idle");
        let result = idle_phase(IdleArgs {
            admin: &a.database_url,
            bin: &bin,
            dir: &dir.path().join("idle"),
            name: &name,
            jobs: a.idle_jobs,
            workers: a.idle_workers,
            window: Duration::from_secs(a.idle_secs.max(1)),
        })
        .await;
        crate::drop_pg(&a.database_url, &name).await;
        result?;
    }

    println!(
        "queue: tuna {:.1} jobs/s, raw {:.1} jobs/s, ratio {ratio:.2}, p99 claim {p99:.1} ms",
        tuna.jobs_per_s, raw.jobs_per_s
    );
    Ok(())
}
