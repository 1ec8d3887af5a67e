//! The web console under `/console`: pages for auditors and data-subject request
//! handlers, served by the same binary over the same TLS. It is an interface like the
//! HTTP API: every page and every action builds [`Credentials`] from the signed-in
//! token and calls the request pipeline, which authenticates, decides by policy, carries
//! out and audits; the console only renders what the pipeline answers.
//!
//! - The token lives in one cookie, `__Host-piivault-console` (`HttpOnly; Secure;
//!   SameSite=Strict; Path=/`), never in a page, a URL or browser storage.
//! - Every state-changing call is a POST carrying a CSRF tag derived from the token
//!   ([`csrf_tag`]), and is refused when the browser says it comes from another site
//!   (`Origin`, `Sec-Fetch-Site`).
//! - Every answer carries a Content-Security-Policy without `unsafe-inline` (the pages
//!   load one stylesheet and no script) and the usual hardening headers.
//! - URLs hold report names and request ids only; a subject id, a token id, a date
//!   range travels in a form body. Page titles name no person. No page shows a field's
//!   value: values leave only in the export bundle a handler downloads.

mod audit;
mod chart;
mod dsr;
mod page;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use zeroize::Zeroizing;

use crate::http::{ApiError, AppState};
use crate::pipeline::{Authorized, Credentials};

pub use page::Page;

/// The cookie that holds the signed-in token's secret.
pub const COOKIE: &str = "__Host-piivault-console";
/// The purpose auditor pages claim.
pub const AUDIT_PURPOSE: &str = "audit";
/// The purpose DSR pages claim.
pub const DSR_PURPOSE: &str = "dsr";
/// Every purpose a console token may claim, the auditor's view first.
pub const PURPOSES: [&str; 2] = [AUDIT_PURPOSE, DSR_PURPOSE];

/// The console's routes (merged into the HTTP router; not part of the OpenAPI document,
/// which describes `/v1`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/static/console.css", get(stylesheet))
        .merge(audit::router())
        .merge(dsr::router())
        .layer(middleware::from_fn(guard))
}

/// Headers every console answer carries, and the cross-site check every POST passes.
async fn guard(req: Request, next: Next) -> Response {
    let refused = req.method() == Method::POST && !same_origin(&req);
    let mut response = if refused {
        Page::refusal(
            StatusCode::FORBIDDEN,
            "cross_site_request",
            "this form was sent from another site; open the console and try again",
        )
        .into_response()
    } else {
        next.run(req).await
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Same-origin only: the console's URLs hold no personal value, and a browser then
        // sends a true `Origin` with each form.
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        ),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=(), payment=()",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Whether a POST comes from the console's own pages. A browser says where a request
/// comes from in `Sec-Fetch-Site` and `Origin`: another site is refused. A client that
/// sends neither (not a browser) is let through to the CSRF tag, which it must still
/// carry. (`Origin: null`, which a browser sends under some referrer policies, proves
/// nothing either way and is judged by `Sec-Fetch-Site` alone.)
fn same_origin(req: &Request) -> bool {
    let text = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let site = text("sec-fetch-site");
    if site.is_some_and(|s| !matches!(s, "same-origin" | "none")) {
        return false;
    }
    // HTTP/2 names the host in the request's authority, HTTP/1.1 in `Host`.
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| text("host"));
    match text("origin") {
        None => true,
        Some("null") => site.is_some(),
        Some(origin) => host.is_some_and(|h| origin.strip_prefix("https://") == Some(h)),
    }
}

/// The signed-in token's secret, from the cookie.
fn secret_from(headers: &HeaderMap) -> Option<Zeroizing<String>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| Zeroizing::new(value.to_owned()))
        })
}

/// The CSRF tag for a signed-in token: HMAC-SHA-256 keyed with the token's secret over
/// a fixed label, in hex. Only a holder of the secret (the HttpOnly cookie) can make it;
/// every console form carries it, and every POST is refused without it.
pub fn csrf_tag(secret: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(b"piivault/console/csrf/v1");
    hex::encode(mac.finalize().into_bytes())
}

/// The bearer credential for a secret (wiped when dropped).
fn bearer(secret: &str) -> Zeroizing<String> {
    Zeroizing::new(format!("Bearer {secret}"))
}

/// A token that no longer works (expired, revoked): sign in again.
fn session_ended() -> Response {
    page::sign_in(
        Some("your session has ended; sign in again"),
        StatusCode::UNAUTHORIZED,
    )
    .into_response()
}

/// A form whose CSRF tag is not the signed-in token's.
fn csrf_refused() -> Page {
    Page::refusal(
        StatusCode::FORBIDDEN,
        "csrf_tag_invalid",
        "this form is stale or was not made by the console; open the page again",
    )
}

/// Checks a form's CSRF tag against the signed-in token, in constant time.
fn csrf_ok(secret: &str, presented: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let expected = csrf_tag(secret);
    expected.len() == presented.len() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// What a console request says about itself: its headers (the cookie), its request id
/// and where it came from.
pub struct Meta {
    headers: HeaderMap,
    request_id: String,
    client: Option<std::net::IpAddr>,
}

impl<S: Send + Sync> FromRequestParts<S> for Meta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            headers: parts.headers.clone(),
            request_id: crate::http::extract::request_id(parts).to_owned(),
            client: crate::http::extract::client(parts),
        })
    }
}

impl Meta {
    /// What the interface knows about the request, with `authorization` as the bearer
    /// and the view's purpose.
    fn credentials<'a>(&'a self, authorization: &'a str, purpose: &'a str) -> Credentials<'a> {
        Credentials {
            authorization: Some(authorization),
            purpose: Some(purpose),
            request_id: &self.request_id,
            client: self.client,
        }
    }
}

