//! The DSR handler's view: the request queue, overdue first; a request with its
//! subject's processing, consents and access history; and the steps that carry it out
//! (export, correction, withdrawal, erasure, status), each through the pipeline and
//! audited under the handler's own token. No page shows a field's value: values leave
//! only in the export bundle, as a download.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde_json::Value;

use super::page::{self, csrf_field, text, Page};
use super::{DsrView, Signed};
use crate::http::AppState;
use crate::pipeline::{consents, dsr, subjects, Error};

type Handler = Signed<DsrView>;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/dsr", get(queue))
        .route("/console/dsr/requests/{id}", get(request))
        .route("/console/dsr/requests/{id}/status", post(status))
        .route("/console/dsr/requests/{id}/export", post(export))
        .route("/console/dsr/requests/{id}/correct", post(correct))
        .route("/console/dsr/requests/{id}/withdraw", post(withdraw))
        .route("/console/dsr/requests/{id}/erase", post(erase_confirm))
        .route("/console/dsr/requests/{id}/erase/confirmed", post(erase))
}

/// `/console/dsr`: every request, overdue ones first, then open ones by due date.
async fn queue(State(state): State<AppState>, me: Handler) -> Response {
    let list = match dsr::list(&state, &me.who, &dsr::ListQuery::default()).await {
        Ok(v) => v,
        Err(e) => return Page::from_error(e).into_response(),
    };
    let mut requests = list["requests"].as_array().cloned().unwrap_or_default();
    let closed = |r: &Value| matches!(r["status"].as_str(), Some("done" | "rejected"));
    requests.sort_by_key(|r| {
        (
            closed(r),
            !r["overdue"].as_bool().unwrap_or(false),
            r["due"].as_str().unwrap_or_default().to_owned(),
        )
    });
    let body = html! {
        @if requests.is_empty() {
            p.empty { "No requests." }
        } @else {
            div.scroll { table {
                thead { tr { th { "Request" } th { "Kind" } th { "Status" } th { "Received" } th { "Due" } } }
                tbody {
                    @for r in &requests {
                        @let id = r["id"].as_str().unwrap_or_default();
                        @let overdue = r["overdue"].as_bool().unwrap_or(false) && !closed(r);
                        tr.overdue[overdue] {
                            td { a href=(format!("/console/dsr/requests/{id}")) { (id) } }
                            td { (r["kind"].as_str().unwrap_or_default()) }
                            td { (r["status"].as_str().unwrap_or_default()) }
                            td { (r["received"].as_str().unwrap_or_default()) }
                            td { (r["due"].as_str().unwrap_or_default()) @if overdue { " " strong.badge { "overdue" } } }
                        }
                    }
                }
            } }
        }
    };
    Page::ok("Request queue", (&me).into(), body).into_response()
}

/// What the last step did, as shown after it: a fixed set, never echoed input.
#[derive(serde::Deserialize)]
struct Done {
    done: Option<String>,
}

fn done_message(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "status" => "The request's status was changed.",
        "corrected" => "The field was corrected.",
        "withdrawn" => "The consent was withdrawn.",
        "erased" => {
            "The subject was erased: its keys, values, records and index entries are destroyed."
        }
        _ => return None,
    })
}

/// A section's answer from the pipeline; a subject that is gone is a note, not a failure.
enum Part {
    Shown(Value),
    Gone,
}

fn part(answer: Result<Value, Error>) -> Result<Part, Page> {
    match answer {
        Ok(v) => Ok(Part::Shown(v)),
        Err(Error::NotFound {
            code: "subject_not_found",
            ..
        }) => Ok(Part::Gone),
        Err(e) => Err(Page::from_error(e)),
    }
}

/// `/console/dsr/requests/{id}`.
async fn request(
    State(state): State<AppState>,
    me: Handler,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    match request_page(&state, &me, &id, done.done.as_deref()).await {
        Ok(p) | Err(p) => p.into_response(),
    }
}

