//! Data-subject requests, legal holds and the export bundle over HTTP
//! (`pipeline::dsr`): the handlers translate; the pipeline decides and audits.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Authorized};
use super::openapi::{HoldBody, Purpose, Refusals, RequestBody, UpdateBody};
use super::AppState;
use crate::pipeline::dsr::{
    self, BulkExport, BulkExportInput, CreateRequest, DeceasedRequest, ExplainQuery, HoldRequest,
    InstructionsRequest, ListQuery, UpdateRequest,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update))
        .routes(routes!(export))
        .routes(routes!(processing))
        .routes(routes!(access_history))
        .routes(routes!(explanation))
        .routes(routes!(deceased))
        .routes(routes!(instructions))
        .routes(routes!(bulk_export))
        .routes(routes!(fetch_bulk_export))
        .routes(routes!(approve_bulk_export))
        .routes(routes!(place_hold, lift_hold))
}

type Answer = Result<Json<Value>, ApiError>;

/// Record a data-subject request; its due date counts working days.
#[utoipa::path(post, path = "/v1/requests", tag = "requests", params(Purpose), request_body = RequestBody,
    responses(
        (status = 201, description = "The request with its id and due date", body = Object),
        (status = 400, description = "Code: `invalid_request_kind`", body = super::openapi::ErrorBody),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        (status = 403, description = "Codes: `subject_not_deceased`, `relatives_refused_by_subject` (a close relative's request, Art. 49)", body = super::openapi::ErrorBody),
        (status = 503, description = "Code: `calendar_missing`: the due date falls in a year policies/holidays.toml has no calendar for (add it, or set dsr_calendar_fallback)", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn create(
    State(state): State<AppState>,
    who: Authorized,
    ApiJson(body): ApiJson<CreateRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(dsr::create(&state, &who, &body).await?),
    ))
}

/// The request queue, oldest due first.
#[utoipa::path(get, path = "/v1/requests", tag = "requests",
    params(("overdue" = Option<bool>, Query, description = "Only unfinished requests past their due date"), Purpose),
    responses((status = 200, description = "`{requests: [...]}`", body = Object), Refusals))]
