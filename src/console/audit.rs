//! The auditor's view: the chain's state, every report in `audit/` over a date range as
//! a table, a chart and a CSV download, and the incident report for one token.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde_json::Value;

use super::chart::{self, Grouping};
use super::page::{self, csrf_field, Page};
use super::{AuditView, Signed};
use crate::http::AppState;
use crate::pipeline::audit as pipe;

type Auditor = Signed<AuditView>;

/// The report the chart of accesses over time is drawn from.
pub const OVER_TIME: &str = "accesses_over_time";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/audit", get(home))
        .route("/console/audit/chain", get(chain))
        .route("/console/audit/report", post(report))
        .route("/console/audit/report.csv", post(report_csv))
        .route("/console/audit/incident", get(incident_form).post(incident))
        .route("/console/audit/incident.csv", post(incident_csv))
}

/// Today and 30 days before, as `YYYY-MM-DD` (UTC): the range a form starts with.
fn default_range() -> (String, String) {
    let today = time::OffsetDateTime::now_utc().date();
    let from = today - time::Duration::days(30);
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    (
        from.format(&fmt).unwrap_or_default(),
        today.format(&fmt).unwrap_or_default(),
    )
}

fn range_inputs(from: &str, to: &str) -> Markup {
    html! {
        label { "From " input type="date" name="from" value=(from) required; }
        label { "To (inclusive) " input type="date" name="to" value=(to) required; }
    }
}

/// `/console/audit`: every report, each with its own form.
async fn home(State(state): State<AppState>, me: Auditor) -> Response {
    let list = match pipe::list_reports(&state, &me.who).await {
        Ok(v) => v,
        Err(e) => return Page::from_error(e).into_response(),
    };
    let (from, to) = default_range();
    let reports = list["reports"].as_array().cloned().unwrap_or_default();
    let body = html! {
        p { "Every report runs over a date range (UTC) and is recorded in the audit trail under your token. "
            a href="/console/audit/chain" { "Check the chain" } " · "
            a href="/console/audit/incident" { "Incident report for a token" } }
        @for r in &reports {
            @let name = r["name"].as_str().unwrap_or_default();
            @if name != OVER_TIME {
                section.report {
                    h2 { (name) }
                    p { (r["description"].as_str().unwrap_or_default()) }
                    form method="post" action="/console/audit/report" {
                        (csrf_field(&me.csrf))
                        input type="hidden" name="name" value=(name);
                        (range_inputs(&from, &to))
                        @for p in r["parameters"].as_array().into_iter().flatten() {
                            @let p = p.as_str().unwrap_or_default();
                            label { (p) " " input type="text" name=(p) required autocomplete="off"; }
                        }
                        button type="submit" { "Run" }
                    }
                }
            }
        }
    };
    Page::ok("Audit reports", (&me).into(), body).into_response()
}

