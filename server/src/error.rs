//! Errors of the API layer and their one mapping to gRPC status codes.
//!
//! Libraries below the API (store, blobs, dataset validation) return their own typed errors;
//! handlers convert them into [`ApiError`] with `?`, and [`ApiError`] becomes a
//! [`tonic::Status`] here and nowhere else.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::blobs::BlobError;
use crate::dataset::DatasetError;
use crate::store::StoreError;

pub use crate::domain::spec::FieldViolation;

/// Stable `ErrorInfo.reason` for a fenced write from a worker that lost its lease.
pub const REASON_LEASE_LOST: &str = "LEASE_LOST";
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
}

fn describe(v: &[FieldViolation]) -> String {
    let parts: Vec<String> = v
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

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        let message = err.to_string();
        match err {
            ApiError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in &violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
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
            ApiError::Blob(e) => match e {
                BlobError::NotFound(_) => Status::not_found(message),
                _ => {
                    tracing::error!(error = %e, "blob store error");
                    Status::internal(message)
                }
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
        other => {
            tracing::error!(error = %other, "internal store error");
            Status::internal(message)
        }
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    )
}
