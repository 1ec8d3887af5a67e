//! `/v1/subjects/{id}/consents`: grant, withdraw, list with history (`pipeline::consents`).

use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::Value;

use super::error::ApiError;
use super::extract::{ApiJson, Authorized};
use super::AppState;
use crate::pipeline::consents::{self, WithdrawRequest};
use crate::pipl::GrantRequest;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/subjects/{id}/consents", get(list))
        .route(
            "/v1/subjects/{id}/consents/{purpose}",
            put(grant).delete(withdraw),
        )
}

async fn grant(
    State(state): State<AppState>,
    who: Authorized,
    Path((id, purpose)): Path<(String, String)>,
    ApiJson(body): ApiJson<GrantRequest>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        consents::grant(&state, &who, &id, &purpose, &body).await?,
    ))
}

async fn withdraw(
    State(state): State<AppState>,
    who: Authorized,
    Path((id, purpose)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    // The body is optional: `{"channel": "…"}` or nothing.
    let body: WithdrawRequest = if body.iter().all(u8::is_ascii_whitespace) {
        WithdrawRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|_| {
            ApiError::bad_request(
                "malformed_body",
                "the body, if any, is {\"channel\": \"…\"}",
            )
        })?
    };
    Ok(Json(
        consents::withdraw(&state, &who, &id, &purpose, body).await?,
    ))
}

async fn list(
    State(state): State<AppState>,
    who: Authorized,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(consents::list(&state, &who, &id).await?))
}