async fn request_page(
    state: &AppState,
    me: &Handler,
    id: &str,
    done: Option<&str>,
) -> Result<Page, Page> {
    let r = dsr::show(state, &me.who, id)
        .await
        .map_err(Page::from_error)?;
    let subject = r["subject"].as_str().unwrap_or_default().to_owned();
    let processing = part(dsr::processing(state, &me.who, &subject).await)?;
    let consents = part(consents::list(state, &me.who, &subject).await)?;
    let history = part(dsr::access_history(state, &me.who, &subject).await)?;
    let open = matches!(r["status"].as_str(), Some("open" | "in_progress"));
    let action = |step: &str| format!("/console/dsr/requests/{id}/{step}");
    let body = html! {
        @if let Some(m) = done_message(done) { p.good role="status" { (m) } }
        dl {
            dt { "Kind" } dd { (text(&r["kind"])) }
            dt { "Status" } dd { (text(&r["status"])) @if let Some(reason) = r["reason"].as_str() { " (" (reason) ")" } }
            dt { "Received" } dd { (text(&r["received"])) }
            dt { "Due" } dd { (text(&r["due"])) @if r["overdue"].as_bool().unwrap_or(false) && open { " " strong.badge { "overdue" } } }
            dt { "Subject" } dd { code { (subject) } }
            @if let Some(rel) = r["requester"].as_str() { dt { "Requested by" } dd { "a close relative (" (rel) ")" } }
        }
        @if open {
            section.steps {
                h2 { "Carry it out" }
                form.inline method="post" action=(action("status")) {
                    (csrf_field(&me.csrf))
                    label { "Status "
                        select name="status" {
                            option value="in_progress" { "in progress" }
                            option value="done" { "done" }
                            option value="rejected" { "rejected" }
                        }
                    }
                    label { "Reason (for a rejection) " input type="text" name="reason" autocomplete="off"; }
                    button type="submit" { "Set status" }
                }
                @if matches!(processing, Part::Shown(_)) {
                    form.inline method="post" action=(action("export")) {
                        (csrf_field(&me.csrf))
                        button type="submit" { "Download the export bundle" }
                    }
                    (correction_form(state, &me.csrf, &action("correct")))
                    form.inline method="post" action=(action("erase")) {
                        (csrf_field(&me.csrf))
                        button.danger type="submit" { "Erase the subject…" }
                    }
                }
            }
        }
        @match &processing {
            Part::Gone => { p.note { "The subject's data has been erased; its consent history and access history remain." } }
            Part::Shown(p) => { (processing_section(p)) }
        }
        @if let Part::Shown(c) = &consents { (consents_section(c, &me.csrf, &action("withdraw"), open)) }
        @if let Part::Shown(h) = &history { (history_section(h)) }
    };
    Ok(Page::ok(&format!("Request {id}"), me.into(), body))
}

fn correction_form(state: &AppState, csrf: &str, action: &str) -> Markup {
    let catalogue = state.vault.catalogue();
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(csrf))
            label { "Correct field "
                select name="field" {
                    @for f in catalogue.fields() { option value=(f.name) { (f.name) } }
                }
            }
            label { "to " input type="text" name="value" required autocomplete="off"; }
            button type="submit" { "Correct" }
        }
    }
}

fn processing_section(p: &Value) -> Markup {
    html! {
        section {
            h2 { "What is held" }
            @if p["legal_hold"].as_bool().unwrap_or(false) {
                p.error { "Under legal hold: the subject's data may not be changed or erased until the hold is lifted." }
            }
            div.scroll { table {
                thead { tr { th { "Field" } th { "Category" } th { "Sensitive" } th { "Kept (days)" } } }
                tbody { @for f in p["fields"].as_array().into_iter().flatten() {
                    tr { td { (text(&f["field"])) } td { (text(&f["category"])) }
                         td { @if f["sensitive"].as_bool().unwrap_or(false) { "yes" } @else { "no" } }
                         td { (text(&f["retention_days"])) } }
                } }
            } }
            h2 { "Purposes that apply" }
            ul { @for pu in p["purposes"].as_array().into_iter().flatten() {
                @if pu["applies"].as_bool().unwrap_or(false) {
                    li { b { (text(&pu["purpose"])) } " (" (text(&pu["legal_basis"])) "): " (text(&pu["description"])) }
                }
            } }
        }
    }
}

