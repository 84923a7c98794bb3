//! Service metrics (docs/design.md §6.3): queue depth, finished jobs, job durations, worker
//! throughput, lease losses, and per-RPC counts and latencies (recorded by the edge layer). Instruments come from the global OpenTelemetry meter, which is
//! a no-op until `telemetry::init` installs an OTLP exporter, so recording is always cheap.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, ObservableGauge};
use opentelemetry::{KeyValue, StringValue};

use crate::domain::JobState;
use crate::prometheus::{Prometheus, RpcLabels, StateLabel};
use crate::store::Store;

/// The control plane's instruments.
#[derive(Clone)]
pub struct ServiceMetrics {
    finished: Counter<u64>,
    job_seconds: Histogram<f64>,
    tokens_per_s: Histogram<f64>,
    lease_losses: Counter<u64>,
    rpc_calls: Counter<u64>,
    rpc_seconds: Histogram<f64>,
    depth: Arc<Mutex<BTreeMap<&'static str, i64>>>,
    _depth_gauge: Arc<ObservableGauge<i64>>,
    /// The same events for the Prometheus endpoint.
    prom: Arc<Prometheus>,
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServiceMetrics {
    pub fn new() -> Self {
        let meter = opentelemetry::global::meter("tuna");
        let depth: Arc<Mutex<BTreeMap<&'static str, i64>>> = Arc::default();
        let read = depth.clone();
        let gauge = meter
            .i64_observable_gauge("tuna.jobs.by_state")
            .with_description("Jobs per state (queued = queue depth), sampled from the store")
            .with_callback(move |obs| {
                if let Ok(depth) = read.lock() {
                    for (state, n) in depth.iter() {
                        obs.observe(*n, &[KeyValue::new("state", *state)]);
                    }
                }
            })
            .build();
        Self {
            finished: meter
                .u64_counter("tuna.jobs.finished")
                .with_description("Attempts that ended a job, by final state")
                .build(),
            job_seconds: meter
                .f64_histogram("tuna.job.duration")
                .with_unit("s")
                .with_description("From first claim to the terminal state")
                .build(),
            tokens_per_s: meter
                .f64_histogram("tuna.worker.tokens_per_s")
                .with_description("Training throughput reported by workers")
                .build(),
            lease_losses: meter
                .u64_counter("tuna.leases.lost")
                .with_description("Leases that expired without a heartbeat (worker lost)")
                .build(),
            rpc_calls: meter
                .u64_counter("tuna.rpc.server.calls")
                .with_description("gRPC calls handled, by method and status code")
                .build(),
            rpc_seconds: meter
                .f64_histogram("tuna.rpc.server.duration")
                .with_unit("s")
                .with_description(
                    "gRPC call latency (a stream's whole duration), by method and status code",
                )
                .build(),
            depth,
            _depth_gauge: Arc::new(gauge),
            prom: Arc::new(Prometheus::new()),
        }
    }

    /// The Prometheus registry these metrics also record into.
    pub fn prometheus(&self) -> Arc<Prometheus> {
        self.prom.clone()
    }

    /// One claim attempt against the store took `seconds`.
    pub fn claim_finished(&self, seconds: f64) {
        self.prom.claim_seconds.observe(seconds);
    }

    /// A SYSTEM failure put a job back in the queue.
    pub fn retry_scheduled(&self) {
        self.prom.retries.inc();
    }

    /// A job reached a terminal state; `seconds` since its first claim when known.
    pub fn job_finished(&self, state: JobState, seconds: Option<f64>) {
        let attrs = [KeyValue::new("state", state.as_str())];
        self.finished.add(1, &attrs);
        let label = StateLabel {
            state: state.as_str().into(),
        };
        self.prom.finished.get_or_create(&label).inc();
        if let Some(s) = seconds {
            self.job_seconds.record(s, &attrs);
            self.prom.job_seconds.get_or_create(&label).observe(s);
        }
    }

    /// A gRPC call ended with `code` after `seconds`.
    pub fn rpc_finished(&self, method: Arc<str>, code: tonic::Code, seconds: f64) {
        let method_name = method.clone();
        let attrs = [
            KeyValue::new("rpc.method", StringValue::from(method)),
            KeyValue::new("rpc.grpc.status_code", code as i64),
        ];
        self.rpc_calls.add(1, &attrs);
        self.rpc_seconds.record(seconds, &attrs);
        let labels = RpcLabels {
            method: method_name.to_string(),
            code: format!("{code:?}"),
        };
        self.prom.rpc_calls.get_or_create(&labels).inc();
        self.prom
            .rpc_seconds
            .get_or_create(&labels)
            .observe(seconds);
    }

    pub fn tokens_per_s(&self, value: f64) {
        self.tokens_per_s.record(value, &[]);
        self.prom.tokens_per_s.observe(value);
    }

    pub fn leases_lost(&self, n: u64) {
        if n > 0 {
            self.lease_losses.add(n, &[]);
            self.prom.lease_losses.inc_by(n);
        }
    }

    fn set_depth(&self, counts: Vec<(JobState, String, i64)>) {
        if let Ok(mut depth) = self.depth.lock() {
            for s in JobState::ALL {
                depth.insert(s.as_str(), 0);
            }
            for (s, _device, n) in counts {
                *depth.entry(s.as_str()).or_insert(0) += n;
            }
        }
    }
}

/// Samples jobs per state from the store for the gauge (the gauge callback must not block).
pub async fn sample_forever(store: Arc<dyn Store>, metrics: ServiceMetrics, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.count_jobs().await {
            Ok(counts) => metrics.set_depth(counts),
            Err(e) => tracing::warn!(error = %e, "sampling queue depth failed"),
        }
    }
}
