//! Provisions to recipients, deletion notices, the recipient registry and transfers
//! abroad over HTTP (`pipeline::provisions`): the handlers translate; the pipeline
//! decides and audits.

use axum::extract::State;
use axum::Json;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Authorized};
use super::openapi::{ProvideBody, Purpose, Refusals};
use super::AppState;
use crate::pipeline::provisions::{self, NoticesQuery, ProvideInput};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(provide))
        .routes(routes!(recipients))
        .routes(routes!(notices))
        .routes(routes!(delivered))
        .routes(routes!(abroad))
        .routes(routes!(inventory))
        .routes(routes!(pipia))
}

type Answer = Result<Json<Value>, ApiError>;

/// Provide a subject's fields and records to a registered recipient: the values come
/// back to the caller, who passes them on; the provision is recorded and audited first.
/// Refused unless the recipient is registered for the purpose (`X-Purpose`) and for
/// every field and collection, the policy allows `provide` on each, the subject is not
/// under a legal hold, the purpose's consent is in force, and, for an independent
/// recipient or one abroad, the subject's separate consent `recipient:ID`.
#[utoipa::path(post, path = "/v1/subjects/{id}/provisions", tag = "provisions",
    params(("id" = String, Path, description = "Subject id"), Purpose),
    request_body = ProvideBody,
    responses(
        (status = 200, description = "`{id, recipient, purpose, fields: {name: {value, masked}}, records?: {collection: [...]}}`", body = Object),
        (status = 400, description = "Codes: `nothing_to_provide`, `unknown_collection`", body = super::openapi::ErrorBody),
        (status = 403, description = "Codes: `recipient_not_registered`, `recipient_purpose_not_registered`, `recipient_field_not_registered` (names it), `recipient_consent_missing`, `legal_hold`, `consent_missing`, `consent_outdated`, `separate_consent_missing`, `guardian_consent_missing`", body = super::openapi::ErrorBody),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        (status = 422, description = "Code: `unknown_field`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn provide(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ProvideInput>,
) -> Answer {
    Ok(Json(provisions::provide(&state, &who, &id, &body).await?))
}

/// The recipient registry and PIPIA records in force (`policies/recipients.toml`,
/// `policies/pipia.toml`).
#[utoipa::path(get, path = "/v1/recipients", tag = "provisions", params(Purpose),
    responses((status = 200, description = "`{recipients: {id: {name, kind, region, purposes, fields, collections, contract, pipia, transfer_mechanism, transfer_reference}}, pipia: {id: {date, conclusion, reviewer}}}`", body = Object), Refusals))]
async fn recipients(State(state): State<AppState>, who: Authorized) -> Answer {
    Ok(Json(provisions::registry(&state, &who).await?))
}

/// Deletion notices owed to recipients (made when a subject they received data of is
/// erased, or withdraws the consent they received it under), oldest first.
#[utoipa::path(get, path = "/v1/deletion-notices", tag = "provisions",
    params(
        ("pending" = Option<bool>, Query, description = "Only notices not yet delivered (default true)"),
        ("recipient" = Option<String>, Query, description = "Only this recipient's"),
        ("after" = Option<i64>, Query, description = "Notices after this id"),
        ("limit" = Option<i64>, Query, description = "At most this many (1 to 1000, default 100)"),
        Purpose,
    ),
    responses(
        (status = 200, description = "`{notices: [{id, subject_id, recipient, reason, purpose, created_at, delivered_at, delivered_by}]}`", body = Object),
        (status = 400, description = "Code: `invalid_limit`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn notices(
    State(state): State<AppState>,
    who: Authorized,
    ApiQuery(q): ApiQuery<NoticesQuery>,
) -> Answer {
    Ok(Json(provisions::notices(&state, &who, &q).await?))
}

/// Mark a deletion notice delivered: the recipient has been told.
#[utoipa::path(post, path = "/v1/deletion-notices/{id}/delivered", tag = "provisions",
    params(("id" = i64, Path, description = "Notice id"), Purpose),
    responses(
        (status = 200, description = "`{id, delivered: true}`", body = Object),
        (status = 404, description = "Code: `notice_not_found`", body = super::openapi::ErrorBody),
        (status = 409, description = "Code: `notice_delivered`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn delivered(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<i64>,
) -> Answer {
    Ok(Json(provisions::delivered(&state, &who, id).await?))
}

/// Subjects whose personal information went abroad in a calendar year (mainland time),
/// sensitive and not, against the thresholds that change the transfer mechanism
/// required, with a warning from 80% of each.
#[utoipa::path(get, path = "/v1/transfers/abroad", tag = "provisions",
    params(("year" = Option<i32>, Query, description = "Default: this year"), Purpose),
    responses(
        (status = 200, description = "`{year, subjects_sensitive, subjects_non_sensitive, subjects, thresholds, warnings}`", body = Object),
        (status = 400, description = "Code: `invalid_year`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn abroad(
    State(state): State<AppState>,
    who: Authorized,
    ApiQuery(q): ApiQuery<YearQuery>,
) -> Answer {
    Ok(Json(provisions::abroad(&state, &who, q.year).await?))
}

/// The record of processing activities (PIPL Art. 54-56) for the policy in force: each
/// purpose with its legal basis, the categories, fields and collections it uses and
/// their retention, the recipients (and regions abroad) they may go to, and its PIPIA.
/// The same as `piivault inventory --json`.
#[utoipa::path(get, path = "/v1/inventory", tag = "provisions", params(Purpose),
    responses((status = 200, description = "`{policy, purposes: [{purpose, description, legal_basis, automated_decision, refusable, pipia, categories: [{category, sensitive, items: [{name, kind, sensitive, derived, retention_days}]}], recipients, abroad}]}`", body = Object), Refusals))]
async fn inventory(State(state): State<AppState>, who: Authorized) -> Answer {
    Ok(Json(provisions::inventory(&state, &who).await?))
}

/// Every PIPIA record the vault has kept (PIPL Art. 56: at least three years): each
/// version of each record any policy held, also after its removal from pipia.toml.
#[utoipa::path(get, path = "/v1/pipia", tag = "provisions", params(Purpose),
    responses((status = 200, description = "`{pipia: [{id, date, conclusion, reviewer, archived_at}]}`", body = Object), Refusals))]
async fn pipia(State(state): State<AppState>, who: Authorized) -> Answer {
    Ok(Json(provisions::pipia_archive(&state, &who).await?))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct YearQuery {
    year: Option<i32>,
}
