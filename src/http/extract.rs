//! Extractors: the caller as the pipeline authorised it, and JSON bodies whose parse
//! errors never echo the input.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::{AppState, RequestId};
pub use crate::pipeline::Authorized;
use crate::pipeline::Credentials;

/// What the request says about who is calling, for the pipeline to decide on.
fn credentials(parts: &Parts) -> Credentials<'_> {
    Credentials {
        authorization: parts
            .headers
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("")),
        purpose: parts.headers.get("x-purpose").and_then(|v| v.to_str().ok()),
        request_id: parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.as_str())
            .unwrap_or_default(),
        client: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip()),
    }
}

impl FromRequestParts<AppState> for crate::authz::Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.authenticate(&credentials(parts)).await
    }
}

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.authorize(&credentials(parts)).await
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
