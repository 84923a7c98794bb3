//! Tuna benchmarks. Each prints its result next to its baseline in one run.
//!
//! `queue`: burn-down of N jobs through the real store (claim, heartbeat, one metrics report,
//! complete) with W concurrent workers, against the single-worker run on the same backend
//! (the baseline that concurrency must beat), on SQLite and, when reachable, PostgreSQL.
//!
//! `search`: the sweep algorithms on a deterministic simulator against random search and
//! Optuna (see `search/mod.rs`).

/// The allocator of the `tuna` binary, so the train benchmark measures what workers run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod latency;
mod search;
mod train;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tuna_proto::v1 as pb;
use tuna_server::domain::Outcome;
use tuna_server::domain::spec::JobSpec;
use tuna_server::store::{self, Fence, MetricInput, NewJob, QueuePolicy, Store, SystemClock};

#[derive(Parser)]
#[command(about = "Tuna benchmarks")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Queue throughput and claim latency, W workers vs 1.
    Queue {
        #[arg(long, default_value_t = 2000)]
        jobs: usize,
        #[arg(long, default_value_t = 8)]
        workers: usize,
        /// PostgreSQL server (a scratch database is created and dropped).
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        database_url: String,
    },
    /// Sweep algorithms (CARBS, ASHA, Hyperband, bandits) vs random search and Optuna.
    Search(search::SearchArgs),
    /// ReportMetrics -> WatchJob and CreateJob -> RUNNING latency on PostgreSQL.
    Latency(latency::LatencyArgs),
    /// LoRA training throughput vs PyTorch + PEFT (run with RAYON_NUM_THREADS=2).
    Train(train::TrainArgs),
}

struct Run {
    jobs_per_s: f64,
    claim_p50: Duration,
    claim_p99: Duration,
}

fn spec() -> Result<JobSpec, String> {
    let p = pb::JobSpec {
        base_model: "bench".into(),
        training_file: "file_00000000000000000000000000000000".into(),
        method: Some(pb::Method {
            r#type: "lora".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    JobSpec::from_proto(Some(&p)).map_err(|v| format!("{v:?}"))
}

async fn burn_down(store: Arc<dyn Store>, jobs: usize, workers: usize) -> Result<Run, String> {
    let spec = spec()?;
    for _ in 0..jobs {
        let job = NewJob {
            spec: spec.clone(),
            request_id: None,
            sweep_id: None,
            resume_from_job: None,
        };
        store.create_job(job).await.map_err(|e| e.to_string())?;
    }
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let worker = store
                .register_worker(&format!("bench-{w}"), "cpu", 1 << 30, "{}")
                .await
                .map_err(|e| e.to_string())?;
            let mut latencies = Vec::new();
            loop {
                let t = Instant::now();
                let Some(lease) = store.claim_job(&worker).await.map_err(|e| e.to_string())? else {
                    break;
                };
                latencies.push(t.elapsed());
                let fence = Fence {
                    job_id: &lease.job.id,
                    lease_token: &lease.lease_token,
                };
                store.heartbeat(fence).await.map_err(|e| e.to_string())?;
                let point = MetricInput {
                    step: 1,
                    values: [("loss".to_string(), 1.0)].into_iter().collect(),
                    time: None,
                };
                store
                    .record_metrics(fence, &[point])
                    .await
                    .map_err(|e| e.to_string())?;
                store
                    .complete_job(fence, Outcome::Succeeded)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed();
    if latencies.len() != jobs {
        return Err(format!("claimed {} of {jobs} jobs", latencies.len()));
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    Ok(Run {
        jobs_per_s: jobs as f64 / elapsed.as_secs_f64(),
        claim_p50: pct(0.5),
        claim_p99: pct(0.99),
    })
}

async fn open(url: &str) -> Result<Arc<dyn Store>, String> {
    store::open(url, QueuePolicy::default(), Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())
}

async fn scratch_pg(admin: &str) -> Result<(String, String), String> {
    use sqlx::Connection;
    let name = format!("tuna_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    Ok((format!("{base}/{name}"), name))
}

async fn drop_pg(admin: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await;
    }
}

async fn queue(jobs: usize, workers: usize, database_url: &str) -> Result<(), String> {
    println!("queue burn-down: {jobs} jobs (claim + heartbeat + metrics + complete each)");
    let mut lines = Vec::new();
    for backend in ["sqlite", "postgres"] {
        let mut runs = Vec::new();
        for w in [1, workers] {
            let (url, cleanup, _dir) = if backend == "sqlite" {
                let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                (url, None, Some(dir))
            } else {
                match scratch_pg(database_url).await {
                    Ok((url, name)) => (url, Some(name), None),
                    Err(e) => {
                        println!("postgres: unavailable ({e})");
                        break;
                    }
                }
            };
            let store = open(&url).await?;
            let run = burn_down(store, jobs, w).await;
            if let Some(name) = cleanup {
                drop_pg(database_url, &name).await;
            }
            runs.push((w, run?));
        }
        if let [(_, base), (w, run)] = runs.as_slice() {
            for (label, r) in [
                ("1 worker (baseline)", base),
                (&*format!("{w} workers"), run),
            ] {
                println!(
                    "  {backend:<8} {label:<20} {:>8.0} jobs/s  claim p50 {:>6.2} ms  p99 {:>6.2} ms",
                    r.jobs_per_s,
                    r.claim_p50.as_secs_f64() * 1e3,
                    r.claim_p99.as_secs_f64() * 1e3
                );
            }
            lines.push(format!(
                "queue {backend}: {w} workers {:.0} jobs/s, baseline 1 worker {:.0} jobs/s, ratio {:.2}",
                run.jobs_per_s,
                base.jobs_per_s,
                run.jobs_per_s / base.jobs_per_s
            ));
        }
    }
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.bench {
        Bench::Queue {
            jobs,
            workers,
            database_url,
        } => queue(jobs, workers.max(1), &database_url).await,
        Bench::Search(a) => search::run(a),
        Bench::Latency(a) => latency::run(a).await,
        Bench::Train(a) => train::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
