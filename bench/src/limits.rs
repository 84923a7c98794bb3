//! `tuna-bench limits`: the server under hostile load from one tenant's key, as an operator
//! would see it.
//!
//! A release `tuna server` process (the binary beside this one) on a scratch PostgreSQL
//! database, with the default limits, an admin API key and two client keys of two tenants:
//! - flood: key A calls `ListJobs` from 64 concurrent loops for `--flood-secs`; meanwhile key B
//!   makes one `GetFile` every 20 ms and its latencies are kept. A's calls past its rate limit
//!   are RESOURCE_EXHAUSTED; B's p99 is the number to watch (target < 100 ms);
//! - uploads: A and B each open 100 uploads that send a header and then nothing; at most
//!   `max_uploads_per_key` each are held, the rest are refused at once;
//! - oversized: job specs with 100,000 target modules, a grid sweep of 4 × 100 levels (the
//!   one that once took 7 GB), 999 label filters and 8 MiB messages, each refused.
//!
//! The server's resident set is sampled every 20 ms from `/proc` over all phases (target:
//! peak < 300 MiB).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;
use tuna_proto::v1 as pb;
use tuna_proto::v1::admin_service_client::AdminServiceClient;
use tuna_proto::v1::file_service_client::FileServiceClient;
use tuna_proto::v1::job_service_client::JobServiceClient;
use tuna_proto::v1::sweep_service_client::SweepServiceClient;

use crate::upload::{Proc, free_port, rss_kib, wait_port};

type E = String;

fn err(e: impl std::fmt::Display) -> E {
    e.to_string()
}

const ROOT: &str = "bench-root-key";

#[derive(clap::Args)]
pub struct LimitsArgs {
    /// Length of the flood, in seconds.
    #[arg(long, default_value_t = 10)]
    flood_secs: u64,
    /// Concurrent loops of the flooding key.
    #[arg(long, default_value_t = 64)]
    flooders: usize,
    /// PostgreSQL server (a scratch database is created and dropped).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
}

fn authed<T>(msg: T, key: &str) -> Result<tonic::Request<T>, E> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().map_err(err)?,
    );
    Ok(r)
}

async fn new_key(ch: &Channel, tenant: &str) -> Result<String, E> {
    let r = AdminServiceClient::new(ch.clone())
        .create_api_key(authed(
            pb::CreateApiKeyRequest {
                tenant: tenant.into(),
                role: pb::ApiKeyRole::Client as i32,
                name: "bench".into(),
            },
            ROOT,
        )?)
        .await
        .map_err(err)?;
    Ok(r.into_inner().secret)
}

async fn upload(ch: &Channel, key: &str, body: &[u8]) -> Result<pb::File, E> {
    let messages = vec![
        pb::UploadFileRequest {
            data: Some(pb::upload_file_request::Data::Header(
                pb::UploadFileHeader {
                    name: "d.jsonl".into(),
                    purpose: pb::FilePurpose::Dataset as i32,
                    size_bytes: body.len() as i64,
                    sha256: hex::encode(Sha256::digest(body)),
                    format: 0,
                },
            )),
        },
        pb::UploadFileRequest {
            data: Some(pb::upload_file_request::Data::Chunk(body.to_vec())),
        },
    ];
    Ok(FileServiceClient::new(ch.clone())
        .upload(authed(futures::stream::iter(messages), key)?)
        .await
        .map_err(err)?
        .into_inner())
}

