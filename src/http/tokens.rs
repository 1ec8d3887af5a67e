//! `/v1/tokens`: issue, list and revoke bearer tokens (admin only).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{ApiJson, Authorized};
use super::AppState;
use crate::authz::IssueRequest;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tokens", post(issue).get(list))
        .route("/v1/tokens/{id}", delete(revoke))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    role: String,
    purposes: Vec<String>,
    ttl_seconds: u64,
    #[serde(default)]
    description: String,
}

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
async fn issue(
    State(state): State<AppState>,
    who: Authorized,
    ApiJson(body): ApiJson<IssueBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let event = who.event("token.issue");
    who.require(&state, "tokens", "admin", event.clone())
        .await?;
    let (info, secret) = state
        .tokens
        .issue(
            IssueRequest {
                role: body.role,
                purposes: body.purposes,
                ttl: Duration::from_secs(body.ttl_seconds),
                description: body.description,
                created_by: who.caller.token_id.clone(),
            },
            &who.policy,
            event,
        )
        .await?;
    tracing::info!(token = %info.id, token_role = %info.role, "token issued");
    let mut answer = serde_json::to_value(&info).map_err(ApiError::internal)?;
    answer["token"] = json!(secret.as_str());
    Ok((StatusCode::CREATED, Json(answer)))
}

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
async fn list(State(state): State<AppState>, who: Authorized) -> Result<Json<Value>, ApiError> {
    let event = who.event("token.list");
    who.require(&state, "tokens", "admin", event.clone())
        .await?;
    state.audit.record_one(event).await?;
    let tokens = state.tokens.list().await?;
    Ok(Json(json!({ "tokens": tokens })))
}

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, purpose = %who.purpose, token_id = %id))]
async fn revoke(
    State(state): State<AppState>,
    who: Authorized,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let event = who.event("token.revoke").target(&id);
    who.require(&state, "tokens", "admin", event.clone())
        .await?;
    if state.tokens.revoke(&id, event.clone()).await? {
        tracing::info!("token revoked");
        Ok(Json(json!({ "id": id, "revoked": true })))
    } else {
        state
            .audit
            .record_one(event.outcome(crate::audit::Decision::Error, "token_not_found"))
            .await?;
        Err(ApiError::NotFound {
            code: "token_not_found",
            message: "no active token with that id",
        })
    }
}
