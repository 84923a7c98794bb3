//! gRPC status → HTTP, in one place: the HTTP status a code maps to and the JSON error body,
//! which carries the same field violations (and correlation id) a gRPC client gets.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::CORRELATION_ID_KEY;

/// INVALID_ARGUMENT naming `field`, with the same `google.rpc.BadRequest` detail the services
/// attach, so gRPC and HTTP clients read gateway and service refusals alike.
pub fn invalid_field(field: &str, description: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// The HTTP status of a gRPC code (google.rpc.Code's documented HTTP mapping, with 412 for
/// FAILED_PRECONDITION so a refused state transition is not mistaken for a bad request).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

/// The canonical name of a code (`INVALID_ARGUMENT`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The JSON error body: `{"code", "message", "fieldViolations"?, "reason"?, "correlationId"?}`.
pub fn error_json(status: &Status) -> Value {
    let details = status.get_error_details();
    let violations: Vec<Value> = details
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| json!({"field": v.field, "description": v.description}))
                .collect()
        })
        .unwrap_or_default();
    let mut body = json!({
        "code": code_name(status.code()),
        "message": status.message(),
        "fieldViolations": violations,
    });
    if let Some(info) = details.error_info() {
        body["reason"] = Value::String(info.reason.clone());
    }
    if let Some(id) = status
        .metadata()
        .get(CORRELATION_ID_KEY)
        .and_then(|v| v.to_str().ok())
    {
        body["correlationId"] = Value::String(id.to_string());
    }
    body
}

/// The HTTP response for a failed call.
pub fn error_response(status: &Status) -> Response<Body> {
    let code = http_status(status.code());
    let mut response = json_response(code, error_json(status).to_string().into_bytes());
    if status.code() == Code::Unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(id) = status.metadata().get(CORRELATION_ID_KEY)
        && let Ok(value) = HeaderValue::from_bytes(id.as_bytes())
    {
        response.headers_mut().insert(CORRELATION_ID_KEY, value);
    }
    response
}

/// A JSON response with `code`.
pub fn json_response(code: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::new(http_body_util::Full::new(Bytes::from(body))));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_violations_reach_the_json_body() {
        let body = error_json(&invalid_field(
            "spec.hyperparameters.learning_rate",
            "must be > 0",
        ));
        assert_eq!(body["code"], "INVALID_ARGUMENT");
        assert_eq!(
            body["fieldViolations"][0]["field"],
            "spec.hyperparameters.learning_rate"
        );
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
    }
}
