//! `/v1/subjects`: create, read, correct, erase, look up; records per collection. Each
//! handler translates the HTTP request for the pipeline (`pipeline::subjects`), which
//! decides, acts and audits, and translates its answer back.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::openapi::{Created, FieldsBody, Found, LookupBody, Purpose, Refusals, SubjectRead};
use super::AppState;
use crate::pipeline::{subjects, Authorized, FieldsInput, LookupInput, ReadInput};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(lookup))
        .routes(routes!(read, correct, erase))
        .routes(routes!(add_record, list_records))
}

type Answer = Result<Json<Value>, ApiError>;

/// Create a subject with its fields, each validated, encrypted under the subject's own
/// data key and audited.
#[utoipa::path(post, path = "/v1/subjects", tag = "subjects",
    params(Purpose),
    request_body = FieldsBody,
    responses(
        (status = 201, description = "Created", body = Created),
        (status = 422, description = "Codes: the rule a field broke (`unknown_field`, `id_number_checksum`, `phone_format`, `email_format`, `bank_card_luhn`, `date_format`, `type`, `required`, `empty`, …); names the field", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn create(
    State(state): State<AppState>,
    who: Authorized,
    ApiJson(body): ApiJson<FieldsInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let created = subjects::create(&state, &who, &body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Read a subject's fields: in clear or masked as the policy allows, each read audited.
#[utoipa::path(get, path = "/v1/subjects/{id}", tag = "subjects",
    params(
        ("id" = String, Path, description = "Subject id (`sub_…`)"),
        ("fields" = Option<String>, Query, description = "Comma-separated field names (default: all)"),
        ("masked" = Option<String>, Query, description = "Comma-separated fields to mask even where clear is allowed"),
        Purpose,
    ),
    responses(
        (status = 200, description = "The fields, or per field the reason it was refused", body = SubjectRead),
        (status = 403, description = "Code: `legal_hold` (the subject is restricted to storage)", body = super::openapi::ErrorBody),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        (status = 422, description = "Code: `unknown_field`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn read(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReadInput>,
) -> Answer {
    Ok(Json(subjects::read(&state, &who, &id, &q).await?))
}

/// Correct a subject's fields (PIPL Art. 46); `null` removes a field.
#[utoipa::path(patch, path = "/v1/subjects/{id}", tag = "subjects",
    params(
        ("id" = String, Path, description = "Subject id"),
        Purpose,
    ),
    request_body = FieldsBody,
    responses(
        (status = 200, description = "`{id, updated: [field, …]}`", body = Object),
        (status = 403, description = "Code: `legal_hold`", body = super::openapi::ErrorBody),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        (status = 409, description = "Code: `conflict` (a concurrent change; retry)", body = super::openapi::ErrorBody),
        (status = 422, description = "Codes: the rule a field broke", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn correct(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<FieldsInput>,
) -> Answer {
    Ok(Json(subjects::correct(&state, &who, &id, &body).await?))
}

/// Erase a subject by destroying its data keys (crypto-shredding); a tombstone stays.
#[utoipa::path(delete, path = "/v1/subjects/{id}", tag = "subjects",
    params(
        ("id" = String, Path, description = "Subject id"),
        Purpose,
    ),
    responses(
        (status = 200, description = "`{id, erased: true}`", body = Object),
        (status = 403, description = "Code: `legal_hold`", body = super::openapi::ErrorBody),
        (status = 404, description = "Code: `subject_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn erase(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(id): ApiPath<String>,
) -> Answer {
    Ok(Json(subjects::erase(&state, &who, &id).await?))
}

/// Find subjects by a searchable field's value (blind index); each subject found is an
/// audited access.
#[utoipa::path(post, path = "/v1/subjects/lookup", tag = "subjects",
    params(Purpose),
    request_body = LookupBody,
    responses(
        (status = 200, description = "The subjects found", body = Found),
        (status = 422, description = "Codes: `unknown_field`, `not_searchable`, the rule the value broke", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn lookup(
    State(state): State<AppState>,
    who: Authorized,
    ApiJson(body): ApiJson<LookupInput>,
) -> Answer {
    Ok(Json(subjects::lookup(&state, &who, &body).await?))
}

/// Add a record (a JSON object, encrypted whole) to one of the subject's collections.
#[utoipa::path(post, path = "/v1/subjects/{id}/records/{collection}", tag = "subjects",
    params(
        ("id" = String, Path, description = "Subject id"),
        ("collection" = String, Path, description = "Collection name from the classification"),
        Purpose,
    ),
    request_body = Object,
    responses(
        (status = 201, description = "`{id: rec_…}`", body = Object),
        (status = 403, description = "Code: `legal_hold`", body = super::openapi::ErrorBody),
        (status = 404, description = "Codes: `subject_not_found`, `collection_not_found`", body = super::openapi::ErrorBody),
        (status = 422, description = "Codes: `document_type`, `document_size`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn add_record(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath((id, collection)): ApiPath<(String, String)>,
    ApiJson(document): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let added = subjects::add_record(&state, &who, &id, &collection, &document).await?;
    Ok((StatusCode::CREATED, Json(added)))
}

/// A subject's records in one collection, decrypted, each read audited.
#[utoipa::path(get, path = "/v1/subjects/{id}/records/{collection}", tag = "subjects",
    params(
        ("id" = String, Path, description = "Subject id"),
        ("collection" = String, Path, description = "Collection name"),
        Purpose,
    ),
    responses(
        (status = 200, description = "`{records: [{id, created_at, document}]}`", body = Object),
        (status = 403, description = "Code: `legal_hold`", body = super::openapi::ErrorBody),
        (status = 404, description = "Codes: `subject_not_found`, `collection_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
async fn list_records(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath((id, collection)): ApiPath<(String, String)>,
) -> Answer {
    Ok(Json(
        subjects::list_records(&state, &who, &id, &collection).await?,
    ))
}
