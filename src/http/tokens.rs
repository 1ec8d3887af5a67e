//! `/v1/tokens`: issue, list and revoke bearer tokens (`pipeline::tokens`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, Authorized};
use super::openapi::{IssueBody, Purpose, Refusals};
use super::AppState;
use crate::pipeline::tokens::{self, IssueInput};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(issue, list))
        .routes(routes!(revoke))
}

/// Issue a token for a role and purposes; the secret is in this answer only.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", params(Purpose), request_body = IssueBody,
    responses(
        (status = 201, description = "`{id, token, role, purposes, expires_at}`", body = Object),
        (status = 400, description = "Codes: `invalid_token_request`, `unknown_purpose`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
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

/// Every token (ids, roles, purposes, expiry, revocation; never a secret).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(Purpose),
    responses((status = 200, description = "`{tokens: [...]}`", body = Object), Refusals))]
async fn list(State(state): State<AppState>, who: Authorized) -> Result<Json<Value>, ApiError> {
    Ok(Json(tokens::list(&state, &who).await?))
}

/// Revoke a token: refused on this node at once, on every node within the cache bound.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id (`tok_…`)"), Purpose),
    responses(
        (status = 200, description = "`{id, revoked: true}`", body = Object),
        (status = 404, description = "Code: `token_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn revoke(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(tokens::revoke(&state, &who, &id).await?))
}