/// Samples the server's resident set until stopped; the peak in KiB.
fn rss_sampler(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

fn pct_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

struct Flood {
    calls: u64,
    refused: u64,
    other_code: Option<Code>,
    latencies: Vec<Duration>,
    other_errors: u64,
}

async fn flood(ch: &Channel, a: &str, b: &str, secs: u64, loops: usize) -> Result<Flood, E> {
    let file = upload(ch, b, b"{\"text\":\"b\"}\n").await?;
    let until = Instant::now() + Duration::from_secs(secs);
    let calls = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let other = Arc::new(std::sync::Mutex::new(None));
    let mut tasks = Vec::new();
    for _ in 0..loops {
        let (mut jobs, key) = (JobServiceClient::new(ch.clone()), a.to_string());
        let (calls, refused, other) = (calls.clone(), refused.clone(), other.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let Ok(req) = authed(pb::ListJobsRequest::default(), &key) else {
                    return;
                };
                calls.fetch_add(1, Ordering::Relaxed);
                match jobs.list_jobs(req).await {
                    Ok(_) => {}
                    Err(s) if s.code() == Code::ResourceExhausted => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) => {
                        if let Ok(mut o) = other.lock() {
                            *o = Some(s.code());
                        }
                    }
                }
            }
        }));
    }
    let mut files = FileServiceClient::new(ch.clone());
    let mut latencies = Vec::new();
    let mut other_errors = 0;
    while Instant::now() < until {
        let req = authed(
            pb::GetFileRequest {
                id: file.id.clone(),
            },
            b,
        )?;
        let t = Instant::now();
        match files.get_file(req).await {
            Ok(_) => latencies.push(t.elapsed()),
            Err(_) => other_errors += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    latencies.sort();
    let other_code = other.lock().ok().and_then(|o| *o);
    Ok(Flood {
        calls: calls.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        other_code,
        latencies,
        other_errors,
    })
}

/// Opens `n` uploads that send only a header; (held, refused) after a pause.
async fn idle_uploads(ch: &Channel, key: &str, n: usize) -> Result<(usize, usize), E> {
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for i in 0..n {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let header = pb::UploadFileRequest {
            data: Some(pb::upload_file_request::Data::Header(
                pb::UploadFileHeader {
                    name: format!("idle-{i}.jsonl"),
                    purpose: pb::FilePurpose::Dataset as i32,
                    size_bytes: 1 << 20,
                    sha256: "0".repeat(64),
                    format: 0,
                },
            )),
        };
        tx.send(header).await.map_err(err)?;
        let mut client = FileServiceClient::new(ch.clone());
        let messages =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let req = authed(messages, key)?;
        calls.push(tokio::spawn(async move { client.upload(req).await }));
        senders.push(tx);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = calls.iter().filter(|c| c.is_finished()).count();
    drop(senders);
    for c in calls {
        let _ = c.await;
    }
    Ok((n - refused, refused))
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Each oversized request; the codes they got.
async fn oversized(ch: &Channel, key: &str) -> Result<Vec<(String, Code)>, E> {
    let mut out = Vec::new();
    let mut jobs = JobServiceClient::new(ch.clone())
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let spec = |modules: Vec<String>| pb::JobSpec {
        base_model: "m".into(),
        training_file: "file_00000000000000000000000000000001".into(),
        method: Some(pb::Method {
            r#type: "lora".into(),
            lora: Some(pb::LoraParams {
                target_modules: modules,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    for _ in 0..20 {
        let modules = (0..100_000).map(|i| format!("m{i}")).collect();
        let r = jobs
            .create_job(authed(
                pb::CreateJobRequest {
                    spec: Some(spec(modules)),
                    request_id: String::new(),
                },
                key,
            )?)
            .await;
        out.push(("100,000 target modules".into(), code(r)));
    }
    let r = jobs
        .list_jobs(authed(
            pb::ListJobsRequest {
                labels: (0..999).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..Default::default()
            },
            key,
        )?)
        .await;
    out.push(("999 label filters".into(), code(r)));
    for _ in 0..5 {
        let r = jobs
            .create_job(authed(
                pb::CreateJobRequest {
                    spec: Some(pb::JobSpec {
                        base_model: "x".repeat(8 << 20),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                },
                key,
            )?)
            .await;
        out.push(("an 8 MiB message".into(), code(r)));
    }
    let levels: Vec<String> = (0..100).map(|i| format!("{i}")).collect();
    let grid = pb::SweepSpec {
        parameters: ["a", "b", "c", "d"]
            .iter()
            .map(|n| pb::Parameter {
                name: format!("labels.{n}"),
                scale: "categorical".into(),
                choices: levels.clone(),
                ..Default::default()
            })
            .collect(),
        algorithm: Some(pb::Algorithm {
            name: "grid".into(),
            ..Default::default()
        }),
        template: Some(spec(Vec::new())),
        ..Default::default()
    };
    let mut sweeps = SweepServiceClient::new(ch.clone());
    for _ in 0..5 {
        let r = sweeps
            .create_sweep(authed(
                pb::CreateSweepRequest {
                    spec: Some(grid.clone()),
                    request_id: String::new(),
                },
                key,
            )?)
            .await;
        out.push(("a 4 x 100 grid sweep".into(), code(r)));
    }
    Ok(out)
}

pub async fn run(a: LimitsArgs) -> Result<(), E> {
    let exe = std::env::current_exe().map_err(err)?;
    let tuna: PathBuf = exe
        .parent()
        .map(|d| d.join("tuna"))
        .ok_or("no directory of tuna-bench")?;
    if !tuna.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p tuna",
            tuna.display()
        ));
    }
    let (db, name) = crate::scratch_pg(&a.database_url).await?;
    let dir = tempfile::tempdir().map_err(err)?;
    let port = free_port()?;
    let log = std::fs::File::create(dir.path().join("server.log")).map_err(err)?;
    let server = Proc(
        Command::new(&tuna)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", &db, "--data-dir"])
            .arg(dir.path().join("data"))
            .env("TUNA_API_KEY", ROOT)
            .env("TUNA_WORKER_TOKEN", "bench-worker-token")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(err)?,
    );
    let result = async {
        tokio::task::block_in_place(|| wait_port(port, "tuna server"))?;
        let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .map_err(err)?
            .connect()
            .await
            .map_err(err)?;
        let key_a = new_key(&ch, "flooder").await?;
        let key_b = new_key(&ch, "bystander").await?;
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = rss_sampler(server.0.id(), stop.clone());
        let idle_mib = rss_kib(server.0.id()).unwrap_or(0) as f64 / 1024.0;

        let f = flood(&ch, &key_a, &key_b, a.flood_secs, a.flooders).await?;
        let (held_a, refused_a) = idle_uploads(&ch, &key_a, 100).await?;
        let (held_b, refused_b) = idle_uploads(&ch, &key_b, 100).await?;
        let big = oversized(&ch, &key_b).await?;
        stop.store(true, Ordering::Relaxed);
        let peak_mib = sampler.join().map_err(|_| "RSS sampler panicked")? as f64 / 1024.0;
        Ok::<_, E>((
            f,
            (held_a, refused_a, held_b, refused_b),
            big,
            idle_mib,
            peak_mib,
        ))
    }
    .await;
    drop(server);
    crate::drop_pg(&a.database_url, &name).await;
    let (f, (held_a, refused_a, held_b, refused_b), big, idle_mib, peak_mib) = result?;

    let p50 = pct_ms(&f.latencies, 0.50);
    let p99 = pct_ms(&f.latencies, 0.99);
    println!(
        "flood: key A made {} ListJobs calls from {} loops in {} s, {} refused \
         (RESOURCE_EXHAUSTED){}",
        f.calls,
        a.flooders,
        a.flood_secs,
        f.refused,
        f.other_code
            .map(|c| format!(", other errors too (last {c:?})"))
            .unwrap_or_default()
    );
    println!(
        "       key B: {} GetFile calls, p50 {p50:.2} ms, p99 {p99:.2} ms, {} failed",
        f.latencies.len(),
        f.other_errors
    );
    println!(
        "uploads: 100 idle uploads per key: A held {held_a}, refused {refused_a}; B held \
         {held_b}, refused {refused_b}"
    );
    let mut kinds: Vec<(String, Vec<Code>)> = Vec::new();
    for (what, code) in big {
        match kinds.iter_mut().find(|(w, _)| *w == what) {
            Some((_, codes)) => codes.push(code),
            None => kinds.push((what, vec![code])),
        }
    }
    for (what, codes) in &kinds {
        let mut distinct: Vec<String> = codes.iter().map(|c| format!("{c:?}")).collect();
        distinct.dedup();
        println!(
            "oversized: {} x {what}: {}",
            codes.len(),
            distinct.join(", ")
        );
    }
    let all_refused = kinds
        .iter()
        .all(|(_, codes)| codes.iter().all(|c| *c != Code::Ok && *c != Code::Internal));
    println!("server RSS: idle {idle_mib:.0} MiB, peak {peak_mib:.0} MiB over all phases");
    println!(
        "limits: other key p99 {p99:.1} ms under a flood (target < 100), flood refused {}/{}, \
         oversized all refused: {all_refused}, peak RSS {peak_mib:.0} MiB (target < 300)",
        f.refused, f.calls
    );
    Ok(())
}
