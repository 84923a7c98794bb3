//! W3C trace context (`traceparent`) across processes: the CLI and SDK put it in gRPC metadata,
//! the server continues the caller's trace, stores it with a job, and the worker that claims
//! the job continues it again, so one trace holds submit, claim, training and upload.
//!
//! Without an OTLP endpoint no span has an OpenTelemetry context, so nothing is injected and
//! extraction yields an empty context: the helpers cost nothing then.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The longest `traceparent` accepted from outside (version 00 is 55 characters).
const MAX_TRACEPARENT: usize = 128;

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= MAX_TRACEPARENT)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Adds the current span's `traceparent` to outgoing gRPC metadata (a no-op when untraced).
pub fn inject_current(metadata: &mut MetadataMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

/// Makes `span` continue the trace named by incoming HTTP/2 headers, if any (malformed or
/// oversized values are ignored: a client cannot break the server's tracing).
pub fn continue_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The current span's `traceparent`, to store with work that continues later elsewhere.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` continue the trace of a stored `traceparent` (ignored when malformed).
pub fn continue_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if traceparent.len() > MAX_TRACEPARENT {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx: Context = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
