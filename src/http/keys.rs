//! `/v1/keys`: the key inventory for admins (`pipeline::keys`).

use axum::extract::State;
use axum::Json;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::Authorized;
use super::openapi::{Purpose, Refusals};
use super::AppState;
use crate::pipeline::keys;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Every key version (master versions with their state and the keys each wraps, system
/// keys, data keys per version, trusted audit signing keys); never key material.
#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(Purpose),
    responses((status = 200, description = "`{keys: [{kind, version, algorithm, state, wrapped_by, created_at, destroyed_at, keys, encryptions}], audit: [{kind, key_id, algorithm}]}`", body = Object), Refusals))]
async fn list(State(state): State<AppState>, who: Authorized) -> Result<Json<Value>, ApiError> {
    Ok(Json(keys::list(&state, &who).await?))
}
