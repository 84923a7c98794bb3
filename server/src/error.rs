//! Errors of the API layer and their one mapping to gRPC status codes.
//!
//! Libraries below the API (store, blobs, dataset validation) return their own typed errors;
//! handlers convert them into [`ApiError`] (or straight into [`tonic::Status`]) with `?`, and
//! [`ApiError`] becomes a [`tonic::Status`] here and nowhere else.
//!
//! An internal failure (a database or blob store error nobody anticipated) is logged in full
//! under a fresh correlation id, and the client gets only that id: error text from SQL drivers
//! and file systems names tables, queries and paths that are no business of API callers.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::blobs::BlobError;
use crate::dataset::DatasetError;
use crate::store::StoreError;

pub use crate::domain::spec::FieldViolation;

/// Stable `ErrorInfo.reason` for a fenced write from a worker that lost its lease.
pub const REASON_LEASE_LOST: &str = "LEASE_LOST";
/// Response metadata key carrying the correlation id of an internal error.
pub const CORRELATION_ID_KEY: &str = "x-tuna-correlation-id";
const ERROR_DOMAIN: &str = "tuna.dev";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Blob(#[from] BlobError),
    #[error("{0}")]
    Dataset(#[from] DatasetError),
    #[error("sha256 mismatch: the header declared {declared} but the bytes hash to {actual}")]
    DigestMismatch { declared: String, actual: String },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Unavailable(String),
    /// Authenticated, but this credential may not do that (the message says why).
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is well formed but the resource is not in a state that allows it.
    #[error("{0}")]
    Precondition(String),
    /// A limit on concurrent use was reached (the message names it).
    #[error("{0}")]
    Exhausted(String),
    /// A stream went silent past its idle deadline.
    #[error("{0}")]
    Idle(String),
}

/// Most field violations one error carries; past it a last one says how many more there
/// were, so a request with 100k bad entries cannot make a response of megabytes.
pub const MAX_VIOLATIONS: usize = 32;
/// Most bytes of field names and descriptions one error carries. The message (percent-encoded,
/// so up to 3× larger) and the details (base64) both travel in HTTP/2 headers, which clients
/// cap at 16 KiB in all: past that the client sees an h2 protocol error instead.
pub const MAX_VIOLATION_BYTES: usize = 2 << 10;
/// Longest field name or description returned (longer ones are cut on a char boundary).
const MAX_VIOLATION_TEXT: usize = 256;

fn clip(s: &str) -> String {
    if s.len() <= MAX_VIOLATION_TEXT {
        return s.to_string();
    }
    let mut end = MAX_VIOLATION_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The violations a client is sent: at most [`MAX_VIOLATIONS`] of at most
/// [`MAX_VIOLATION_BYTES`] in all, each clipped, then one counting the rest.
pub fn bounded(v: &[FieldViolation]) -> Vec<FieldViolation> {
    let mut out: Vec<FieldViolation> = Vec::new();
    let mut bytes = 0;
    for f in v.iter().take(MAX_VIOLATIONS) {
        let f = FieldViolation {
            field: clip(&f.field),
            description: clip(&f.description),
        };
        bytes += f.field.len() + f.description.len();
        if bytes > MAX_VIOLATION_BYTES {
            break;
        }
        out.push(f);
    }
    if v.len() > out.len() {
        out.push(FieldViolation::new(
            "request",
            format!(
                "{} more violations not shown (at most {MAX_VIOLATIONS} are returned)",
                v.len() - out.len()
            ),
        ));
    }
    out
}

fn describe(v: &[FieldViolation]) -> String {
    let parts: Vec<String> = bounded(v)
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect();
    format!("invalid request: {}", parts.join("; "))
}

impl ApiError {
    /// A single invalid field.
    pub fn field(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<Vec<FieldViolation>> for ApiError {
    fn from(v: Vec<FieldViolation>) -> Self {
        Self::InvalidArgument(v)
    }
}

/// Lets handlers write a plain `?` on store, blob and dataset results.
macro_rules! status_via_api_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Status {
            fn from(err: $t) -> Status {
                ApiError::from(err).into()
            }
        }
    )*};
}
status_via_api_error!(StoreError, BlobError, DatasetError);

/// A fresh id tying a client's INTERNAL error to the server's log line.
pub fn correlation_id() -> String {
    format!("err_{:016x}", rand::random::<u64>())
}

/// Logs `err` in full under a fresh correlation id; the client sees only the id, in the
/// message and in the [`CORRELATION_ID_KEY`] metadata.
pub fn internal(what: &str, err: &dyn std::fmt::Display) -> Status {
    let id = correlation_id();
    tracing::error!(correlation_id = %id, error = %err, "{what}");
    let mut status = Status::internal(format!("internal error (correlation id {id})"));
    if let Ok(value) = id.parse() {
        status.metadata_mut().insert(CORRELATION_ID_KEY, value);
    }
    status
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        let message = err.to_string();
        match err {
            ApiError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in bounded(&violations) {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ApiError::Dataset(e) => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation("content", e.to_string());
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ApiError::DigestMismatch { .. } => Status::new(Code::DataLoss, message),
            ApiError::Unauthenticated(_) => Status::unauthenticated(message),
            ApiError::Unavailable(_) => Status::unavailable(message),
            ApiError::PermissionDenied(_) => Status::permission_denied(message),
            ApiError::Precondition(_) => Status::failed_precondition(message),
            ApiError::Exhausted(_) => Status::resource_exhausted(message),
            ApiError::Idle(_) => Status::deadline_exceeded(message),
            ApiError::Blob(e) => match e {
                BlobError::NotFound(_) => Status::not_found(message),
                _ => internal("blob store error", &e),
            },
            ApiError::Store(e) => store_status(e, message),
        }
    }
}

fn store_status(err: StoreError, message: String) -> Status {
    match err {
        StoreError::NotFound { .. } => Status::not_found(message),
        StoreError::InvalidTransition { .. }
        | StoreError::SweepFinished { .. }
        | StoreError::SweepConflict { .. }
        | StoreError::FileInUse { .. }
        | StoreError::InUse { .. } => Status::failed_precondition(message),
        StoreError::AlreadyExists { .. } => Status::already_exists(message),
        StoreError::LeaseLost { .. } => {
            let mut details = ErrorDetails::new();
            details.set_error_info(
                REASON_LEASE_LOST,
                ERROR_DOMAIN,
                std::collections::HashMap::<String, String>::new(),
            );
            Status::with_error_details(Code::FailedPrecondition, message, details)
        }
        StoreError::IdempotencyConflict { .. } => Status::already_exists(message),
        StoreError::Database(ref e) if is_unavailable(e) => {
            tracing::warn!(error = %e, "database unavailable");
            Status::unavailable("database unavailable, retry later")
        }
        other => internal("internal store error", &other),
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    )
}
