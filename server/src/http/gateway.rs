//! The JSON gateway: `/api/<package.Service>/<Method>` → the same RPC, in-process, through the
//! gRPC edge stack. Unary calls take a JSON body (or, with GET, query parameters) and answer
//! JSON; server streams answer server-sent events (or raw bytes for a download); client
//! streams take NDJSON (or raw bytes for an upload, the header as JSON in `Tuna-Header`).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited, StreamBody};
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage, Value};
use tonic::body::Body;
use tonic::client::Grpc;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Status, Streaming};
use tower::util::BoxCloneSyncService;

use super::codec::DynamicCodec;
use super::errors::{error_json, error_response, invalid_field, json_response};
use super::json::{from_body, from_json, from_query, to_header_json, to_json};
use super::openapi;
use super::routes::{ByteFrame, Route, RouteError, RouteTable, Shape};
use crate::edge::auth::Authenticator;
use crate::edge::methods::Audience;

/// The gRPC services behind the edge stack, as the gateway calls them.
pub type GrpcStack = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Largest JSON request body (and NDJSON line).
const MAX_JSON_BODY: usize = 4 << 20;
/// Largest message either way between the gateway and the services.
const MAX_MESSAGE: usize = 64 << 20;
/// A comment line on idle event streams, so proxies do not time them out.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Request headers passed on as gRPC metadata.
const FORWARDED: [&str; 4] = ["authorization", "traceparent", "tracestate", "x-request-id"];
/// The header carrying a raw upload's or download's header message as JSON.
pub const TUNA_HEADER: &str = "tuna-header";

/// The gateway: routes, the services, the OpenAPI document.
#[derive(Clone)]
pub struct Gateway {
    routes: Arc<RouteTable>,
    grpc: GrpcStack,
    openapi: Bytes,
    /// Checked before a body is read, so an anonymous client cannot make the server parse
    /// megabytes of JSON; the edge stack checks again on the call (one rule, two places that
    /// cannot disagree: the same `Authenticator`).
    auth: Authenticator,
}

impl Gateway {
    pub fn new(grpc: GrpcStack, auth: Authenticator) -> Result<Self, RouteError> {
        let routes = RouteTable::client_api()?;
        let openapi = Bytes::from(openapi::document(&routes, auth.api_key.is_set()).to_string());
        Ok(Self {
            routes: Arc::new(routes),
            grpc,
            openapi,
            auth,
        })
    }

    /// Serves `/api/<rpc>`.
    pub async fn serve(&self, rpc: &str, req: Request<Body>) -> Response<Body> {
        if rpc == "openapi.json" {
            return json_response(StatusCode::OK, self.openapi.to_vec());
        }
        let Some(route) = self.routes.get(rpc).cloned() else {
            return error_response(&Status::not_found(format!(
                "no RPC {rpc:?} (the routes are listed in /api/openapi.json)"
            )));
        };
        if req.method() != Method::GET && req.method() != Method::POST {
            let mut response = error_response(&Status::unimplemented(format!(
                "{} is not allowed; use POST (or GET with query parameters)",
                req.method()
            )));
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            return response;
        }
        if let Err(status) = self
            .auth
            .authenticate(Audience::Client, req.headers())
            .await
        {
            return error_response(&status);
        }
        match self.call(&route, req).await {
            Ok(response) => response,
            Err(status) => error_response(&status),
        }
    }