fn consents_section(c: &Value, csrf: &str, action: &str, open: bool) -> Markup {
    html! {
        section {
            h2 { "Consents" }
            @let current = c["consents"].as_array().cloned().unwrap_or_default();
            @if current.is_empty() { p.empty { "No consents recorded." } } @else {
                div.scroll { table {
                    thead { tr { th { "Purpose" } th { "Active" } th { "Version" } th { "" } } }
                    tbody { @for k in &current {
                        @let active = k["active"].as_bool().unwrap_or(false);
                        tr {
                            td { (text(&k["purpose"])) }
                            td { @if active { "yes" } @else { "no" } }
                            td { (text(&k["purpose_version"])) }
                            td { @if active && open {
                                form.inline method="post" action=(action) {
                                    (csrf_field(csrf))
                                    input type="hidden" name="purpose" value=(text(&k["purpose"]));
                                    button type="submit" { "Withdraw" }
                                }
                            } }
                        }
                    } }
                } }
            }
            @let history = c["history"].as_array().cloned().unwrap_or_default();
            @if !history.is_empty() {
                details { summary { "History (" (history.len()) ")" }
                    div.scroll { table {
                        thead { tr { th { "When" } th { "Purpose" } th { "What" } th { "Channel" } } }
                        tbody { @for e in &history {
                            tr { td { (text(&e["at"])) } td { (text(&e["purpose"])) } td { (text(&e["kind"])) } td { (text(&e["channel"])) } }
                        } }
                    } }
                }
            }
        }
    }
}

fn history_section(h: &Value) -> Markup {
    let rows = h["access_history"].as_array().cloned().unwrap_or_default();
    html! {
        section {
            h2 { "Access history (" (rows.len()) ")" }
            @if rows.is_empty() { p.empty { "No accesses recorded." } } @else {
                div.scroll { table {
                    thead { tr { th { "When" } th { "By role" } th { "Action" } th { "Field" } th { "Purpose" } th { "Outcome" } } }
                    tbody { @for e in rows.iter().rev() {
                        tr { td { (text(&e["time"])) } td { (text(&e["by_role"])) } td { (text(&e["action"])) }
                             td { (text(&e["field"])) } td { (text(&e["purpose"])) } td { (text(&e["decision"])) } }
                    } }
                } }
            }
        }
    }
}

/// The subject a request is about (read through the pipeline: audited, refused by
/// policy like any other read).
async fn subject_of(state: &AppState, me: &Handler, id: &str) -> Result<String, Page> {
    let r = dsr::show(state, &me.who, id)
        .await
        .map_err(Page::from_error)?;
    Ok(r["subject"].as_str().unwrap_or_default().to_owned())
}

fn back(id: &str, done: &str) -> Response {
    Redirect::to(&format!("/console/dsr/requests/{id}?done={done}")).into_response()
}

/// A step's page or refusal, as the answer.
async fn answer(step: impl std::future::Future<Output = Result<Response, Page>>) -> Response {
    step.await.unwrap_or_else(IntoResponse::into_response)
}

/// A step on the request's subject: the form (its CSRF tag checked) and the subject.
async fn on_subject(
    state: &AppState,
    me: &Handler,
    id: &str,
    body: &[u8],
) -> Result<(BTreeMap<String, String>, String), Page> {
    let form = checked_form(me, body)?;
    let subject = subject_of(state, me, id).await?;
    Ok((form, subject))
}

/// A form, after its CSRF tag is checked.
fn checked_form(me: &Handler, body: &[u8]) -> Result<BTreeMap<String, String>, Page> {
    let mut fields: BTreeMap<String, String> = super::form(body)?;
    me.check_csrf(fields.get("csrf").map_or("", String::as_str))?;
    fields.remove("csrf");
    Ok(fields)
}

async fn status(
    State(state): State<AppState>,
    me: Handler,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    answer(async {
        let mut form = checked_form(&me, &body)?;
        let update = dsr::UpdateRequest {
            status: form.remove("status").unwrap_or_default(),
            reason: form.remove("reason").filter(|r| !r.trim().is_empty()),
        };
        dsr::update(&state, &me.who, &id, &update)
            .await
            .map_err(Page::from_error)?;
        Ok(back(&id, "status"))
    })
    .await
}

