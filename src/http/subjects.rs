//! `/v1/subjects`: create, read, correct, erase, look up; records per collection.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::extract::{ApiJson, DataCaller};
use super::AppState;
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
    who: DataCaller,
    ApiJson(body): ApiJson<FieldsBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    who: DataCaller,
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
    let wanted: Vec<String> = match q.fields.as_deref() {
        Some(list) => names(list).map(str::to_owned).collect(),
        None => catalogue.fields().map(|f| f.name.clone()).collect(),
    };
    let wanted: Vec<(String, View)> = wanted
        .into_iter()
        .map(|n| {
            let view = if masked.contains(n.as_str()) {
                View::Masked
            } else {
                View::Clear
            };
            (n, view)
        })
        .collect();
    let fields = state.vault.read(&id, &wanted).await?;
    tracing::info!(fields = ?fields.keys().collect::<Vec<_>>(), "subject read");
    Ok(Json(json!({ "id": id.as_str(), "fields": fields })))
}

#[tracing::instrument(skip_all, fields(subject = %raw_id, role = %who.caller.role, purpose = %who.purpose))]
async fn correct(
    State(state): State<AppState>,
    who: DataCaller,
    Path(raw_id): Path<String>,
    ApiJson(body): ApiJson<FieldsBody>,
) -> Result<Json<Value>, ApiError> {
    let id = subject_id(&raw_id)?;
    state.vault.correct(&id, &body.fields).await?;
    let updated: Vec<&String> = body.fields.keys().collect();
    tracing::info!(fields = ?updated, "subject corrected");
    Ok(Json(json!({ "id": id.as_str(), "updated": updated })))
}

#[tracing::instrument(skip_all, fields(subject = %raw_id, role = %who.caller.role, purpose = %who.purpose))]
async fn erase(
    State(state): State<AppState>,
    who: DataCaller,
    Path(raw_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = subject_id(&raw_id)?;
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
    who: DataCaller,
    ApiJson(body): ApiJson<LookupBody>,
) -> Result<Json<Value>, ApiError> {
    let ids = state.vault.lookup(&body.field, &body.value).await?;
    tracing::info!(field = %body.field, matches = ids.len(), "lookup");
    Ok(Json(json!({ "ids": ids })))
}

#[tracing::instrument(skip_all, fields(subject = %raw_id, collection = %collection, role = %who.caller.role, purpose = %who.purpose))]
async fn add_record(
    State(state): State<AppState>,
    who: DataCaller,
    Path((raw_id, collection)): Path<(String, String)>,
    ApiJson(document): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = subject_id(&raw_id)?;
    let record = state.vault.add_record(&id, &collection, &document).await?;
    tracing::info!(record = %record.as_str(), "record added");
    Ok((StatusCode::CREATED, Json(json!({ "id": record.as_str() }))))
}

#[tracing::instrument(skip_all, fields(subject = %raw_id, collection = %collection, role = %who.caller.role, purpose = %who.purpose))]
async fn list_records(
    State(state): State<AppState>,
    who: DataCaller,
    Path((raw_id, collection)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = subject_id(&raw_id)?;
    let records = state.vault.records(&id, &collection).await?;
    tracing::info!(count = records.len(), "records listed");
    Ok(Json(json!({ "records": records })))
}