    async fn call(&self, route: &Route, req: Request<Body>) -> Result<Response<Body>, Status> {
        let (parts, body) = req.into_parts();
        let metadata = forwarded_metadata(&parts.headers);
        let mut grpc = Grpc::new(self.grpc.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        if let Err(never) = grpc.ready().await {
            match never {}
        }
        let codec = DynamicCodec::new(route.method.output());
        let path = route.grpc_path.clone();
        match route.shape() {
            Shape::Unary => {
                let message = request_message(route.method.input(), &parts, body).await?;
                let request = tonic::Request::from_parts(metadata, Extensions::default(), message);
                let response = grpc.unary(request, path, codec).await?;
                Ok(json_response(StatusCode::OK, to_json(response.get_ref())?))
            }
            Shape::ServerStream => {
                let message = request_message(route.method.input(), &parts, body).await?;
                let request = tonic::Request::from_parts(metadata, Extensions::default(), message);
                let stream = grpc
                    .server_streaming(request, path, codec)
                    .await?
                    .into_inner();
                match ByteFrame::of(&route.method.output()) {
                    Some(frame) if wants_bytes(&parts.headers) => download(stream, frame).await,
                    _ => Ok(event_stream(stream)),
                }
            }
            Shape::ClientStream => {
                let input = route.method.input();
                let raw = content_type(&parts.headers) == "application/octet-stream";
                let failure = Arc::new(Mutex::new(None));
                let messages = if raw {
                    let frame = ByteFrame::of(&input).ok_or_else(|| {
                        invalid_field(
                            "Content-Type",
                            "this RPC takes NDJSON messages (application/x-ndjson), not raw bytes",
                        )
                    })?;
                    raw_upload(upload_header(&input, &frame, &parts.headers)?, frame, body).boxed()
                } else {
                    ndjson_messages(input, body, failure.clone()).boxed()
                };
                let request = tonic::Request::from_parts(metadata, Extensions::default(), messages);
                let result = grpc.client_streaming(request, path, codec).await;
                // A line the gateway could not decode ended the stream early; that, not the
                // server's complaint about a short stream, is the client's error.
                if let Some(status) = failure.lock().ok().and_then(|mut f| f.take()) {
                    return Err(status);
                }
                Ok(json_response(StatusCode::OK, to_json(result?.get_ref())?))
            }
            Shape::Bidirectional => Err(Status::unimplemented(
                "bidirectional streams are served over gRPC only",
            )),
        }
    }
}

fn forwarded_metadata(headers: &HeaderMap) -> MetadataMap {
    let mut forwarded = HeaderMap::new();
    for name in FORWARDED {
        for value in headers.get_all(name) {
            forwarded.append(name, value.clone());
        }
    }
    MetadataMap::from_headers(forwarded)
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn wants_bytes(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/octet-stream"))
}

/// A unary or server-streaming request: query parameters for GET, else a JSON body.
async fn request_message(
    input: MessageDescriptor,
    parts: &Parts,
    body: Body,
) -> Result<DynamicMessage, Status> {
    if parts.method == Method::GET {
        return from_query(input, parts.uri.query().unwrap_or(""));
    }
    let kind = content_type(&parts.headers);
    // curl's `-d` labels a JSON body as a form; it is read as JSON all the same.
    let json_like = kind.is_empty()
        || kind == "application/json"
        || kind.ends_with("+json")
        || kind == "application/x-www-form-urlencoded";
    if !json_like {
        return Err(invalid_field(
            "Content-Type",
            &format!("{kind:?} is not accepted; send application/json"),
        ));
    }
    let bytes = Limited::new(body, MAX_JSON_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Status::resource_exhausted(format!(
                    "the request body is over the limit of {MAX_JSON_BODY} bytes"
                ))
            } else {
                Status::invalid_argument(format!("reading the request body: {e}"))
            }
        })?
        .to_bytes();
    from_body(input, &bytes)
}

