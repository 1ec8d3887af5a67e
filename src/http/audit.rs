//! `/v1/audit`: verification, public keys and reports for auditors (`pipeline::audit`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Authorized};
use super::openapi::{Purpose, Refusals};
use super::AppState;
use crate::pipeline::audit::{self, ReportFormat};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(verify))
        .routes(routes!(public_key))
        .routes(routes!(list_reports))
        .routes(routes!(run_report))
}

/// Walk the whole chain and check every signed checkpoint.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", params(Purpose),
    responses((status = 200, description = "`{ok, events, checkpoints, first_bad_seq?, reason?, newest_checkpoint: {seq, time, key_id} | null}`", body = Object), Refusals))]
async fn verify(State(state): State<AppState>, who: Authorized) -> Result<Json<Value>, ApiError> {
    Ok(Json(audit::verify(&state, &who).await?))
}

/// The public keys that verify the trail's signed checkpoints.
#[utoipa::path(get, path = "/v1/audit/public-key", tag = "audit", params(Purpose),
    responses((status = 200, description = "`{keys: [...]}`", body = Object), Refusals))]
async fn public_key(
    State(state): State<AppState>,
    who: Authorized,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(audit::public_key(&state, &who).await?))
}

/// The reports defined in `audit/`.
#[utoipa::path(get, path = "/v1/audit/reports", tag = "audit", params(Purpose),
    responses((status = 200, description = "`{reports: [...]}`", body = Object), Refusals))]
async fn list_reports(
    State(state): State<AppState>,
    who: Authorized,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(audit::list_reports(&state, &who).await?))
}

/// Run a report over a time range, as JSON or CSV; report parameters by name.
#[utoipa::path(get, path = "/v1/audit/reports/{name}", tag = "audit",
    params(
        ("name" = String, Path, description = "Report name"),
        ("from" = Option<String>, Query, description = "Start (YYYY-MM-DD or RFC 3339)"),
        ("to" = Option<String>, Query, description = "End (YYYY-MM-DD or RFC 3339)"),
        ("format" = Option<String>, Query, description = "`json` (default) or `csv`"),
        Purpose,
    ),
    responses(
        (status = 200, description = "`{columns, rows}`, or CSV text", content((Object = "application/json"), (String = "text/csv"))),
        (status = 400, description = "Codes: `invalid_report_parameters`, `date_format`, `date_range`", body = super::openapi::ErrorBody),
        (status = 404, description = "Code: `report_not_found`", body = super::openapi::ErrorBody),
        Refusals,
    ))]
/// `GET /v1/audit/reports/{name}?from=…&to=…&format=json|csv&PARAM=…`
async fn run_report(
    State(state): State<AppState>,
    who: Authorized,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<BTreeMap<String, String>>,
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