async fn export(
    State(state): State<AppState>,
    me: Handler,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    answer(async {
        let (_, subject) = on_subject(&state, &me, &id, &body).await?;
        let bundle = dsr::export(&state, &me.who, &subject)
            .await
            .map_err(Page::from_error)?;
        let text = serde_json::to_string_pretty(&bundle).unwrap_or_default();
        Ok(page::download(
            &format!("export_{id}.json"),
            "application/json",
            text,
        ))
    })
    .await
}

async fn correct(
    State(state): State<AppState>,
    me: Handler,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    answer(async {
        let (mut form, subject) = on_subject(&state, &me, &id, &body).await?;
        let field = form.remove("field").unwrap_or_default();
        let value = form.remove("value").unwrap_or_default();
        let mut fields = serde_json::Map::new();
        fields.insert(field, Value::String(value));
        subjects::correct(&state, &me.who, &subject, &subjects::FieldsInput { fields })
            .await
            .map_err(Page::from_error)?;
        Ok(back(&id, "corrected"))
    })
    .await
}

async fn withdraw(
    State(state): State<AppState>,
    me: Handler,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    answer(async {
        let (mut form, subject) = on_subject(&state, &me, &id, &body).await?;
        let purpose = form.remove("purpose").unwrap_or_default();
        let how = consents::WithdrawRequest {
            channel: Some("console".into()),
        };
        consents::withdraw(&state, &me.who, &subject, &purpose, how)
            .await
            .map_err(Page::from_error)?;
        Ok(back(&id, "withdrawn"))
    })
    .await
}

/// The confirmation before an erasure: names every field held and every collection
/// whose records go with it.
async fn erase_confirm(
    State(state): State<AppState>,
    me: Handler,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    answer(async {
        let (_, subject) = on_subject(&state, &me, &id, &body).await?;
        let p = dsr::processing(&state, &me.who, &subject)
            .await
            .map_err(Page::from_error)?;
        let fields: Vec<String> = p["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| text(&f["field"]))
            .collect();
        let collections: Vec<String> = p["collections"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| text(&c["collection"]))
            .collect();
        let body = html! {
            p.error role="alert" { "Erasing destroys the subject's data for good. It cannot be undone." }
            p { "Subject " code { (subject) } " (request " (id) "). This destroys:" }
            ul.destroyed {
                li { "the values of " (fields.len()) " fields: " b { (fields.join(", ")) } }
                li { "every record the subject has in " b { (collections.join(", ")) } }
                li { "the subject's data key and its lookup index entries" }
            }
            p { "Kept, as the law requires: the consent history and the audit trail, which hold no values." }
            @if p["legal_hold"].as_bool().unwrap_or(false) {
                p.error { "The subject is under legal hold: the erasure will be refused until the hold is lifted." }
            }
            form method="post" action=(format!("/console/dsr/requests/{id}/erase/confirmed")) {
                (csrf_field(&me.csrf))
                label { input type="checkbox" name="confirm" value="yes" required; " I confirm the erasure of these " (fields.len()) " fields and every record." }
                button.danger type="submit" { "Erase now" }
            }
            p { a href=(format!("/console/dsr/requests/{id}")) { "Cancel" } }
        };
        Ok(Page::ok("Confirm erasure", (&me).into(), body).into_response())
    })
    .await
}

async fn erase(
    State(state): State<AppState>,
    me: Handler,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    answer(async {
        let (form, subject) = on_subject(&state, &me, &id, &body).await?;
        if form.get("confirm").map(String::as_str) != Some("yes") {
            return Err(Page::refusal(
                StatusCode::BAD_REQUEST,
                "confirmation_missing",
                "tick the confirmation to erase the subject",
            ));
        }
        subjects::erase(&state, &me.who, &subject)
            .await
            .map_err(Page::from_error)?;
        Ok(back(&id, "erased"))
    })
    .await
}
