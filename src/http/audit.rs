//! `/v1/audit`: verification, public keys and reports for auditors (`pipeline::audit`).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::error::ApiError;
use super::extract::Authorized;
use super::AppState;
use crate::pipeline::audit::{self, ReportFormat};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/audit/verify", get(verify))
        .route("/v1/audit/public-key", get(public_key))
        .route("/v1/audit/reports", get(list_reports))
        .route("/v1/audit/reports/{name}", get(run_report))
}

async fn verify(State(state): State<AppState>, who: Authorized) -> Result<Json<Value>, ApiError> {
    Ok(Json(audit::verify(&state, &who).await?))
}

async fn public_key(
    State(state): State<AppState>,
    who: Authorized,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(audit::public_key(&state, &who).await?))
}

async fn list_reports(
    State(state): State<AppState>,
    who: Authorized,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(audit::list_reports(&state, &who).await?))
}

/// `GET /v1/audit/reports/{name}?from=…&to=…&format=json|csv&PARAM=…`
async fn run_report(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let (format, result) = audit::run_report(&state, &who, &name, query).await?;
    Ok(match format {
        ReportFormat::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            result.to_csv(),
        )
            .into_response(),
        ReportFormat::Json => Json(result.to_json()).into_response(),
    })
}
