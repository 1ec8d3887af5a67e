//! `/v1/subjects`: create, read, correct, erase, look up; records per collection. Each
//! handler translates the HTTP request for the pipeline (`pipeline::subjects`), which
//! decides, acts and audits, and translates its answer back.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use super::error::ApiError;
use super::extract::ApiJson;
use super::AppState;
use crate::pipeline::{subjects, Authorized, FieldsInput, LookupInput, ReadInput};

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

type Answer = Result<Json<Value>, ApiError>;

async fn create(
    State(state): State<AppState>,
    who: Authorized,
    ApiJson(body): ApiJson<FieldsInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let created = subjects::create(&state, &who, &body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn read(
    State(state): State<AppState>,
    who: Authorized,
    Path(id): Path<String>,
    Query(q): Query<ReadInput>,
) -> Answer {
    Ok(Json(subjects::read(&state, &who, &id, &q).await?))
}

async fn correct(
    State(state): State<AppState>,
    who: Authorized,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<FieldsInput>,
) -> Answer {
    Ok(Json(subjects::correct(&state, &who, &id, &body).await?))
}

async fn erase(State(state): State<AppState>, who: Authorized, Path(id): Path<String>) -> Answer {
    Ok(Json(subjects::erase(&state, &who, &id).await?))
}

async fn lookup(
    State(state): State<AppState>,
    who: Authorized,
    ApiJson(body): ApiJson<LookupInput>,
) -> Answer {
    Ok(Json(subjects::lookup(&state, &who, &body).await?))
}

async fn add_record(
    State(state): State<AppState>,
    who: Authorized,
    Path((id, collection)): Path<(String, String)>,
    ApiJson(document): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let added = subjects::add_record(&state, &who, &id, &collection, &document).await?;
    Ok((StatusCode::CREATED, Json(added)))
}

async fn list_records(
    State(state): State<AppState>,
    who: Authorized,
    Path((id, collection)): Path<(String, String)>,
) -> Answer {
    Ok(Json(
        subjects::list_records(&state, &who, &id, &collection).await?,
    ))
}
