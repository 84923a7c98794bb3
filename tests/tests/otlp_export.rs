//! A real `tuna server` process exports spans and metrics over OTLP gRPC to a collector on
//! loopback when an endpoint is configured (docs/design.md §6.3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Names of the spans and metrics received.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<String>>>,
    metrics: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| s.name));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_exports_request_spans_and_queue_metrics_over_otlp() {
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
