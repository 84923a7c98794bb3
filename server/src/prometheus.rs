//! Prometheus text exposition on its own port (`--metrics-listen`, `[telemetry]
//! metrics_listen`), beside the OTLP push: queue depth by state and device and workers by
//! device are read from the store at scrape time (never stale), and the counters and
//! histograms are recorded by [`crate::metrics::ServiceMetrics`] as events happen.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::domain::JobState;
use crate::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateDevice {
    state: String,
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RpcLabels {
    pub method: String,
    pub code: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn durations() -> Histogram {
    // 1 s .. ~36 h
    Histogram::new(exponential_buckets(1.0, 2.0, 18))
}

/// Workers seen this recently count as up.
const WORKER_RECENT_MS: i64 = 120_000;

/// The registry and its series.
pub struct Prometheus {
    registry: Registry,
    jobs: Family<StateDevice, Gauge>,
    workers: Family<DeviceLabel, Gauge>,
    pub(crate) finished: Family<StateLabel, Counter>,
    pub(crate) job_seconds: HistogramFamily<StateLabel>,
    pub(crate) claim_seconds: Histogram,
    pub(crate) retries: Counter,
    pub(crate) lease_losses: Counter,
    pub(crate) rpc_calls: Family<RpcLabels, Counter>,
    pub(crate) rpc_seconds: HistogramFamily<RpcLabels>,
    pub(crate) tokens_per_s: Histogram,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prometheus")
    }
}

impl Default for Prometheus {
    fn default() -> Self {
        Self::new()
    }
}

impl Prometheus {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tuna");
        let jobs = Family::<StateDevice, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs by state and device (state=queued is the queue depth), read at scrape time",
            jobs.clone(),
        );
        let workers = Family::<DeviceLabel, Gauge>::default();
        registry.register(
            "workers",
            "Workers seen in the last two minutes, by device",
            workers.clone(),
        );
        let finished = Family::<StateLabel, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs that reached a terminal state",
            finished.clone(),
        );
        let job_seconds: HistogramFamily<StateLabel> = Family::new_with_constructor(durations);
        registry.register(
            "job_duration_seconds",
            "From first claim to the terminal state",
            job_seconds.clone(),
        );
        let claim_seconds = latency();
        registry.register(
            "claim_duration_seconds",
            "One claim attempt of AcquireJob against the store",
            claim_seconds.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "job_retries",
            "SYSTEM failures that put a job back in the queue for another attempt",
            retries.clone(),
        );
        let lease_losses = Counter::default();
        registry.register(
            "leases_lost",
            "Leases that expired without a heartbeat (worker lost)",
            lease_losses.clone(),
        );
        let rpc_calls = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_server_calls",
            "gRPC and JSON API calls, by method and status code",
            rpc_calls.clone(),
        );
        let rpc_seconds: HistogramFamily<RpcLabels> = Family::new_with_constructor(latency);
        registry.register(
            "rpc_server_duration_seconds",
            "Call latency (a stream's whole duration), by method and status code",
            rpc_seconds.clone(),
        );
        let tokens_per_s = Histogram::new(exponential_buckets(10.0, 2.0, 16));
        registry.register(
            "worker_tokens_per_second",
            "Training throughput reported by workers",
            tokens_per_s.clone(),
        );
        Self {
            registry,
            jobs,
            workers,
            finished,
            job_seconds,
            claim_seconds,
            retries,
            lease_losses,
            rpc_calls,
            rpc_seconds,
            tokens_per_s,
        }
    }

    /// Reads the gauges from the store, then encodes everything.
    pub async fn render(&self, store: &dyn Store) -> Result<String, String> {
        let counts = within_scrape(store.count_jobs()).await?;
        let workers = within_scrape(store.list_workers(Some(WORKER_RECENT_MS), 1_000)).await?;
        self.jobs.clear();
        // Every state of every device in use, zeros included, so queries need no `or vector(0)`.
        let mut devices: Vec<String> = counts.iter().map(|(_, d, _)| d.clone()).collect();
        devices.push("any".into());
        devices.sort();
        devices.dedup();
        for device in &devices {
            for state in JobState::ALL {
                self.jobs
                    .get_or_create(&StateDevice {
                        state: state.as_str().into(),
                        device: device.clone(),
                    })
                    .set(0);
            }
        }
        for (state, device, n) in counts {
            self.jobs
                .get_or_create(&StateDevice {
                    state: state.as_str().into(),
                    device,
                })
                .set(n);
        }
        self.workers.clear();
        for w in workers {
            self.workers
                .get_or_create(&DeviceLabel {
                    device: w.worker.device,
                })
                .inc();
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// A store read bounded so a scrape answers (with an error) while the database hangs.
async fn within_scrape<T>(
    read: impl std::future::Future<Output = crate::store::Result<T>>,
) -> Result<T, String> {
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| "the store did not answer within 5 s".to_string())?
        .map_err(|e| e.to_string())
}

/// Serves `GET /metrics` on `listener` until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    prometheus: Arc<Prometheus>,
    store: Arc<dyn Store>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (prometheus, store) = (prometheus.clone(), store.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (prometheus, store) = (prometheus.clone(), store.clone());
                async move { Ok::<_, Infallible>(respond(&req, &prometheus, store.as_ref()).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

async fn respond<B>(
    req: &Request<B>,
    prometheus: &Prometheus,
    store: &dyn Store,
) -> Response<Full<bytes::Bytes>> {
    let reply = |code: StatusCode, kind: &'static str, body: String| {
        let mut r = Response::new(Full::new(bytes::Bytes::from(body)));
        *r.status_mut() = code;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(kind));
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "see /metrics\n".into());
    }
    match prometheus.render(store).await {
        Ok(text) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "metrics scrape failed");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "the store is unavailable\n".into(),
            )
        }
    }
}
