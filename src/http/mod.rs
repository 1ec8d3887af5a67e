//! The HTTP API: one router per domain, merged here; request ids, body limits, TLS.

mod audit;
pub mod conn;
mod consents;
mod dsr;
mod error;
pub(crate) mod extract;
mod health;
mod keys;
pub mod openapi;
mod provisions;
mod subjects;
pub mod tls;
mod tokens;

pub use error::{ApiError, Described};

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tracing::Instrument;

use std::sync::Arc;

use crate::crypto::random_id;
use crate::pipeline::Pipeline;

/// What every handler can reach: the request pipeline, behind one `Arc` so that the
/// per-extractor clone axum makes is a single reference count.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Pipeline>);

impl AppState {
    pub fn new(pipeline: Pipeline) -> Self {
        Self(Arc::new(pipeline))
    }
}

impl std::ops::Deref for AppState {
    type Target = Pipeline;

    fn deref(&self) -> &Pipeline {
        &self.0
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
    // The route template (`/v1/subjects/{id}`), never the path: a path holds ids.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    // The route template, not the path: a path holds subject ids, which stay out of logs.
    let span = tracing::info_span!(
        "request",
        request_id = id.as_str(),
        method = method.as_str(),
        route = route.as_str(),
        token = tracing::field::Empty,
    );
    let start = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    crate::metrics::http_request(&route, &method, status, elapsed);
    let elapsed_us = elapsed.as_micros() as u64;
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

/// The OpenAPI document, as served (built with the first router).
static OPENAPI: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The routes and their OpenAPI document, from the same handlers.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(health::router())
        .merge(subjects::router())
        .merge(tokens::router())
        .merge(keys::router())
        .merge(audit::router())
        .merge(consents::router())
        .merge(dsr::router())
        .merge(provisions::router())
        .split_for_parts()
}

/// Reads every request's body (up to the limit) before any handler or extractor sees
/// the request. An answer given before the body is read (a refused token, a 403, a 413)
/// would otherwise close a connection with unread data in it, which the kernel turns
/// into a reset, and the client would see a broken connection instead of the answer.
/// A body that has not arrived within `timeout` is answered `408 request_timeout`, so a
/// client trickling it cannot hold the connection.
async fn body_first(
    limit: usize,
    timeout: std::time::Duration,
    req: Request,
    next: Next,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(timeout, extract::read_limited(body, limit)).await;
    match read {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(refused)) => axum::response::IntoResponse::into_response(refused),
        Err(_) => {
            let mut answer = axum::response::IntoResponse::into_response(ApiError::RequestTimeout);
            // The rest of the body will not be read: say the connection ends here.
            answer
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            answer
        }
    }
}

/// How the API reads requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// The whole body must arrive within this.
    pub body_timeout: std::time::Duration,
}

/// The whole API. `access_log`: one INFO line per request (else DEBUG).
pub fn router(state: AppState, limits: Limits, access_log: bool) -> Router {
    let Limits {
        max_body_bytes,
        body_timeout,
    } = limits;
    let (routes, doc) = routes();
    OPENAPI.get_or_init(|| doc.to_json().unwrap_or_default());
    routes
        .merge(crate::console::router())
        .fallback(|| async {
            ApiError::NotFound {
                code: "not_found",
                message: "no such endpoint",
            }
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            body_first(max_body_bytes, body_timeout, req, next)
        }))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            request_context(access_log, req, next)
        }))
        .with_state(state)
}
