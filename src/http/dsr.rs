//! Data-subject requests, legal holds and the export bundle over HTTP
//! (`pipeline::dsr`): the handlers translate; the pipeline decides and audits.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::error::ApiError;
use super::extract::{ApiJson, Authorized};
use super::AppState;
use crate::pipeline::dsr::{self, CreateRequest, HoldRequest, ListQuery, UpdateRequest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/requests", get(list).post(create))
        .route("/v1/requests/{id}", get(show).patch(update))
        .route("/v1/subjects/{id}/export", get(export))
        .route(
            "/v1/subjects/{id}/hold",
            axum::routing::put(place_hold).delete(lift_hold),
        )
}

type Answer = Result<Json<Value>, ApiError>;

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

async fn list(
    State(state): State<AppState>,
    who: Authorized,
    Query(q): Query<ListQuery>,
) -> Answer {
    Ok(Json(dsr::list(&state, &who, &q).await?))
}

async fn show(State(state): State<AppState>, who: Authorized, Path(id): Path<String>) -> Answer {
    Ok(Json(dsr::show(&state, &who, &id).await?))
}

async fn update(
    State(state): State<AppState>,
    who: Authorized,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateRequest>,
) -> Answer {
    Ok(Json(dsr::update(&state, &who, &id, &body).await?))
}

/// The portable bundle, as a download named after the subject id (never after PI).
async fn export(
    State(state): State<AppState>,
    who: Authorized,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let bundle = dsr::export(&state, &who, &id).await?;
    let subject = bundle["subject"].as_str().unwrap_or("subject").to_owned();
    let disposition = format!("attachment; filename=\"{subject}-export.json\"");
    Ok(([(header::CONTENT_DISPOSITION, disposition)], Json(bundle)).into_response())
}

async fn place_hold(
    State(state): State<AppState>,
    who: Authorized,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<HoldRequest>,
) -> Answer {
    Ok(Json(dsr::place_hold(&state, &who, &id, &body).await?))
}

async fn lift_hold(
    State(state): State<AppState>,
    who: Authorized,
    Path(id): Path<String>,
) -> Answer {
    Ok(Json(dsr::lift_hold(&state, &who, &id).await?))
}
