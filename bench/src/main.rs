//! Tuna benchmarks. Each prints its result next to its baseline in one run.
//!
//! `queue`: burn-down of J jobs by N simulated workers through a real `tuna server` on
//! PostgreSQL (AcquireJob, Heartbeat, ReportMetrics, UploadArtifact, CompleteJob), against the store's own SQL
//! driven directly over N connections; then 200 idle long-pollers over a deep unclaimable
//! queue (see `queue.rs`).
//!
//! `upload`: the server's resident memory while a 2 GiB file streams into an S3 blob store,
//! against the same upload into the local directory (see `upload.rs`).
//!
//! `limits`: one tenant's key flooding, idle uploads and oversized requests against a server
//! on PostgreSQL with its default limits; another key's latency and the server's memory
//! (see `limits.rs`).
//!
//! `search`: the sweep algorithms on a deterministic simulator against random search and
//! Optuna (see `search/mod.rs`).

/// The allocator of the `tuna` binary, so the train benchmark measures what workers run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod grpc;
mod latency;
mod limits;
mod queue;
mod search;
mod train;
mod upload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Tuna benchmarks")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Queue throughput and claim latency through a real `tuna server` vs the raw store SQL.
    Queue(queue::QueueArgs),
    /// Sweep algorithms (CARBS, ASHA, Hyperband, bandits) vs random search and Optuna.
    Search(search::SearchArgs),
    /// ReportMetrics -> WatchJob and CreateJob -> RUNNING latency on PostgreSQL.
    Latency(latency::LatencyArgs),
    /// LoRA training throughput vs PyTorch + PEFT (run with RAYON_NUM_THREADS=2).
    Train(train::TrainArgs),
    /// Server memory while a large file uploads to S3 vs to the local directory.
    Upload(upload::UploadArgs),
    /// A flooding key vs another key's latency, idle uploads and oversized requests; memory.
    Limits(limits::LimitsArgs),
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.bench {
        Bench::Queue(a) => queue::run(a).await,
        Bench::Search(a) => search::run(a),
        Bench::Latency(a) => latency::run(a).await,
        Bench::Train(a) => train::run(a),
        Bench::Upload(a) => upload::run(a).await,
        Bench::Limits(a) => limits::run(a).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
