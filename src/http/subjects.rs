//! `/v1/subjects`: create, read, correct, erase, look up; records per collection.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::extract::{ApiJson, Authorized};
use super::AppState;
use crate::authz::FieldAccess;
use crate::vault::{SubjectId, View};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/subjects", post(create))
        .route("/v1/subjects/lookup", post(lookup))
        .route("/v1/subjects/{id}", get(read).patch(correct).delete(erase))
        .route(
            "/v1/subjects/{id}/records/{collection}",
            post(add_record).get(list_records),
        )
}

fn subject_id(raw: &str) -> Result<SubjectId, ApiError> {
    SubjectId::parse(raw).ok_or(ApiError::NotFound {
        code: "subject_not_found",
        message: "no such subject",
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldsBody {
    fields: Map<String, Value>,
}

#[tracing::instrument(skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
async fn create(
    State(state): State<AppState>,
    who: Authorized,
    ApiJson(body): ApiJson<FieldsBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_writes(&state, &who, &body.fields)?;
    let id = state.vault.create(&body.fields).await?;
    tracing::info!(subject = %id, fields = ?body.fields.keys().collect::<Vec<_>>(), "subject created");
    Ok((StatusCode::CREATED, Json(json!({ "id": id.as_str() }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    /// Comma-separated field names; all classified fields when absent.
    fields: Option<String>,
    /// Comma-separated field names the caller wants masked.
    masked: Option<String>,
}

fn names(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

#[tracing::instrument(skip_all, fields(subject = %raw_id, role = %who.caller.role, purpose = %who.purpose))]
async fn read(
    State(state): State<AppState>,
    who: Authorized,
    Path(raw_id): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = subject_id(&raw_id)?;
    let catalogue = state.vault.catalogue();
    let masked: BTreeSet<&str> = q
        .masked
        .as_deref()
        .map(names)
        .into_iter()
        .flatten()
        .collect();
    for name in &masked {
        catalogue.field(name).map_err(ApiError::Invalid)?;
    }
    // Named fields are answered one by one (denied ones say so); without `fields`, the
    // answer holds every field this role may see for this purpose.
    let explicit = q.fields.is_some();
    let requested: Vec<String> = match q.fields.as_deref() {
        Some(list) => names(list).map(str::to_owned).collect(),
        None => catalogue
            .fields()
            .filter(|f| who.field_access(&f.name).is_some())
            .map(|f| f.name.clone())
            .collect(),
    };
    let mut wanted = Vec::new();
    let mut denied = Vec::new();
    for name in requested {
        catalogue.field(&name).map_err(ApiError::Invalid)?;
        match who.field_access(&name) {
            Some(FieldAccess::Clear) if !masked.contains(name.as_str()) => {
                wanted.push((name, View::Clear))
            }
            Some(_) => wanted.push((name, View::Masked)),
            None => denied.push(name),
        }
    }
    if wanted.is_empty() {
        let fields = denied.join(",");
        tracing::info!(fields = %fields, "read denied by policy");
        return Err(ApiError::denied(
            if explicit {
                "the policy does not allow reading these fields for this role and purpose"
            } else {
                "this role may read no field for this purpose"
            },
            (!fields.is_empty()).then_some(fields.as_str()),
        ));
    }
    let fields = state.vault.read(&id, &wanted).await?;
    tracing::info!(fields = ?fields.keys().collect::<Vec<_>>(), denied = ?denied, "subject read");
    let mut answer = serde_json::to_value(&fields).map_err(ApiError::internal)?;
    for name in &denied {
        answer[name] = json!({ "error": {
            "code": "policy_denied",
            "message": "the policy does not allow reading this field for this role and purpose",
        }});
    }
    Ok(Json(json!({ "id": id.as_str(), "fields": answer })))
}

/// Every field being written must be writable by this role for this purpose.
fn require_writes(
    state: &AppState,
    who: &Authorized,
    fields: &Map<String, Value>,
) -> Result<(), ApiError> {
    let catalogue = state.vault.catalogue();
    for name in fields.keys() {
        if catalogue.field(name).is_ok() {
            who.require(name, "write")?;
        }
    }
    Ok(())
}

fn known_collection(state: &AppState, name: &str) -> Result<(), ApiError> {
    match state.vault.catalogue().collection(name) {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound {
            code: "collection_not_found",
            message: "no such record collection in the classification",
        }),
    }
}

#[tracing::instrument(skip_all, fields(subject = %raw_id, role = %who.caller.role, purpose = %who.purpose))]
async fn correct(
    State(state): State<AppState>,
    who: Authorized,
    Path(raw_id): Path<String>,
    ApiJson(body): ApiJson<FieldsBody>,
) -> Result<Json<Value>, ApiError> {
    let id = subject_id(&raw_id)?;
    require_writes(&state, &who, &body.fields)?;
    state.vault.correct(&id, &body.fields).await?;
    let updated: Vec<&String> = body.fields.keys().collect();
    tracing::info!(fields = ?updated, "subject corrected");
    Ok(Json(json!({ "id": id.as_str(), "updated": updated })))
}

#[tracing::instrument(skip_all, fields(subject = %raw_id, role = %who.caller.role, purpose = %who.purpose))]
async fn erase(
    State(state): State<AppState>,
    who: Authorized,
    Path(raw_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = subject_id(&raw_id)?;
    who.require("subject", "delete")?;
    state.vault.erase(&id).await?;
    tracing::info!("subject erased");
    Ok(Json(json!({ "id": id.as_str(), "erased": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupBody {
    field: String,
    value: Value,
}

#[tracing::instrument(skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
async fn lookup(
    State(state): State<AppState>,
    who: Authorized,
    ApiJson(body): ApiJson<LookupBody>,
) -> Result<Json<Value>, ApiError> {
    if state.vault.catalogue().field(&body.field).is_ok() && who.field_access(&body.field).is_none()
    {
        who.require(&body.field, "read_masked")?;
    }
    let ids = state.vault.lookup(&body.field, &body.value).await?;
    tracing::info!(field = %body.field, matches = ids.len(), "lookup");
    Ok(Json(json!({ "ids": ids })))
}

#[tracing::instrument(skip_all, fields(subject = %raw_id, collection = %collection, role = %who.caller.role, purpose = %who.purpose))]
async fn add_record(
    State(state): State<AppState>,
    who: Authorized,
    Path((raw_id, collection)): Path<(String, String)>,
    ApiJson(document): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = subject_id(&raw_id)?;
    known_collection(&state, &collection)?;
    who.require(&collection, "write")?;
    let record = state.vault.add_record(&id, &collection, &document).await?;
    tracing::info!(record = %record.as_str(), "record added");
    Ok((StatusCode::CREATED, Json(json!({ "id": record.as_str() }))))
}

#[tracing::instrument(skip_all, fields(subject = %raw_id, collection = %collection, role = %who.caller.role, purpose = %who.purpose))]
async fn list_records(
    State(state): State<AppState>,
    who: Authorized,
    Path((raw_id, collection)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = subject_id(&raw_id)?;
    known_collection(&state, &collection)?;
    who.require(&collection, "read")?;
    let records = state.vault.records(&id, &collection).await?;
    tracing::info!(count = records.len(), "records listed");
    Ok(Json(json!({ "records": records })))
}
