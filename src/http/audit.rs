//! `/v1/audit`: verification of the trail and the public key that checks it (auditors).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::Authorized;
use super::AppState;
use crate::audit::{parse_bound, Decision, ReportError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/audit/verify", get(verify))
        .route("/v1/audit/public-key", get(public_key))
        .route("/v1/audit/reports", get(list_reports))
        .route("/v1/audit/reports/{name}", get(run_report))
}

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
async fn verify(State(state): State<AppState>, who: Authorized) -> Result<Json<Value>, ApiError> {
    let event = who.event("audit.verify");
    who.require(&state, "audit_trail", "audit", event.clone())
        .await?;
    let report = state.verify_audit().await.map_err(ApiError::internal)?;
    let event = if report.ok {
        event
    } else {
        event.outcome(Decision::Allow, "trail_broken")
    };
    state.audit.record_one(event).await?;
    if !report.ok {
        tracing::error!(first_bad_seq = ?report.first_bad_seq, reason = ?report.reason, "audit trail verification failed");
    }
    Ok(Json(
        serde_json::to_value(report).map_err(ApiError::internal)?,
    ))
}

async fn public_key(
    State(state): State<AppState>,
    who: Authorized,
) -> Result<Json<Value>, ApiError> {
    who.require(
        &state,
        "audit_trail",
        "audit",
        who.event("audit.public_key"),
    )
    .await?;
    let keys: Vec<Value> = state
        .trusted_keys
        .iter()
        .map(|k| json!({ "key_id": k.key_id(), "public_key": k.to_text() }))
        .collect();
    Ok(Json(json!({ "keys": keys })))
}

async fn list_reports(
    State(state): State<AppState>,
    who: Authorized,
) -> Result<Json<Value>, ApiError> {
    who.require(&state, "audit_trail", "audit", who.event("audit.reports"))
        .await?;
    let reports: Vec<&crate::audit::ReportDef> = state.reports.list().collect();
    Ok(Json(json!({ "reports": reports })))
}

impl From<ReportError> for ApiError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Unknown(_) => ApiError::NotFound {
                code: "report_not_found",
                message: "no such report",
            },
            ReportError::MissingParameter(_) | ReportError::BadParameter(_) => {
                ApiError::bad_request("invalid_report_parameters", e.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

/// `GET /v1/audit/reports/{name}?from=…&to=…&format=json|csv&PARAM=…`
#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, report = %name))]
async fn run_report(
    State(state): State<AppState>,
    who: Authorized,
    Path(name): Path<String>,
    Query(mut query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let event = who.event("audit.report").target(&name);
    who.require(&state, "audit_trail", "audit", event.clone())
        .await?;
    let missing = |p: &str| {
        ApiError::bad_request(
            "invalid_report_parameters",
            format!("{p} is required (YYYY-MM-DD or RFC 3339)"),
        )
    };
    let from = parse_bound(&query.remove("from").ok_or_else(|| missing("from"))?, false)?;
    let to = parse_bound(&query.remove("to").ok_or_else(|| missing("to"))?, true)?;
    let format = query.remove("format").unwrap_or_else(|| "json".into());
    if format != "json" && format != "csv" {
        return Err(ApiError::bad_request(
            "invalid_report_parameters",
            "format is json or csv",
        ));
    }
    let result = state
        .reports
        .run(&state.store, &name, from, to, &query)
        .await?;
    state.audit.record_one(event).await?;
    Ok(if format == "csv" {
        (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            result.to_csv(),
        )
            .into_response()
    } else {
        Json(result.to_json()).into_response()
    })
}
