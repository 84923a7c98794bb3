//! Logging and tracing for Tuna's processes (server, worker, demo): `tracing` everywhere, OTLP
//! export of spans and metrics when the `[telemetry]` section names an endpoint (docs/design.md §6.3),
//! and the shutdown signal every long-running command drains on. A crate of its own so the
//! worker side sets up logging without linking the control plane.

pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use tuna_config::{LogFormat, Telemetry};

/// Keeps the OTLP pipelines alive; dropping it flushes pending spans and metrics.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.provider.take().map(|p| p.shutdown()) {
            eprintln!("tuna: flushing traces failed: {e}");
        }
        if let Some(Err(e)) = self.meters.take().map(|p| p.shutdown()) {
            eprintln!("tuna: flushing metrics failed: {e}");
        }
    }
}

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
}

/// Installs the global subscriber: `RUST_LOG`-style filtering (`RUST_LOG` when set, else
/// `config.log_filter`), text or JSON logs on stderr, and OTLP export of spans and metrics when
/// `config.otlp_endpoint` is not empty. Calling it twice is harmless (the second call keeps the
/// first subscriber).
pub fn init(service_name: &str, config: &Telemetry) -> Result<TelemetryGuard, TelemetryError> {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_filter));
    let fmt = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        // Colour only for a terminal: escape codes in a log file or collector are noise.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let endpoint = config.otlp_endpoint.as_str();
    let mut provider = None;
    let mut meters = None;
    let otel = if endpoint.is_empty() {
        None
    } else {
        let exporter_error = |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        };
        let resource = Resource::builder()
            .with_service_name(service_name.to_string())
            .build();
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(exporter_error)?;
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(exporter_error)?;
        let mp = SdkMeterProvider::builder()
            .with_periodic_exporter(metrics)
            .with_resource(resource.clone())
            .build();
        opentelemetry::global::set_meter_provider(mp.clone());
        meters = Some(mp);
        let p = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource)
            .build();
        let tracer = p.tracer("tuna");
        provider = Some(p);
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(filter()),
        )
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(TelemetryGuard { provider, meters })
}

/// Makes aws-lc-rs (with post-quantum key exchange) the process's TLS crypto provider
/// (idempotent). Call before building a TLS server config: tonic links ring and the S3
/// client aws-lc-rs, and rustls refuses to guess between two.
pub fn install_tls_provider() {
    // Err means a provider is installed already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