/// `/console/audit/chain`: the chain verified now, the newest signed checkpoint, the
/// keys that sign them.
async fn chain(State(state): State<AppState>, me: Auditor) -> Response {
    let report = match pipe::verify(&state, &me.who).await {
        Ok(v) => v,
        Err(e) => return Page::from_error(e).into_response(),
    };
    let keys = match pipe::public_key(&state, &me.who).await {
        Ok(v) => v,
        Err(e) => return Page::from_error(e).into_response(),
    };
    let ok = report["ok"].as_bool().unwrap_or(false);
    let body = html! {
        @if ok {
            p.good role="status" { "The chain verifies: every event links to the one before it and matches its hash, and every signed checkpoint matches." }
        } @else {
            p.error role="alert" { "The chain does NOT verify: " (report["reason"].as_str().unwrap_or("unknown reason")) }
        }
        dl {
            dt { "Verified up to event" } dd { (report["events"]) }
            @if let Some(bad) = report["first_bad_seq"].as_i64() { dt { "First bad event" } dd { (bad) } }
            dt { "Signed checkpoints verified" } dd { (report["checkpoints"]) }
            dt { "Checkpoints by keys not trusted here" } dd { (report["checkpoints_unknown_key"]) }
            @match report["newest_checkpoint"].as_object() {
                Some(cp) => {
                    dt { "Newest signed checkpoint" }
                    dd { "event " (cp["seq"]) ", " (cp["time"].as_str().unwrap_or_default())
                         ", key " code { (cp["key_id"].as_str().unwrap_or_default()) } }
                }
                None => { dt { "Newest signed checkpoint" } dd { "none yet" } }
            }
        }
        h2 { "Keys that sign checkpoints" }
        ul {
            @for k in keys["keys"].as_array().into_iter().flatten() {
                li { code { (k["key_id"].as_str().unwrap_or_default()) } " " code.small { (k["public_key"].as_str().unwrap_or_default()) } }
            }
        }
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    Page::new(status, "Audit chain", Some((&me).into()), body).into_response()
}

/// A report form: name, range, the report's own parameters, the chart's grouping.
struct ReportForm {
    name: String,
    group: Grouping,
    /// `from`, `to` and the report's parameters, as the pipeline takes them.
    query: BTreeMap<String, String>,
}

fn read_form(me: &Auditor, body: &[u8]) -> Result<ReportForm, Page> {
    let mut fields: BTreeMap<String, String> = super::form(body)?;
    me.check_csrf(fields.get("csrf").map_or("", String::as_str))?;
    fields.remove("csrf");
    let name = fields.remove("name").unwrap_or_default();
    let group = Grouping::parse(fields.remove("group").as_deref());
    fields.remove("format");
    Ok(ReportForm {
        name,
        group,
        query: fields,
    })
}

/// The same form again, hidden, for another view of the same report (CSV, regrouped).
fn hidden_form(me: &Auditor, f: &ReportForm) -> Markup {
    html! {
        (csrf_field(&me.csrf))
        input type="hidden" name="name" value=(f.name);
        @for (k, v) in &f.query { input type="hidden" name=(k) value=(v); }
    }
}

/// `POST /console/audit/report`: the report as a table, under a chart of accesses over
/// the same range.
async fn report(State(state): State<AppState>, me: Auditor, body: Bytes) -> Response {
    let form = match read_form(&me, &body) {
        Ok(f) => f,
        Err(p) => return p.into_response(),
    };
    let result = match pipe::run_report(&state, &me.who, &form.name, form.query.clone()).await {
        Ok((_, r)) => r,
        Err(e) => return Page::from_error(e).into_response(),
    };
    let range: BTreeMap<String, String> = form
        .query
        .iter()
        .filter(|(k, _)| *k == "from" || *k == "to")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let over_time = match pipe::run_report(&state, &me.who, OVER_TIME, range).await {
        Ok((_, r)) => Some(r),
        // A vault whose audit/ directory lacks the report still shows the table.
        Err(crate::pipeline::Error::NotFound { .. }) => None,
        Err(e) => return Page::from_error(e).into_response(),
    };
    let body = html! {
        p { "From " (result.from) " to " (result.to) " (UTC). " (result.rows.len()) " rows." }
        form.inline method="post" action="/console/audit/report.csv" {
            (hidden_form(&me, &form))
            button type="submit" { "Download CSV" }
        }
        @if let Some(over_time) = &over_time {
            section.chart {
                h2 { "Accesses over time, by " (form.group.label()) }
                form.inline method="post" action="/console/audit/report" {
                    (hidden_form(&me, &form))
                    label { "Group by "
                        select name="group" {
                            @for g in Grouping::ALL {
                                option value=(g.key()) selected[g == form.group] { (g.label()) }
                            }
                        }
                    }
                    button type="submit" { "Redraw" }
                }
                (chart::accesses_over_time(over_time, form.group))
            }
        }
        h2 { "Rows" }
        (page::table(&result.columns, &result.rows))
    };
    let title = format!("Report {}", form.name);
    Page::ok(&title, (&me).into(), body).into_response()
}

/// `POST /console/audit/report.csv`: the report as a CSV download.
async fn report_csv(State(state): State<AppState>, me: Auditor, body: Bytes) -> Response {
    let form = match read_form(&me, &body) {
        Ok(f) => f,
        Err(p) => return p.into_response(),
    };
    match pipe::run_report(&state, &me.who, &form.name, form.query).await {
        Ok((_, r)) => {
            // The report and its range's dates.
            let day = |t: &str| t.get(..10).unwrap_or(t).to_owned();
            let file = format!("{}_{}_{}.csv", r.report, day(&r.from), day(&r.to));
            page::csv_download(&file, r.to_csv())
        }
        Err(e) => Page::from_error(e).into_response(),
    }
}

/// `/console/audit/incident`: a token and a window.
async fn incident_form(me: Auditor) -> Response {
    let (from, to) = default_range();
    let body = html! {
        p { "Every subject and field one token reached in a window, for a breach notification (PIPL Art. 57)." }
        form method="post" action="/console/audit/incident" {
            (csrf_field(&me.csrf))
            label { "Token id " input type="text" name="token" placeholder="tok_…" required autocomplete="off"; }
            (range_inputs(&from, &to))
            button type="submit" { "Run" }
        }
    };
    Page::ok("Incident report", (&me).into(), body).into_response()
}

/// `POST /console/audit/incident`: the `incident` report, summed up for a notification.
async fn incident(State(state): State<AppState>, me: Auditor, body: Bytes) -> Response {
    let mut form = match read_form(&me, &body) {
        Ok(f) => f,
        Err(p) => return p.into_response(),
    };
    form.name = "incident".into();
    let result = match pipe::run_report(&state, &me.who, &form.name, form.query.clone()).await {
        Ok((_, r)) => r,
        Err(e) => return Page::from_error(e).into_response(),
    };
    let column = |name: &str| result.columns.iter().position(|c| c == name);
    let distinct = |name: &str| -> Vec<String> {
        let Some(i) = column(name) else {
            return Vec::new();
        };
        let mut seen: Vec<String> = result
            .rows
            .iter()
            .filter_map(|r| r.get(i).and_then(Value::as_str).map(str::to_owned))
            .collect();
        seen.sort();
        seen.dedup();
        seen
    };
    let (subjects, fields) = (distinct("subject"), distinct("field"));
    let times: i64 = column("times").map_or(0, |i| {
        result
            .rows
            .iter()
            .filter_map(|r| r.get(i).and_then(Value::as_i64))
            .sum()
    });
    let token = form.query.get("token").cloned().unwrap_or_default();
    let body = html! {
        p { "Token " code { (token) } ", from " (result.from) " to " (result.to) " (UTC)." }
        section.summary {
            h2 { "For the notification (PIPL Art. 57)" }
            dl {
                dt { "Subjects reached" } dd { (subjects.len()) }
                dt { "Fields reached" } dd { @if fields.is_empty() { "none" } @else { (fields.join(", ")) } }
                dt { "Allowed actions on them" } dd { (times) }
            }
            @if !subjects.is_empty() {
                details {
                    summary { "Subject ids (" (subjects.len()) ")" }
                    ul.ids { @for s in &subjects { li { code { (s) } } } }
                }
            }
        }
        form.inline method="post" action="/console/audit/incident.csv" {
            (hidden_form(&me, &form))
            button type="submit" { "Download CSV" }
        }
        h2 { "Subjects and fields, with how often and when" }
        (page::table(&result.columns, &result.rows))
    };
    Page::ok("Incident report", (&me).into(), body).into_response()
}

async fn incident_csv(State(state): State<AppState>, me: Auditor, body: Bytes) -> Response {
    let form = match read_form(&me, &body) {
        Ok(f) => f,
        Err(p) => return p.into_response(),
    };
    match pipe::run_report(&state, &me.who, "incident", form.query).await {
        Ok((_, r)) => page::csv_download("incident.csv", r.to_csv()),
        Err(e) => Page::from_error(e).into_response(),
    }
}
