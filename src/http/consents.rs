//! `/v1/subjects/{id}/consents`: grant, withdraw, list with history (`pipeline::consents`).

use axum::extract::State;
use axum::Json;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, Authorized};
use super::openapi::{GrantBody, Purpose, Refusals, WithdrawBody};
use super::AppState;
use crate::pipeline::consents::{self, WithdrawRequest};
use crate::pipl::GrantRequest;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(grant, withdraw))
}

/// Record a consent to a purpose (PIPL Art. 14).
#[utoipa::path(put, path = "/v1/subjects/{id}/consents/{purpose}", tag = "consents",
    params(("id" = String, Path, description = "Subject id"), ("purpose" = String, Path, description = "A declared purpose"), Purpose),
    request_body = GrantBody,
    responses(
        (status = 200, description = "The consent as recorded", body = Object),
        (status = 400, description = "Code: `unknown_purpose`", body = super::openapi::ErrorBody),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn grant(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath((id, purpose)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<GrantRequest>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        consents::grant(&state, &who, &id, &purpose, &body).await?,
    ))
}

/// Withdraw a consent (PIPL Art. 15): reads for that purpose stop at once.
#[utoipa::path(delete, path = "/v1/subjects/{id}/consents/{purpose}", tag = "consents",
    params(("id" = String, Path, description = "Subject id"), ("purpose" = String, Path, description = "A declared purpose"), Purpose),
    request_body(content = Option<WithdrawBody>, description = "Optional: the channel it came in by"),
    responses(
        (status = 200, description = "The consent as withdrawn", body = Object),
        (status = 404, description = "Codes: `subject_not_found`, `consent_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn withdraw(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath((id, purpose)): ApiPath<(String, String)>,
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

/// A subject's consents, current state and history.
#[utoipa::path(get, path = "/v1/subjects/{id}/consents", tag = "consents",
    params(("id" = String, Path, description = "Subject id"), Purpose),
    responses(
        (status = 200, description = "`{consents: [...], history: [...]}`", body = Object),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn list(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(consents::list(&state, &who, &id).await?))
}
