//! A real `tuna server` process exports spans and metrics over OTLP gRPC to a collector on
//! loopback when an endpoint is configured (docs/design.md §6.3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};
use tuna_e2e::ServerProcess;

/// A received span: the exporting service, its trace id and its name.
#[derive(Clone, Debug)]
struct SpanSeen {
    service: String,
    trace: Vec<u8>,
    name: String,
}

/// Names of the spans and metrics received.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Vec<SpanSeen>>>,
    metrics: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        let mut seen = self.seen.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    seen.push(SpanSeen {
                        service: service.clone(),
                        trace: span.trace_id.clone(),
                        name: span.name.clone(),
                    });
                    spans.push(span.name);
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut metrics = self.metrics.lock().unwrap();
        for rm in request.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                metrics.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Starts an OTLP gRPC receiver on loopback; returns it and its endpoint URL.
async fn start_collector() -> (Collector, String) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let serving = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(serving.clone()))
            .add_service(MetricsServiceServer::new(serving))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (collector, endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_exports_request_spans_and_queue_metrics_over_otlp() {
    let (collector, endpoint) = start_collector().await;

    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with_env(dir.path(), &[], &[("TUNA_OTLP_ENDPOINT", &endpoint)]);
    assert_eq!(
        server.json(&["jobs", "list"])["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // Give the queue-depth sampler its first tick, then shut down: that flushes both pipelines.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.terminate());

    let spans = collector.spans.lock().unwrap().clone();
    assert!(
        spans.iter().any(|s| s == "grpc"),
        "request spans: {spans:?}"
    );
    let metrics = collector.metrics.lock().unwrap().clone();
    assert!(
        metrics.iter().any(|m| m == "tuna.jobs.by_state"),
        "metrics: {metrics:?}"
    );
}

/// W3C trace context travels client → server → worker: the CLI's `traceparent` is continued by
/// the server, stored with the job, handed to the worker in its lease, and sent back on the
/// worker's calls, so submit, claim, sampled training steps and the upload form one trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_client_server_and_worker_for_one_job() {
    let (collector, endpoint) = start_collector().await;
    let dir = tempfile::tempdir().unwrap();
    let otlp = [("TUNA_OTLP_ENDPOINT", endpoint.as_str())];
    let server = ServerProcess::start_with_env(dir.path(), &[], &otlp);
    let s = tuna_e2e::setup(&server, dir.path());
    let out = Command::new(tuna_e2e::tuna_bin())
        .args(s.create_args(&["--r", "4", "--max-steps", "120", "--output", "json"]))
        .env("TUNA_SERVER", &server.url)
        .envs(otlp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let mut worker = Command::new(tuna_e2e::tuna_bin())
        .args([
            "worker",
            "--name",
            "traced",
            "--max-jobs",
            "1",
            "--cache-dir",
        ])
        .arg(dir.path().join("cache"))
        .env("TUNA_SERVER", &server.url)
        .envs(otlp)
        .stderr(std::fs::File::create(dir.path().join("worker.log")).unwrap())
        .spawn()
        .unwrap();
    // The worker exits after its one job; that flushes its spans.
    let deadline = Instant::now() + Duration::from_secs(180);
    while worker.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the worker did not finish its job"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(server.json(&["jobs", "get", &id])["state"], "succeeded");
    assert!(server.terminate());

    let seen = collector.seen.lock().unwrap().clone();
    let submit = seen
        .iter()
        .find(|s| s.name == "cli" && s.service.contains("tuna-cli"))
        .unwrap_or_else(|| panic!("no CLI span: {seen:?}"));
    let trace: Vec<&SpanSeen> = seen.iter().filter(|s| s.trace == submit.trace).collect();
    let has = |service: &str, name: &str| {
        trace
            .iter()
            .any(|s| s.service.contains(service) && s.name == name)
    };
    for (service, name) in [
        ("tuna-server", "create_job"),
        ("tuna-server", "claim"),
        ("tuna-worker", "job"),
        ("tuna-worker", "train_step"),
        ("tuna-worker", "upload_artifact"),
        ("tuna-server", "upload_artifact"),
        ("tuna-server", "complete_job"),
    ] {
        assert!(
            has(service, name),
            "no {name} span of {service} in the job's trace: {trace:?}"
        );
    }
}
