//! HTTP beside gRPC, on the same port: the JSON gateway under `/api/` (every client RPC, in
//! protobuf's JSON mapping, server-sent events for streams, raw bytes for uploads and
//! downloads), its OpenAPI document, and the web dashboard at `/`.
//!
//! HTTP requests are told apart by path before the gRPC edge stack; the gateway then calls the
//! same services *through* that stack in-process, so authentication, deadlines, the concurrency
//! cap and per-RPC metrics apply to an HTTP call exactly once, as to a gRPC one.

mod codec;
mod dashboard;
mod dispatch;
mod errors;
mod gateway;
mod json;
mod openapi;
mod routes;

pub use dispatch::{Dispatch, HttpLayer};
pub use gateway::GrpcStack;
pub use routes::RouteError;
