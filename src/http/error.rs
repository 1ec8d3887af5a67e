//! The pipeline's errors as HTTP answers: a status and `{"error": {"code", "message"
//! [, "field"]}}`. The internal cause is logged (inside the request's span, which
//! carries the request id); the client never gets a stack trace or a value.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

pub use crate::pipeline::Error as ApiError;

/// What an answer to a refused or failed request says: its status, stable code and
/// message (never a value), the field at fault and, for `too_many_failures`, when to
/// try again. The API sends it as JSON, the console as a page.
#[derive(Debug)]
pub struct Described {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// The answer to send; an internal cause is logged here, never sent.
    pub fn describe(self) -> Described {
        let (status, code, message, field) = match self {
            Self::Unauthorized { code, message } => {
                (StatusCode::UNAUTHORIZED, code, message.to_owned(), None)
            }
            Self::Forbidden {
                code,
                message,
                field,
            } => (StatusCode::FORBIDDEN, code, message, field),
            Self::TooManyFailures { retry_after } => {
                return Described {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    code: "too_many_failures",
                    message: "too many bad tokens from this address; slow down".to_owned(),
                    field: None,
                    retry_after: Some(retry_after),
                };
            }
            Self::NotFound { code, message } => {
                (StatusCode::NOT_FOUND, code, message.to_owned(), None)
            }
            Self::Invalid(v) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                v.rule,
                format!("{}: {}", v.field, v.message),
                Some(v.field),
            ),
            Self::BadRequest { code, message } => (StatusCode::BAD_REQUEST, code, message, None),
            Self::Conflict { code, message } => (StatusCode::CONFLICT, code, message, None),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than the vault accepts".to_owned(),
                None,
            ),
            Self::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time".to_owned(),
                None,
            ),
            Self::Unavailable => {
                tracing::debug!("store unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the vault cannot reach its store; try again later".to_owned(),
                    None,
                )
            }
            Self::KeyUnavailable => {
                tracing::error!("a master key version the data needs is not loaded on this node; add it to the key source");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "key_unavailable",
                    "the vault cannot unwrap this data's key on this node; try again later"
                        .to_owned(),
                    None,
                )
            }
            Self::NotConfigured { code, message } => {
                (StatusCode::SERVICE_UNAVAILABLE, code, message, None)
            }
            Self::Sealed => (
                StatusCode::SERVICE_UNAVAILABLE,
                "key_unavailable",
                "the vault's master key source (HSM or key service) has not confirmed its keys lately, so it serves nothing; try again later".to_owned(),
                None,
            ),
            Self::AuditUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the vault cannot write its audit trail, so it answers nothing; try again later"
                    .to_owned(),
                None,
            ),
            Self::Integrity => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "integrity_error",
                "stored data failed its integrity check; the incident was logged".to_owned(),
                None,
            ),
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the incident was logged".to_owned(),
                    None,
                )
            }
        };
        Described {
            status,
            code,
            message,
            field,
            retry_after: None,
        }
    }
}

impl Described {
    /// `Retry-After`, when the answer asks the client to wait.
    pub fn retry_header(&self, response: &mut Response) {
        if let Some(v) = self
            .retry_after
            .and_then(|s| axum::http::HeaderValue::from_str(&s.to_string()).ok())
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let d = self.describe();
        let mut body = json!({ "error": { "code": d.code, "message": d.message } });
        if let Some(field) = &d.field {
            body["error"]["field"] = json!(field);
        }
        let mut response = (d.status, Json(body)).into_response();
        d.retry_header(&mut response);
        response
    }
}
