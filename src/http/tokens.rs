//! `/v1/tokens`: issue, list and revoke bearer tokens (`pipeline::tokens`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde_json::Value;

use super::error::ApiError;
use super::extract::{ApiJson, Authorized};
use super::AppState;
use crate::pipeline::tokens::{self, IssueInput};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tokens", post(issue).get(list))
        .route("/v1/tokens/{id}", delete(revoke))
}

async fn issue(
    State(state): State<AppState>,
    who: Authorized,
    ApiJson(body): ApiJson<IssueInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(tokens::issue(&state, &who, body).await?),
    ))
}

async fn list(State(state): State<AppState>, who: Authorized) -> Result<Json<Value>, ApiError> {
    Ok(Json(tokens::list(&state, &who).await?))
}

async fn revoke(
    State(state): State<AppState>,
    who: Authorized,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(tokens::revoke(&state, &who, &id).await?))
}
