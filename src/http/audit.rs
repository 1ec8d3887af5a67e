//! `/v1/audit`: verification of the trail and the public key that checks it (auditors).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::Authorized;
use super::AppState;
use crate::audit::Decision;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/audit/verify", get(verify))
        .route("/v1/audit/public-key", get(public_key))
}

#[tracing::instrument(skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
async fn verify(State(state): State<AppState>, who: Authorized) -> Result<Json<Value>, ApiError> {
    let event = who.event("audit.verify");
    who.require(&state, "audit_trail", "audit", event.clone())
        .await?;
    let report = state.verify_audit().await.map_err(ApiError::internal)?;
    let event = if report.ok {
        event
    } else {
        event.outcome(Decision::Allow, "trail_broken")
    };
    state.audit.record_one(event).await?;
    if !report.ok {
        tracing::error!(first_bad_seq = ?report.first_bad_seq, reason = ?report.reason, "audit trail verification failed");
    }
    Ok(Json(
        serde_json::to_value(report).map_err(ApiError::internal)?,
    ))
}

async fn public_key(
    State(state): State<AppState>,
    who: Authorized,
) -> Result<Json<Value>, ApiError> {
    who.require(
        &state,
        "audit_trail",
        "audit",
        who.event("audit.public_key"),
    )
    .await?;
    let keys: Vec<Value> = state
        .trusted_keys
        .iter()
        .map(|k| json!({ "key_id": k.key_id(), "public_key": k.to_text() }))
        .collect();
    Ok(Json(json!({ "keys": keys })))
}
