//! Extractors: the authenticated caller, the purpose it claims, and JSON bodies whose
//! parse errors never echo the input.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::authz::{Caller, TokenError};

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(TokenError::Missing)?;
        let value = header.to_str().map_err(|_| TokenError::Invalid)?;
        let secret = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(TokenError::Invalid)?
            .trim();
        let caller = state.tokens.authenticate(secret).await?;
        tracing::Span::current().record("token", caller.token_id.as_str());
        Ok(caller)
    }
}

/// A caller on a personal-data call, with the purpose it claims in `X-Purpose`.
#[derive(Debug, Clone)]
pub struct DataCaller {
    pub caller: Caller,
    pub purpose: String,
}

/// Roles that never see personal data (SPEC section 4). Until the casbin policy
/// layer lands, this is the only role check on data calls.
const NO_PI_ROLES: &[&str] = &["admin", "auditor"];

impl FromRequestParts<AppState> for DataCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let purpose = parts
            .headers
            .get("x-purpose")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "purpose_missing",
                    "the X-Purpose header is required on data calls",
                )
            })?
            .to_owned();
        if !caller.purposes.contains(&purpose) {
            return Err(ApiError::Forbidden {
                code: "purpose_not_allowed",
                message: "this token may not claim that purpose".into(),
            });
        }
        if NO_PI_ROLES.contains(&caller.role.as_str()) {
            return Err(ApiError::Forbidden {
                code: "policy_denied",
                message: "this role may not access personal data".into(),
            });
        }
        Ok(Self { caller, purpose })
    }
}

/// A JSON body. Errors say where the body is wrong, never what it contained.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request("body_unreadable", "the request body could not be read")
            }
        })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Data => "does not have the expected shape",
                _ => "is not valid JSON",
            };
            ApiError::bad_request(
                "malformed_body",
                format!(
                    "the request body {what} (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })
    }
}
