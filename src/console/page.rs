//! The console's pages: one layout, tables, refusals. Rendered with maud, which escapes
//! every value it is given: no text from the store or a form reaches a page as markup.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use crate::http::ApiError;

/// A rendered page and its status.
#[derive(Debug)]
pub struct Page {
    status: StatusCode,
    html: String,
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            self.html,
        )
            .into_response()
    }
}

/// Who is signed in, for the page header: role, token id, and the sign-out form's tag.
pub struct Nav<'a> {
    pub role: &'a str,
    pub token_id: &'a str,
    pub csrf: &'a str,
    /// `audit` or `dsr`: which view's links to show.
    pub view: &'a str,
}

impl<'a, P> From<&'a super::Signed<P>> for Nav<'a> {
    fn from(s: &'a super::Signed<P>) -> Self {
        Nav {
            role: &s.who.caller.role,
            token_id: &s.who.caller.token_id,
            csrf: &s.csrf,
            view: &s.who.purpose,
        }
    }
}

impl Page {
    /// A page with the console's layout. `title` names what the page is, never a person.
    pub fn new(status: StatusCode, title: &str, nav: Option<Nav<'_>>, body: Markup) -> Self {
        let html = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · piivault console" }
                    link rel="stylesheet" href="/console/static/console.css";
                }
                body {
                    header.top {
                        span.brand { "piivault console" }
                        @if let Some(nav) = &nav {
                            nav {
                                @if nav.view == super::AUDIT_PURPOSE {
                                    a href="/console/audit" { "Audit" }
                                    a href="/console/audit/chain" { "Chain" }
                                    a href="/console/audit/incident" { "Incident" }
                                } @else {
                                    a href="/console/dsr" { "Request queue" }
                                }
                            }
                            span.who { "role " b { (nav.role) } " · token " code { (nav.token_id) } }
                            form.inline method="post" action="/console/sign-out" {
                                input type="hidden" name="csrf" value=(nav.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                    main { h1 { (title) } (body) }
                }
            }
        };
        Self {
            status,
            html: html.into_string(),
        }
    }

    pub fn ok(title: &str, nav: Nav<'_>, body: Markup) -> Self {
        Self::new(StatusCode::OK, title, Some(nav), body)
    }

    /// A refusal or failure, with its stable code and message (never a value).
    pub fn refusal(status: StatusCode, code: &str, message: &str) -> Self {
        let title = match status {
            StatusCode::FORBIDDEN => "Refused",
            StatusCode::NOT_FOUND => "Not found",
            s if s.is_client_error() => "Not accepted",
            _ => "Unavailable",
        };
        Self::new(
            status,
            title,
            None,
            html! {
                p.error role="alert" { (message) }
                p { "Code: " code.code { (code) } }
                p { a href="/console" { "Back to the console" } }
            },
        )
    }

    /// The pipeline's refusal or failure as a page (the same status and code the API
    /// gives).
    pub fn from_error(e: ApiError) -> Self {
        let d = e.describe();
        let message = match &d.field {
            Some(field) if !d.message.starts_with(field.as_str()) => {
                format!("{field}: {}", d.message)
            }
            _ => d.message,
        };
        Self::refusal(d.status, d.code, &message)
    }
}

/// The sign-in page, with what went wrong last, if anything.
pub fn sign_in(error: Option<&str>, status: StatusCode) -> Page {
    Page::new(
        status,
        "Sign in",
        None,
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            p { "Paste a token whose role is " code { "auditor" } " or " code { "dsr_handler" }
                ". An operator issues a short-lived one with "
                code { "piivault token issue --console --role auditor" } "." }
            form method="post" action="/console/sign-in" {
                label for="token" { "Token" }
                input id="token" type="password" name="token" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
            p.small { "The token is kept in an HttpOnly cookie for this browser session only. \
                       Signing out forgets it here; revoke the token to end it everywhere." }
        },
    )
}

/// Whether a report column holds a time in milliseconds.
fn time_column(name: &str) -> bool {
    name == "ts" || name.ends_with("_ts") || name == "hour"
}

/// A value as text: a string as it is, NULL empty.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A report cell as text: times as RFC 3339, the rest as [`text`].
pub fn cell(column: &str, v: &Value) -> String {
    match v {
        Value::Number(n) if time_column(column) => n
            .as_i64()
            .map_or_else(|| n.to_string(), crate::store::rfc3339),
        other => text(other),
    }
}

/// A table of rows under `columns`.
pub fn table(columns: &[String], rows: &[Vec<Value>]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty { "No rows." }
        } @else {
            div.scroll {
                table {
                    thead { tr { @for c in columns { th scope="col" { (c) } } } }
                    tbody {
                        @for row in rows {
                            tr { @for (c, v) in columns.iter().zip(row) { td { (cell(c, v)) } } }
                        }
                    }
                }
            }
        }
    }
}

/// The hidden CSRF field every console form carries.
pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A `text/csv` download named `name`.
pub fn csv_download(name: &str, body: String) -> Response {
    download(name, "text/csv; charset=utf-8", body)
}

/// A download: `Content-Disposition: attachment`, never shown inline.
pub fn download(name: &str, content_type: &'static str, body: String) -> Response {
    let disposition = format!("attachment; filename=\"{name}\"");
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    response
}
