//! The audit trail for auditors: verification, the public keys that check it, and
//! reports; decided and audited here.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{Authorized, Error, Pipeline};
use crate::audit::{parse_bound, Decision, ReportError, ReportResult};

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
pub async fn verify(state: &Pipeline, who: &Authorized) -> Result<Value, Error> {
    let event = who.event("audit.verify");
    who.require(state, "audit_trail", "audit", event.clone())
        .await?;
    let report = state.verify_audit().await.map_err(Error::internal)?;
    let event = if report.ok {
        event
    } else {
        event.outcome(Decision::Allow, "trail_broken")
    };
    state.audit.record_one(event).await?;
    if !report.ok {
        tracing::error!(first_bad_seq = ?report.first_bad_seq, reason = ?report.reason, "audit trail verification failed");
    }
    let mut answer = serde_json::to_value(report).map_err(Error::internal)?;
    let newest = state
        .store
        .checkpoints()
        .await
        .map_err(Error::store)?
        .into_iter()
        .max_by_key(|c| c.seq);
    answer["newest_checkpoint"] = match newest {
        Some(c) => json!({
            "seq": c.seq,
            "time": crate::store::rfc3339(c.ts),
            "key_id": c.key_id,
        }),
        None => Value::Null,
    };
    Ok(answer)
}

pub async fn public_key(state: &Pipeline, who: &Authorized) -> Result<Value, Error> {
    who.require(state, "audit_trail", "audit", who.event("audit.public_key"))
        .await?;
    let keys: Vec<Value> = state
        .trusted_keys()
        .iter()
        .map(|k| json!({ "key_id": k.key_id(), "public_key": k.to_text() }))
        .collect();
    Ok(json!({ "keys": keys }))
}

pub async fn list_reports(state: &Pipeline, who: &Authorized) -> Result<Value, Error> {
    who.require(state, "audit_trail", "audit", who.event("audit.reports"))
        .await?;
    let reports: Vec<&crate::audit::ReportDef> = state.reports.list().collect();
    Ok(json!({ "reports": reports }))
}

impl From<ReportError> for Error {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Unknown(_) => Error::NotFound {
                code: "report_not_found",
                message: "no such report",
            },
            ReportError::MissingParameter(_) | ReportError::BadParameter(_) => {
                Error::bad_request("invalid_report_parameters", e.to_string())
            }
            other => Error::internal(other),
        }
    }
}

/// How a report is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Json,
    Csv,
}

/// Runs report `name` for `from`..`to` (`YYYY-MM-DD` or RFC 3339) with its own
/// parameters; `query` also carries `format` (json or csv).
#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, report = %name))]
pub async fn run_report(
    state: &Pipeline,
    who: &Authorized,
    name: &str,
    mut query: BTreeMap<String, String>,
) -> Result<(ReportFormat, ReportResult), Error> {
    let event = who.event("audit.report").target(name);
    who.require(state, "audit_trail", "audit", event.clone())
        .await?;
    let missing = |p: &str| {
        Error::bad_request(
            "invalid_report_parameters",
            format!("{p} is required (YYYY-MM-DD or RFC 3339)"),
        )
    };
    let from = parse_bound(&query.remove("from").ok_or_else(|| missing("from"))?, false)?;
    let to = parse_bound(&query.remove("to").ok_or_else(|| missing("to"))?, true)?;
    let format = match query.remove("format").as_deref() {
        None | Some("json") => ReportFormat::Json,
        Some("csv") => ReportFormat::Csv,
        Some(_) => {
            return Err(Error::bad_request(
                "invalid_report_parameters",
                "format is json or csv",
            ))
        }
    };
    let result = state
        .reports
        .run(&state.store, name, from, to, &query)
        .await?;
    state.audit.record_one(event).await?;
    Ok((format, result))
}
