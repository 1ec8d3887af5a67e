//! Extractors: the caller as the pipeline authorised it, and JSON bodies whose parse
//! errors never echo the input.

use std::net::{IpAddr, SocketAddr};

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
        request_id: request_id(parts),
        client: client(parts),
    }
}

/// The id the request-id middleware gave this request ("" before it has run).
pub(crate) fn request_id(parts: &Parts) -> &str {
    parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.as_str())
        .unwrap_or_default()
}

/// The address of the peer that sent the request, if the server recorded it.
pub(crate) fn client(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
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

/// How much of a body over the limit is still read (and thrown away) before the 413 is
/// sent. A server that answers without reading what the client is still sending closes
/// a socket with unread data in it, the kernel resets the connection, and the client
/// sees a broken connection instead of the 413. Past this much the client is cut off.
const DRAIN_BYTES: usize = 16 << 20;

/// Reads a whole request body of at most `limit` bytes. A longer one is read on (and
/// thrown away) up to [`DRAIN_BYTES`] before `payload_too_large` is answered.
pub(super) async fn read_limited(
    body: axum::body::Body,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let mut body = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            if timed_out(&e) {
                // The connection went silent for its idle timeout in mid-body.
                ApiError::RequestTimeout
            } else {
                ApiError::bad_request("body_unreadable", "the request body could not be read")
            }
        })?;
        if bytes.len() + chunk.len() > limit {
            let mut seen = bytes.len() + chunk.len();
            while seen <= DRAIN_BYTES {
                match body.next().await {
                    Some(Ok(more)) => seen += more.len(),
                    _ => break,
                }
            }
            return Err(ApiError::PayloadTooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Whether a body error comes from a connection's timeout.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A JSON body. Errors say where the body is wrong, never what it contained.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // The router's body-first layer has already read the body and held it to the
        // limit; here it is only taken.
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

/// A query string. Errors are JSON like every other refusal and never echo the input.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| ApiQuery(q))
            .map_err(|_| {
                ApiError::bad_request(
                    "malformed_query",
                    "the query string does not have the expected parameters or values",
                )
            })
    }
}

/// Path parameters, refused as JSON when they cannot be read (not UTF-8, say).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| ApiPath(p))
            .map_err(|_| ApiError::bad_request("malformed_path", "the path cannot be read"))
    }
}