async fn list(
    State(state): State<AppState>,
    who: Authorized,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Answer {
    Ok(Json(dsr::list(&state, &who, &q).await?))
}

/// One request.
#[utoipa::path(get, path = "/v1/requests/{id}", tag = "requests",
    params(("id" = String, Path, description = "Request id (`dsr_…`)"), Purpose),
    responses(
        (status = 200, description = "The request", body = Object),
        (status = 404, description = "Code: `request_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn show(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
) -> Answer {
    Ok(Json(dsr::show(&state, &who, &id).await?))
}

/// Move a request on (`in_progress`, `completed`, `rejected` with a reason).
#[utoipa::path(patch, path = "/v1/requests/{id}", tag = "requests",
    params(("id" = String, Path, description = "Request id"), Purpose), request_body = UpdateBody,
    responses(
        (status = 200, description = "The request as updated", body = Object),
        (status = 400, description = "Code: `bad_transition`", body = super::openapi::ErrorBody),
        (status = 404, description = "Code: `request_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn update(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateRequest>,
) -> Answer {
    Ok(Json(dsr::update(&state, &who, &id, &body).await?))
}

/// The portable bundle, as a download named after the subject id (never after PI).
/// Everything held about a subject, decrypted, with its consents and access history
/// (PIPL Art. 45), as a JSON attachment.
#[utoipa::path(get, path = "/v1/subjects/{id}/export", tag = "requests",
    params(("id" = String, Path, description = "Subject id"), Purpose),
    responses(
        (status = 200, description = "The export bundle (JSON, as an attachment)", body = Object),
        (status = 403, description = "Code: `legal_hold`", body = super::openapi::ErrorBody),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn export(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let bundle = dsr::export(&state, &who, &id).await?;
    let subject = bundle["subject"].as_str().unwrap_or("subject").to_owned();
    let disposition = format!("attachment; filename=\"{subject}-export.json\"");
    Ok(([(header::CONTENT_DISPOSITION, disposition)], Json(bundle)).into_response())
}

/// Place a legal hold (PIPL Art. 47 ¶2): storage only until it is lifted.
#[utoipa::path(put, path = "/v1/subjects/{id}/hold", tag = "requests",
    params(("id" = String, Path, description = "Subject id"), Purpose), request_body = HoldBody,
    responses(
        (status = 200, description = "`{id, hold: case}`", body = Object),
        (status = 400, description = "Code: `invalid_case`", body = super::openapi::ErrorBody),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn place_hold(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<HoldRequest>,
) -> Answer {
    Ok(Json(dsr::place_hold(&state, &who, &id, &body).await?))
}

/// Lift a legal hold.
#[utoipa::path(delete, path = "/v1/subjects/{id}/hold", tag = "requests",
    params(("id" = String, Path, description = "Subject id"), Purpose),
    responses(
        (status = 200, description = "`{id, hold: null}`", body = Object),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn lift_hold(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
) -> Answer {
    Ok(Json(dsr::lift_hold(&state, &who, &id).await?))
}

/// The processing rules that apply to a subject (PIPL Art. 48): purposes and their legal
/// basis (applying or not), consents in force, retention of its fields and collections,
/// legal hold, recipients its data was provided to. No value.
#[utoipa::path(get, path = "/v1/subjects/{id}/processing", tag = "requests",
    params(("id" = String, Path, description = "Subject id"), Purpose),
    responses(
        (status = 200, description = "`{id, legal_hold, purposes: [{purpose, description, legal_basis, version, applies, consent}], consents, fields: [{field, category, sensitive, retention_days}], collections, provided_to: [{recipient, name, kind, region, purposes, fields, collections, last_provided}]}`", body = Object),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn processing(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
) -> Answer {
    Ok(Json(dsr::processing(&state, &who, &id).await?))
}

/// A subject's access history (PIPL Art. 45), as the export bundle holds it: when, by
/// which role, what, which field, for what purpose, the outcome. No value, no token or
/// request id.
#[utoipa::path(get, path = "/v1/subjects/{id}/access-history", tag = "requests",
    params(("id" = String, Path, description = "Subject id"), Purpose),
    responses(
        (status = 200, description = "`{id, access_history: [{time, by_role, action, field, purpose, decision}]}`", body = Object),
        (status = 404, description = "Code: `subject_not_found` (not a subject id)", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn access_history(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
) -> Answer {
    Ok(Json(dsr::access_history(&state, &who, &id).await?))
}

/// An explanation for the subject (PIPL Art. 24): what a purpose is for, its legal basis,
/// whether it decides by automated evaluation, whether it applies to the subject now,
/// and which of the subject's fields (marked derived or given) and which collections it
/// uses. No value.
#[utoipa::path(get, path = "/v1/subjects/{id}/explanation", tag = "requests",
    params(
        ("id" = String, Path, description = "Subject id"),
        ("purpose" = String, Query, description = "A declared purpose"),
        Purpose,
    ),
    responses(
        (status = 200, description = "`{id, purpose, description, legal_basis, automated_decision, applies, why_not, fields_used: [{field, description, category, sensitive, derived}], collections_used}`", body = Object),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        (status = 422, description = "Code: `unknown_purpose`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn explanation(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExplainQuery>,
) -> Answer {
    Ok(Json(dsr::explanation(&state, &who, &id, &q).await?))
}

/// Record that a subject has died (PIPL Art. 49), with the reference of the evidence:
/// from then on a close relative may make requests for it (access, copy, correction,
/// deletion), unless the subject refused that while alive.
#[utoipa::path(put, path = "/v1/subjects/{id}/deceased", tag = "requests",
    params(("id" = String, Path, description = "Subject id"), Purpose),
    request_body = super::openapi::DeceasedBody,
    responses(
        (status = 200, description = "`{id, deceased: true}`", body = Object),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        (status = 409, description = "Code: `subject_deceased` (recorded already)", body = super::openapi::ErrorBody),
        (status = 422, description = "Code: `invalid_reference`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn deceased(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<DeceasedRequest>,
) -> Answer {
    Ok(Json(dsr::mark_deceased(&state, &who, &id, &body).await?))
}

/// Record the subject's own instruction, while alive, on whether close relatives may
/// exercise its rights after its death (PIPL Art. 49).
#[utoipa::path(put, path = "/v1/subjects/{id}/instructions", tag = "requests",
    params(("id" = String, Path, description = "Subject id"), Purpose),
    request_body = super::openapi::InstructionsBody,
    responses(
        (status = 200, description = "`{id, relatives}`", body = Object),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        (status = 409, description = "Code: `subject_deceased` (too late to instruct)", body = super::openapi::ErrorBody),
        (status = 422, description = "Code: `invalid`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn instructions(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<InstructionsRequest>,
) -> Answer {
    Ok(Json(dsr::set_instructions(&state, &who, &id, &body).await?))
}

/// Export many subjects at once. Up to the configured threshold (`bulk_export_approval_over`,
/// default 100) the bundles come back at once; above it the export is recorded as a
/// request (202) that runs only after a second token with the approving role approves
/// it, and then only for the token that asked.
#[utoipa::path(post, path = "/v1/exports", tag = "requests", params(Purpose),
    request_body = super::openapi::BulkExportBody,
    responses(
        (status = 200, description = "`{bundles: [...]}`: one export bundle per subject (or `{subject, error}`)", body = Object),
        (status = 202, description = "`{id, status: pending, subjects, threshold}`: waits for approval", body = Object),
        (status = 400, description = "Codes: `invalid_subject`, `invalid_bulk_export`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn bulk_export(
    State(state): State<AppState>,
    who: Authorized,
    ApiJson(body): ApiJson<BulkExportInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    Ok(match dsr::bulk_export(&state, &who, &body).await? {
        BulkExport::Done(v) => (StatusCode::OK, Json(v)),
        BulkExport::Pending(v) => (StatusCode::ACCEPTED, Json(v)),
    })
}

/// Fetch an approved bulk export, once, with the token that asked for it.
#[utoipa::path(get, path = "/v1/exports/{id}", tag = "requests",
    params(("id" = String, Path, description = "Bulk export id"), Purpose),
    responses(
        (status = 200, description = "`{bundles: [...]}`", body = Object),
        (status = 403, description = "Code: `not_the_requester`", body = super::openapi::ErrorBody),
        (status = 404, description = "Code: `export_not_found`", body = super::openapi::ErrorBody),
        (status = 409, description = "Codes: `export_pending`, `export_delivered`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn fetch_bulk_export(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
) -> Answer {
    Ok(Json(dsr::fetch_bulk_export(&state, &who, &id).await?))
}

/// Approve a pending bulk export: another token than the one that asked, whose role
/// may approve (`bulk_export` admin; shipped: `dsr_lead`).
#[utoipa::path(post, path = "/v1/exports/{id}/approve", tag = "requests",
    params(("id" = String, Path, description = "Bulk export id"), Purpose),
    responses(
        (status = 200, description = "`{id, status: approved, subjects}`", body = Object),
        (status = 403, description = "Code: `second_person_required`", body = super::openapi::ErrorBody),
        (status = 404, description = "Code: `export_not_found`", body = super::openapi::ErrorBody),
        (status = 409, description = "Code: `export_not_pending`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn approve_bulk_export(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
) -> Answer {
    Ok(Json(dsr::approve_bulk_export(&state, &who, &id).await?))
}
