//! The pipeline's errors as HTTP answers: a status and `{"error": {"code", "message"
//! [, "field"]}}`. The internal cause is logged (inside the request's span, which
//! carries the request id); the client never gets a stack trace or a value.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

pub use crate::pipeline::Error as ApiError;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
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
                let body = json!({ "error": {
                    "code": "too_many_failures",
                    "message": "too many bad tokens from this address; slow down",
                }});
                let mut resp = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
                if let Ok(v) = axum::http::HeaderValue::from_str(&retry_after.to_string()) {
                    resp.headers_mut()
                        .insert(axum::http::header::RETRY_AFTER, v);
                }
                return resp;
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
        let mut body = json!({ "error": { "code": code, "message": message } });
        if let Some(field) = field {
            body["error"]["field"] = json!(field);
        }
        (status, Json(body)).into_response()
    }
}
