//! Liveness and readiness probes (no authentication, no data).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
}

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
    if store && audit {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "store": if store { "ok" } else { "unreachable" },
                "audit": if audit { "ok" } else { "unwritable" },
            })),
        )
    }
}