fn sse_event(event: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + event.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// Server-sent events: `message` per message, then `end`, or `error` with the error body.
fn event_stream(mut stream: Streaming<DynamicMessage>) -> Response<Body> {
    let events = async_stream::stream! {
        let start = tokio::time::Instant::now() + KEEPALIVE;
        let mut keepalive = tokio::time::interval_at(start, KEEPALIVE);
        loop {
            tokio::select! {
                next = stream.message() => match next {
                    Ok(Some(message)) => match to_json(&message) {
                        Ok(json) => yield sse_event("message", &json),
                        Err(status) => {
                            yield sse_event("error", error_json(&status).to_string().as_bytes());
                            break;
                        }
                    },
                    Ok(None) => {
                        yield sse_event("end", b"{}");
                        break;
                    }
                    Err(status) => {
                        yield sse_event("error", error_json(&status).to_string().as_bytes());
                        break;
                    }
                },
                _ = keepalive.tick() => yield Bytes::from_static(b": keep-alive\n\n"),
            }
        }
    };
    let body = StreamBody::new(events.map(|b| Ok::<_, Infallible>(http_body::Frame::data(b))));
    let mut response = Response::new(Body::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A byte stream as raw bytes: its header message goes in `Tuna-Header` (and gives the
/// length and file name), the chunks become the body. A failure after the first byte aborts
/// the body, so a client never mistakes a truncated download for a whole one.
async fn download(
    mut stream: Streaming<DynamicMessage>,
    frame: ByteFrame,
) -> Result<Response<Body>, Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::internal("the download ended before its header"))?;
    let Value::Message(header_message) = first.get_field(&frame.header).into_owned() else {
        return Err(Status::internal(
            "the download did not start with its header",
        ));
    };
    let chunk_field = frame.chunk.clone();
    let chunks = async_stream::stream! {
        loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    if let Value::Bytes(bytes) = message.get_field(&chunk_field).into_owned() {
                        yield Ok(http_body::Frame::data(bytes));
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(error = %status, "download failed mid-stream");
                    yield Err(Box::<dyn std::error::Error + Send + Sync>::from(status.message().to_string()));
                    break;
                }
            }
        }
    };
    let mut response = Response::new(Body::new(StreamBody::new(chunks)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&to_header_json(&header_message)?) {
        headers.insert(TUNA_HEADER, value);
    }
    if let Some(Value::I64(size)) = header_message
        .get_field_by_name("size_bytes")
        .map(|v| v.into_owned())
        && size >= 0
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    if let Some(Value::String(name)) = header_message
        .get_field_by_name("name")
        .map(|v| v.into_owned())
    {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(response)
}

/// The first message of a raw upload, from the `Tuna-Header` JSON.
fn upload_header(
    input: &MessageDescriptor,
    frame: &ByteFrame,
    headers: &HeaderMap,
) -> Result<DynamicMessage, Status> {
    let desc = frame
        .header_message()
        .ok_or_else(|| Status::internal("byte frame without a header message"))?;
    let text = headers
        .get(TUNA_HEADER)
        .ok_or_else(|| {
            invalid_field(
                "Tuna-Header",
                &format!(
                    "a raw upload needs its {} as JSON in the Tuna-Header header",
                    desc.name()
                ),
            )
        })?
        .to_str()
        .map_err(|_| {
            invalid_field(
                "Tuna-Header",
                "must be ASCII JSON (escape other characters as \\uXXXX)",
            )
        })?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| invalid_field("Tuna-Header", &format!("not a JSON document: {e}")))?;
    let header = from_json(desc, value, "Tuna-Header")?;
    let mut first = DynamicMessage::new(input.clone());
    first.set_field(&frame.header, Value::Message(header));
    Ok(first)
}

/// A raw body as chunk messages of at most [`tuna_proto::CHUNK_SIZE`] after `first`. A body
/// that breaks off ends the stream short, which the service refuses (size mismatch).
fn raw_upload(
    first: DynamicMessage,
    frame: ByteFrame,
    mut body: Body,
) -> impl Stream<Item = DynamicMessage> + Send + 'static {
    let input = first.descriptor();
    let chunk = move |bytes: Bytes| {
        let mut message = DynamicMessage::new(input.clone());
        message.set_field(&frame.chunk, Value::Bytes(bytes));
        message
    };
    async_stream::stream! {
        yield first;
        let mut pending = BytesMut::new();
        while let Some(next) = body.frame().await {
            let Ok(next) = next else { break };
            if let Ok(data) = next.into_data() {
                pending.extend_from_slice(&data);
                while pending.len() >= tuna_proto::CHUNK_SIZE {
                    yield chunk(pending.split_to(tuna_proto::CHUNK_SIZE).freeze());
                }
            }
        }
        if !pending.is_empty() {
            yield chunk(pending.freeze());
        }
    }
}

/// An NDJSON body as messages; the first bad line is recorded in `failure` (with its line
/// number) and ends the stream.
fn ndjson_messages(
    input: MessageDescriptor,
    mut body: Body,
    failure: Arc<Mutex<Option<Status>>>,
) -> impl Stream<Item = DynamicMessage> + Send + 'static {
    let fail = move |status: Status| {
        if let Ok(mut slot) = failure.lock() {
            *slot = Some(status);
        }
    };
    async_stream::stream! {
        let mut pending = BytesMut::new();
        let mut line_number = 0usize;
        let mut done = false;
        while !done {
            match body.frame().await {
                Some(Ok(next)) => {
                    if let Ok(data) = next.into_data() {
                        pending.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) => break,
                None => done = true,
            }
            loop {
                let end = pending.iter().position(|b| *b == b'\n');
                let line = match end {
                    Some(i) => pending.split_to(i + 1).freeze(),
                    None if done && !pending.is_empty() => pending.split().freeze(),
                    None => break,
                };
                line_number += 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match from_body(input.clone(), &line) {
                    Ok(message) => yield message,
                    Err(status) => {
                        fail(invalid_field(
                            &format!("line {line_number}"),
                            status.message(),
                        ));
                        return;
                    }
                }
            }
            if pending.len() > MAX_JSON_BODY {
                fail(Status::resource_exhausted(format!(
                    "NDJSON line {} is over the limit of {MAX_JSON_BODY} bytes",
                    line_number + 1
                )));
                return;
            }
        }
    }
}
