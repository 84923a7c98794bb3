//! Readiness over `grpc.health.v1` follows the database: a real server process reaches a real
//! PostgreSQL through a TCP relay the test cuts and restores (the PostgreSQL server itself is
//! shared with other tests, so the relay is the outage).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tuna_e2e::{ServerProcess, TestDb, setup, worker};

/// A TCP relay to PostgreSQL that can refuse and drop connections.
struct Relay {
    port: u16,
    down: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (d, l) = (down.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused mid-handshake
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut pg) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut pg).await;
                    }
                });
                l.lock().await.push(link);
            }
        });
        Self { port, down, links }
    }

    async fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for link in self.links.lock().await.drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

async fn status(url: &str, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let reply = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

/// Seconds until `service` reports `want` (panics after `limit`).
async fn wait_for(url: &str, service: &str, want: ServingStatus, limit: Duration) -> f64 {
    let start = Instant::now();
    while start.elapsed() < limit {
        if status(url, service).await == Some(want) {
            return start.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} did not become {want:?} within {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_not_serving_during_a_database_outage_and_no_job_is_lost_or_run_twice() {
    let db = TestDb::create().await;
    let relay = Relay::start().await;
    let base = db.url.rsplit_once('/').unwrap();
    let via_relay = format!("postgres://postgres@127.0.0.1:{}/{}", relay.port, base.1);
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--database-url", &via_relay]);
    let url = server.url.clone();
    let jobs = "tuna.v1.JobService";
    wait_for(&url, jobs, ServingStatus::Serving, Duration::from_secs(5)).await;
    // A job trains across the outage.
    let s = setup(&server, dir.path());
    let id = s.create_job(&server, &["--r", "4", "--max-steps", "600"]);
    let _w = worker(&server, dir.path(), "w");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.json(&["jobs", "get", &id])["state"] != "running" {
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    relay.cut().await;
    let took = wait_for(
        &url,
        jobs,
        ServingStatus::NotServing,
        Duration::from_secs(5),
    )
    .await;
    println!("NOT_SERVING {took:.1} s after the database became unreachable");
    // Liveness stays cheap and up.
    assert_eq!(status(&url, "").await, Some(ServingStatus::Serving));
    assert_eq!(
        status(&url, "tuna.v1.WorkerService").await,
        Some(ServingStatus::NotServing)
    );

    relay.restore();
    let took = wait_for(&url, jobs, ServingStatus::Serving, Duration::from_secs(30)).await;
    println!("SERVING {took:.1} s after the database came back");
    // And it serves calls again.
    assert!(server.cli(&["jobs", "list"]).status.success());
    // The job was neither lost nor run twice: it finishes in its first attempt.
    let out = server.cli(&["jobs", "watch", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", server.log_text());
    let job = server.json(&["jobs", "get", &id]);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["attempt"], 1, "{job}");
    let out = server.cli(&["jobs", "events", &id, "--output", "json"]);
    let events = String::from_utf8_lossy(&out.stdout).into_owned();
    let claims = events
        .lines()
        .filter(|l| l.contains("\"kind\":\"claimed\""))
        .count();
    assert_eq!(claims, 1, "claimed more than once: {events}");
    assert!(server.terminate());
    db.drop_db().await;
}
