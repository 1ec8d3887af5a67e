//! The HTTP API: one router per domain, merged here; request ids, body limits, TLS.

mod audit;
mod consents;
mod dsr;
mod error;
mod extract;
mod health;
mod subjects;
pub mod tls;
mod tokens;

pub use error::ApiError;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tracing::Instrument;

use std::path::PathBuf;
use std::sync::Arc;

use crate::audit::Audit;
use crate::authz::{FailureLimiter, Policy, Tokens};
use crate::crypto::{random_id, AuditPublicKey};
use crate::store::Store;
use crate::vault::Vault;

/// What every handler can reach: one `Arc`, so that the per-extractor clone axum makes
/// is a single reference count.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of the vault the HTTP layer reaches.
#[derive(Debug)]
pub struct Shared {
    pub vault: Vault,
    pub tokens: Tokens,
    pub store: Store,
    pub audit: Audit,
    pub consents: crate::pipl::Consents,
    pub requests: crate::pipl::Requests,
    /// Public keys that verify audit checkpoints.
    pub trusted_keys: Arc<Vec<AuditPublicKey>>,
    pub checkpoint_file: PathBuf,
    pub reports: Arc<crate::audit::Reports>,
    pub policy: Arc<Policy>,
    pub limiter: Arc<FailureLimiter>,
}

impl Shared {
    pub async fn verify_audit(&self) -> anyhow::Result<crate::audit::VerifyReport> {
        crate::verify_trail(&self.store, &self.trusted_keys, &self.checkpoint_file).await
    }
}

/// The request id, as logged and as sent back in `X-Request-Id`.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Gives every request an id and a span that carries it (so that whatever is logged
/// while serving it can be matched with the audit trail), and marks every response
/// `Cache-Control: no-store`. The access log line is DEBUG unless `access_log` asks for
/// one compact INFO line per request: per-request logging stays off the hot path.
async fn request_context(access_log: bool, mut req: Request, next: Next) -> Response {
    let id = random_id("req");
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        token = tracing::field::Empty,
    );
    let start = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed_us = start.elapsed().as_micros() as u64;
    if access_log {
        span.in_scope(
            || tracing::info!(target: "piivault::access", status, elapsed_us, "request done"),
        );
    } else {
        span.in_scope(
            || tracing::debug!(target: "piivault::access", status, elapsed_us, "request done"),
        );
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert("x-request-id", value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A subject id from a path or body; a malformed id is simply a subject that does not exist.
fn subject_id(raw: &str) -> Result<crate::vault::SubjectId, ApiError> {
    crate::vault::SubjectId::parse(raw).ok_or_else(ApiError::subject_not_found)
}

/// The whole API. `access_log`: one INFO line per request (else DEBUG).
pub fn router(state: AppState, max_body_bytes: usize, access_log: bool) -> Router {
    Router::new()
        .merge(health::router())
        .merge(subjects::router())
        .merge(tokens::router())
        .merge(audit::router())
        .merge(consents::router())
        .merge(dsr::router())
        .fallback(|| async {
            ApiError::NotFound {
                code: "not_found",
                message: "no such endpoint",
            }
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            request_context(access_log, req, next)
        }))
        .with_state(state)
}