/// A signed-in console user, authorised by the pipeline for the purpose `P` names
/// ([`AUDIT_PURPOSE`] or [`DSR_PURPOSE`]), with the CSRF tag its forms carry.
pub struct Signed<P> {
    pub who: Authorized,
    pub csrf: String,
    secret: Zeroizing<String>,
    _view: std::marker::PhantomData<P>,
}

impl<P> Signed<P> {
    /// Refuses a form whose CSRF tag is not this token's.
    pub fn check_csrf(&self, presented: &str) -> Result<(), Page> {
        if csrf_ok(&self.secret, presented) {
            Ok(())
        } else {
            Err(csrf_refused())
        }
    }
}

/// Which purpose a view claims.
pub trait View: Send + Sync + 'static {
    const PURPOSE: &'static str;
}

/// Auditor pages.
pub struct AuditView;
impl View for AuditView {
    const PURPOSE: &'static str = AUDIT_PURPOSE;
}

/// DSR handler pages.
pub struct DsrView;
impl View for DsrView {
    const PURPOSE: &'static str = DSR_PURPOSE;
}

impl<P: View> FromRequestParts<AppState> for Signed<P> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Ok(meta) = Meta::from_request_parts(parts, state).await;
        let Some(secret) = secret_from(&meta.headers) else {
            return Err(Redirect::to("/console/sign-in").into_response());
        };
        let bearer = bearer(&secret);
        let creds = meta.credentials(&bearer, P::PURPOSE);
        match state.authorize(&creds).await {
            Ok(who) => Ok(Self {
                csrf: csrf_tag(&secret),
                who,
                secret,
                _view: std::marker::PhantomData,
            }),
            Err(ApiError::Unauthorized { .. }) => Err(session_ended()),
            Err(e) => Err(Page::from_error(e).into_response()),
        }
    }
}

/// `/console`: the view the signed-in token's purposes open.
async fn home(axum::extract::State(state): axum::extract::State<AppState>, meta: Meta) -> Response {
    let Some(secret) = secret_from(&meta.headers) else {
        return Redirect::to("/console/sign-in").into_response();
    };
    let bearer = bearer(&secret);
    let caller = match state.authenticate(&meta.credentials(&bearer, "")).await {
        Ok(caller) => caller,
        Err(ApiError::Unauthorized { .. }) => return session_ended(),
        Err(e) => return Page::from_error(e).into_response(),
    };
    match PURPOSES
        .into_iter()
        .find(|p| caller.purposes.iter().any(|c| c == p))
    {
        Some(AUDIT_PURPOSE) => Redirect::to("/console/audit").into_response(),
        Some(_) => Redirect::to("/console/dsr").into_response(),
        None => page::sign_in(Some(NOT_FOR_CONSOLE), StatusCode::FORBIDDEN).into_response(),
    }
}

const NOT_FOR_CONSOLE: &str =
    "this token cannot use the console: it may claim neither the audit nor the dsr purpose";

async fn sign_in_page() -> Response {
    page::sign_in(None, StatusCode::OK).into_response()
}

/// The sign-in form: the token's secret, pasted.
#[derive(serde::Deserialize)]
struct SignIn {
    token: String,
}

/// Checks the pasted token with the pipeline and, if it may use the console, sets the
/// cookie. A refused token is never echoed back.
async fn sign_in(
    axum::extract::State(state): axum::extract::State<AppState>,
    meta: Meta,
    body: axum::body::Bytes,
) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<SignIn>(&body) else {
        return page::sign_in(Some("paste a token to sign in"), StatusCode::BAD_REQUEST)
            .into_response();
    };
    let pasted = Zeroizing::new(form.token);
    let secret = pasted.trim();
    let bearer = bearer(secret);
    match crate::pipeline::tokens::sign_in(&state, &meta.credentials(&bearer, ""), &PURPOSES).await
    {
        Ok(_) => {}
        Err(ApiError::Unauthorized { .. }) => {
            return page::sign_in(
                Some("that token is not valid, has expired or was revoked"),
                StatusCode::UNAUTHORIZED,
            )
            .into_response()
        }
        Err(ApiError::Forbidden { .. }) => {
            return page::sign_in(Some(NOT_FOR_CONSOLE), StatusCode::FORBIDDEN).into_response()
        }
        Err(e) => return Page::from_error(e).into_response(),
    }
    let cookie = Zeroizing::new(format!(
        "{COOKIE}={secret}; HttpOnly; Secure; SameSite=Strict; Path=/"
    ));
    let mut response = Redirect::to("/console").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Signing out forgets the cookie (the token itself stays valid until it expires or is
/// revoked: revoke it to end it everywhere).
async fn sign_out(meta: Meta, body: axum::body::Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Form {
        csrf: String,
    }
    let signed_in = secret_from(&meta.headers);
    let form = serde_urlencoded::from_bytes::<Form>(&body).ok();
    match (signed_in, form) {
        (Some(secret), Some(form)) if csrf_ok(&secret, &form.csrf) => {}
        (None, _) => return Redirect::to("/console/sign-in").into_response(),
        _ => return csrf_refused().into_response(),
    }
    let mut response = Redirect::to("/console/sign-in").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-piivault-console=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    response
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

/// A form body of the console, with its CSRF tag.
pub fn form<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Page> {
    serde_urlencoded::from_bytes(body).map_err(|_| {
        Page::refusal(
            StatusCode::BAD_REQUEST,
            "malformed_form",
            "the form could not be read; open the page again",
        )
    })
}
