//! One API error type, mapped to a status and a stable machine code at the edge.
//! The internal cause is logged (inside the request's span, which carries the request
//! id); the client gets `{"error": {"code", "message"[, "field"]}}` and never a value.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::authz::TokenError;
use crate::classify::ValidationError;
use crate::vault::VaultError;

#[derive(Debug)]
pub enum ApiError {
    Unauthorized {
        code: &'static str,
        message: &'static str,
    },
    Forbidden {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    TooManyFailures {
        retry_after: u64,
    },
    NotFound {
        code: &'static str,
        message: &'static str,
    },
    Invalid(ValidationError),
    BadRequest {
        code: &'static str,
        message: String,
    },
    PayloadTooLarge,
    Unavailable,
    /// The audit event could not be written: nothing is handed out or changed.
    AuditUnavailable,
    /// A stored ciphertext failed authentication: answered as an error, never as data.
    Integrity,
    Internal(String),
}

impl ApiError {
    pub fn subject_not_found() -> Self {
        Self::NotFound {
            code: "subject_not_found",
            message: "no such subject",
        }
    }

    /// Denied by the access policy; names the field or object when there is one.
    pub fn denied(message: impl Into<String>, field: Option<&str>) -> Self {
        Self::Forbidden {
            code: "policy_denied",
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }
}

impl From<crate::audit::AuditError> for ApiError {
    fn from(e: crate::audit::AuditError) -> Self {
        tracing::error!(error = %e, "audit event not written; failing closed");
        Self::AuditUnavailable
    }
}

/// The stable reason code an audit event records for a failed operation.
pub fn reason_code(e: &VaultError) -> &'static str {
    match e {
        VaultError::NotFound => "subject_not_found",
        VaultError::UnknownCollection => "collection_not_found",
        VaultError::Invalid(v) => v.rule,
        VaultError::Integrity { .. } => "integrity_error",
        VaultError::Audit(_) => "audit_unavailable",
        _ => "internal",
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NotFound => Self::NotFound {
                code: "subject_not_found",
                message: "no such subject",
            },
            VaultError::UnknownCollection => Self::NotFound {
                code: "collection_not_found",
                message: "no such record collection in the classification",
            },
            VaultError::Invalid(v) => Self::Invalid(v),
            VaultError::Integrity { .. } => Self::Integrity,
            VaultError::Audit(a) => a.into(),
            VaultError::Store(crate::store::StoreError::Db(sqlx::Error::PoolTimedOut)) => {
                Self::Unavailable
            }
            other => Self::internal(other),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Missing => Self::Unauthorized {
                code: "token_missing",
                message: "an Authorization: Bearer token is required",
            },
            TokenError::Invalid => Self::Unauthorized {
                code: "token_invalid",
                message: "the bearer token is not valid",
            },
            TokenError::Expired => Self::Unauthorized {
                code: "token_expired",
                message: "the bearer token has expired",
            },
            TokenError::Revoked => Self::Unauthorized {
                code: "token_revoked",
                message: "the bearer token has been revoked",
            },
            TokenError::BadRequest(m) => Self::bad_request("invalid_token_request", m),
            TokenError::Store(crate::store::StoreError::Db(sqlx::Error::PoolTimedOut)) => {
                Self::Unavailable
            }
            TokenError::Store(s) => Self::internal(s),
            TokenError::Audit(a) => a.into(),
        }
    }
}

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
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than the vault accepts".to_owned(),
                None,
            ),
            Self::Unavailable => {
                tracing::error!("store unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the vault cannot reach its store; try again later".to_owned(),
                    None,
                )
            }
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
