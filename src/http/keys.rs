//! `/v1/keys`: the key inventory and rotations for admins (`pipeline::keys`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{ApiJson, Authorized};
use super::openapi::{Purpose, Refusals, RotateBody};
use super::AppState;
use crate::pipeline::keys;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(rotate))
}

/// Every key version (master versions with their state and the keys each wraps, system
/// keys, data keys per version, trusted audit signing keys); never key material.
#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(Purpose),
    responses((status = 200, description = "`{keys: [{kind, version, algorithm, state, wrapped_by, created_at, destroyed_at, keys, encryptions, items}], audit: [{kind, key_id, algorithm}], retired_data_keys, items_under_retired_keys, reencryption_cursor}`", body = Object), Refusals))]
async fn list(State(state): State<AppState>, who: Authorized) -> Result<Json<Value>, ApiError> {
    Ok(Json(keys::list(&state, &who).await?))
}

/// Start a rotation inside the server: `data` re-encrypts every value and record under
/// new data keys, `master` wraps every key again under a new master-key version,
/// `blind_index` indexes every subject again under a new blind-index key,
/// `token_hash` adds a token-hash key (issued tokens stay valid and move to it as they
/// are used; `piivault keys retire --token-hash` removes the old one later). It
/// runs in the background in audited batches (under this request's token and id);
/// `GET /v1/keys` shows its progress. Interrupted by a restart, it resumes when started
/// again.
#[utoipa::path(post, path = "/v1/keys/rotations", tag = "keys", params(Purpose), request_body = RotateBody,
    responses(
        (status = 202, description = "`{kind, batch, max_rate, started: true}`", body = Object),
        (status = 400, description = "Codes: `unknown_rotation`, `invalid_rotation`", body = super::openapi::ErrorBody),
        (status = 409, description = "Code: `rotation_running` (one started on this node is still running)", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn rotate(
    State(state): State<AppState>,
    who: Authorized,
    ApiJson(body): ApiJson<keys::RotateInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(keys::rotate(&state, &who, body).await?),
    ))
}
