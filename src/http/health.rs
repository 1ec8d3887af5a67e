//! Liveness and readiness probes (no authentication, no data).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

/// Alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "`{status: ok}`", body = Object)))]
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// This document (OpenAPI 3.1), generated from the routes themselves.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::OPENAPI.get().cloned().unwrap_or_default(),
    )
}

#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")))]
/// Prometheus text exposition. No token: it holds counts, latencies and pool use,
/// labelled by route template, method, status, reason code, cache, role and purpose
/// names only (SECURITY.md says what it reveals and how to keep it in).
async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let (in_use, idle) = state.store.pool_use();
    metrics::gauge!(crate::metrics::POOL_CONNECTIONS, "state" => "in_use").set(in_use as f64);
    metrics::gauge!(crate::metrics::POOL_CONNECTIONS, "state" => "idle").set(idle as f64);
    let handle = crate::metrics::handle();
    handle.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}

#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "`{status: ready}`", body = Object),
        (status = 503, description = "`{status: unavailable, store, audit, keys}`: the store cannot be reached, the trail cannot be written, or the master key source has not confirmed the keys for too long (sealed)", body = Object),
    ))]
/// Ready when the store answers and the audit trail can be written (an empty batch
/// goes through the audit writer). A vault that cannot audit serves nothing, so it is
/// not ready; it becomes ready again by itself once the trail can be written.
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = match state.store.ping().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "store not reachable");
            false
        }
    };
    let audit = store && state.audit.probe().await;
    let keys = !state.vault.keys().0.is_sealed();
    if store && audit && keys {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "store": if store { "ok" } else { "unreachable" },
                "audit": if audit { "ok" } else { "unwritable" },
                "keys": if keys { "ok" } else { "sealed" },
            })),
        )
    }
}
