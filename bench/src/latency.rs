//! Latency through the real control plane on PostgreSQL over loopback gRPC:
//! - a worker's `ReportMetrics` until a client's `WatchJob` stream delivers it;
//! - `CreateJob` until an idle worker's long-polling `AcquireJob` returns the lease (RUNNING),
//!   on the same replica (in-process wake-up) and across two replicas (LISTEN/NOTIFY).
//!
//! The baseline is what the waiters would cost without notifications: the polling interval
//! (the worst case of a poll-only queue), printed next to the measured percentiles.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tuna_proto::v1 as pb;
use tuna_server::api::Limits;
use tuna_server::blobs::Blobs;
use tuna_server::config::Config;
use tuna_server::serve::ControlPlane;
use tuna_server::store::{QueuePolicy, SystemClock, postgres::PgStore};

use crate::grpc::{Api, E, err, fixtures, register};

#[derive(clap::Args)]
pub struct LatencyArgs {
    /// Metric reports to time.
    #[arg(long, default_value_t = 1000)]
    metrics: usize,
    /// Job submissions to time (per replica setup).
    #[arg(long, default_value_t = 200)]
    submits: usize,
    /// PostgreSQL server (a scratch database is created and dropped).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
}

const POLL_MS: u64 = 1000;

/// Starts a control-plane replica on `db` (no authentication); returns a client of it and a
/// stop handle.
async fn replica(db: &str, blobs: &std::path::Path) -> Result<(Api, oneshot::Sender<()>), E> {
    let store = PgStore::connect(db, QueuePolicy::default(), Arc::new(SystemClock))
        .await
        .map_err(err)?;
    let limits = Limits {
        poll_interval_ms: POLL_MS,
        ..Limits::default()
    };
    let plane = ControlPlane::new(
        Arc::new(store),
        Blobs::local(blobs).map_err(err)?,
        limits,
        &Config::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(plane.serve_on(listener, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(err)?
        .connect()
        .await
        .map_err(err)?;
    Ok((Api::new(channel, None, None)?, stop))
}

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    v.get(((v.len().max(1) - 1) as f64 * p) as usize)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// ReportMetrics → WatchJob.
async fn metrics_latency(api: &Api, spec: &pb::JobSpec, n: usize) -> Result<Vec<Duration>, E> {
    let job = api
        .jobs()
        .create_job(pb::CreateJobRequest {
            spec: Some(spec.clone()),
            request_id: String::new(),
        })
        .await
        .map_err(err)?
        .into_inner();
    let worker_id = register(api, "bench".into()).await?;
    let mut w = api.workers();
    let lease = w
        .acquire_job(pb::AcquireJobRequest {
            worker_id,
            wait_ms: 5000,
        })
        .await
        .map_err(err)?
        .into_inner()
        .lease
        .ok_or("no lease")?;
    let mut stream = api
        .jobs()
        .watch_job(pb::WatchJobRequest {
            id: job.id.clone(),
            after_seq: 0,
        })
        .await
        .map_err(err)?
        .into_inner();
    let (tx, mut rx) = mpsc::unbounded_channel::<(i64, Instant)>();
    tokio::spawn(async move {
        while let Ok(Some(u)) = stream.message().await {
            if let Some(pb::job_update::Kind::Metrics(m)) = u.kind {
                let _ = tx.send((m.step, Instant::now()));
            }
        }
    });
    let mut sent = HashMap::new();
    for step in 1..=n as i64 {
        sent.insert(step, Instant::now());
        w.report_metrics(pb::ReportMetricsRequest {
            job_id: job.id.clone(),
            lease_token: lease.lease_token.clone(),
            points: vec![pb::MetricPoint {
                step,
                values: [("loss".to_string(), 1.0 / step as f64)]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }],
        })
        .await
        .map_err(err)?;
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (step, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| "watch stalled")?
            .ok_or("watch ended")?;
        if let Some(t) = sent.get(&step) {
            out.push(at.duration_since(*t));
        }
    }
    Ok(out)
}

/// CreateJob on `submit` → lease on an idle worker long-polling `acquire`.
async fn submit_latency(
    submit: &Api,
    acquire: &Api,
    spec: &pb::JobSpec,
    n: usize,
) -> Result<Vec<Duration>, E> {
    let worker_id = register(acquire, "bench".into()).await?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut w = acquire.workers();
        let id = worker_id.clone();
        let waiting = tokio::spawn(async move {
            let lease = w
                .acquire_job(pb::AcquireJobRequest {
                    worker_id: id,
                    wait_ms: 10_000,
                })
                .await;
            (Instant::now(), lease, w)
        });
        // Let the long-poll reach its wait.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t0 = Instant::now();
        submit
            .jobs()
            .create_job(pb::CreateJobRequest {
                spec: Some(spec.clone()),
                request_id: String::new(),
            })
            .await
            .map_err(err)?;
        let (t1, lease, mut w) = waiting.await.map_err(err)?;
        let lease = lease
            .map_err(err)?
            .into_inner()
            .lease
            .ok_or("long-poll returned no lease")?;
        out.push(t1.duration_since(t0));
        // The job ends here; a success would need an uploaded adapter, which is not what
        // this benchmark measures.
        w.fail_job(pb::FailJobRequest {
            job_id: lease.job_id,
            lease_token: lease.lease_token,
            kind: pb::FailureKind::User as i32,
            message: "latency benchmark: done".into(),
        })
        .await
        .map_err(err)?;
    }
    Ok(out)
}

pub async fn run(a: LatencyArgs) -> Result<(), E> {
    let (db, name) = crate::scratch_pg(&a.database_url).await?;
    let result = measure(&a, &db).await;
    crate::drop_pg(&a.database_url, &name).await;
    result
}

async fn measure(a: &LatencyArgs, db: &str) -> Result<(), E> {
    let tmp = tempfile::tempdir().map_err(err)?;
    let (one, stop_one) = replica(db, &tmp.path().join("blobs")).await?;
    let (two, stop_two) = replica(db, &tmp.path().join("blobs")).await?;
    let spec = fixtures(&one).await?;
    let m = metrics_latency(&one, &spec, a.metrics).await?;
    let same = submit_latency(&one, &one, &spec, a.submits).await?;
    let cross = submit_latency(&one, &two, &spec, a.submits).await?;
    let _ = stop_one.send(());
    let _ = stop_two.send(());
    println!(
        "latency on PostgreSQL over loopback gRPC; baseline = poll-only waiting, up to {POLL_MS} ms"
    );
    let line = |what: &str, v: &[Duration], target: f64| {
        let (p50, p99) = (pct(v.to_vec(), 0.5), pct(v.to_vec(), 0.99));
        println!(
            "latency {what}: p50 {p50:.2} ms, p99 {p99:.2} ms over {} (target p99 < {target} ms: {}; baseline poll {POLL_MS} ms)",
            v.len(),
            if p99 < target { "met" } else { "MISSED" }
        );
    };
    line("report->watch", &m, 50.0);
    line("submit->running (same replica)", &same, 100.0);
    line(
        "submit->running (other replica, LISTEN/NOTIFY)",
        &cross,
        100.0,
    );
    Ok(())
}
