//! The OpenAPI document at `GET /openapi.json`. Routes and their documentation come
//! from the same place: every route is registered through `utoipa_axum::routes!` from a
//! handler carrying its `#[utoipa::path]`, so a route cannot be served undocumented or
//! documented unserved. This module holds what the paths share: the security scheme,
//! the error body with its stable codes, the refusals every authenticated route can
//! answer, and the shapes of answers the pipeline builds.

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "piivault",
        description = "A secure customer-data vault: field-level encryption, least privilege, \
                       a tamper-evident audit trail, PIPL obligations. Every /v1 call carries \
                       `Authorization: Bearer <token>` and `X-Purpose: <purpose>`; every \
                       answer carries `X-Request-Id`, the id its audit events carry.",
    ),
    modifiers(&Security),
    security(("bearer" = [])),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "subjects", description = "Create, read, correct, erase and look up subjects; their records"),
        (name = "consents", description = "Consent per subject and purpose (PIPL Art. 14-16)"),
        (name = "requests", description = "Data-subject requests, export and legal holds (PIPL Art. 44-47)"),
        (name = "tokens", description = "Bearer tokens"),
        (name = "keys", description = "The key inventory (admin)"),
        (name = "provisions", description = "Provision to registered recipients, deletion notices, transfers abroad (PIPL Art. 21-25, 38-39, 47)"),
        (name = "audit", description = "The audit trail: verification, public key, reports"),
        (name = "operations", description = "Probes, metrics and this document (no token)"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token issued by `piivault token issue` or POST /v1/tokens",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every error answer: a stable machine code, a message that never holds a value, and
/// the field it is about, when there is one.
#[derive(ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// A stable code (listed with each status of each route).
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

/// The header every route behind a token takes.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct Purpose {
    /// The purpose of this request: one the token may claim, declared in purposes.toml.
    #[param(rename = "X-Purpose")]
    x_purpose: String,
}

/// What every route behind a token can answer besides its own outcomes.
#[derive(IntoResponses)]
pub enum Refusals {
    /// Codes: `malformed_body`, `body_unreadable`, `malformed_query`, `malformed_path`,
    /// `purpose_missing`.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Codes: `token_missing`, `token_invalid`, `token_expired`, `token_revoked`.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Codes: `policy_denied` (names the field or object), `purpose_not_allowed`.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Code: `request_timeout`: the body did not arrive within the request timeout.
    #[response(status = 408)]
    Slow(ErrorBody),
    /// Code: `payload_too_large`.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Code: `too_many_failures` (with `Retry-After`), after too many bad tokens.
    #[response(status = 429)]
    TooMany(ErrorBody),
    /// Codes: `audit_unavailable` (nothing is handed out or changed without its audit
    /// event), `store_unavailable`, `key_unavailable` (a master-key version the data needs is not
    /// loaded on this node), `integrity_error`, `internal`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// A subject's id, as created.
#[derive(ToSchema)]
pub struct Created {
    /// `sub_` and 32 hex digits.
    pub id: String,
}

/// A field as read: its value (clear or masked) and whether it is masked; or, for a
/// field refused, `error` with its code (`policy_denied`, `consent_missing`,
/// `consent_outdated`, `separate_consent_missing`, `guardian_consent_missing`).
#[derive(ToSchema)]
pub struct FieldRead {
    pub value: Option<Value>,
    pub masked: Option<bool>,
    pub error: Option<ErrorDetail>,
}

/// A subject as read: each field asked for (all classified fields when none are named).
#[derive(ToSchema)]
pub struct SubjectRead {
    pub id: String,
    pub fields: std::collections::BTreeMap<String, FieldRead>,
}

/// Subjects found by a lookup (one audit event each).
#[derive(ToSchema)]
pub struct Found {
    /// The subjects found in this page, in id order (without those the caller may not
    /// see: held subjects, or subjects whose consent does not cover the field).
    pub ids: Vec<String>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// The body of a create or a correction.
#[derive(ToSchema)]
pub struct FieldsBody {
    /// Field name (from the classification) to value; in a correction `null` removes
    /// the field.
    pub fields: std::collections::BTreeMap<String, Value>,
}

/// A lookup by a searchable field's value.
#[derive(ToSchema)]
pub struct LookupBody {
    pub field: String,
    pub value: Value,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// Subjects per page: 1 to 1000, default 100.
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// A token to issue.
#[derive(ToSchema)]
pub struct IssueBody {
    pub role: String,
    pub purposes: Vec<String>,
    pub ttl_seconds: u64,
    pub description: Option<String>,
}

/// The subjects of a bulk export.
#[derive(ToSchema)]
pub struct BulkExportBody {
    /// Subject ids (1 to 10,000).
    pub subjects: Vec<String>,
}

/// A subject recorded as deceased.
#[derive(ToSchema)]
pub struct DeceasedBody {
    /// The reference of the evidence (letters, digits, `-`, `_`; at most 64).
    pub evidence: String,
}

/// The subject's instruction on close relatives after its death.
#[derive(ToSchema)]
pub struct InstructionsBody {
    /// `allowed` or `refused`.
    pub relatives: String,
}

/// A provision to a registered recipient.
#[derive(ToSchema)]
pub struct ProvideBody {
    /// A recipient id from `policies/recipients.toml`.
    pub recipient: String,
    /// Fields to provide.
    pub fields: Option<Vec<String>>,
    /// Record collections to provide.
    pub collections: Option<Vec<String>>,
}

/// A rotation to start.
#[derive(ToSchema)]
pub struct RotateBody {
    /// `data` (re-encrypt under new data keys), `master` (wrap again under a new
    /// master-key version), `blind_index` (index every subject again under a new
    /// blind-index key) or `token_hash` (a new token-hash key).
    pub kind: String,
    /// Subjects (`data`, default 100) or keys (`master`, default 1000) per transaction.
    pub batch: Option<u32>,
    /// At most this many subjects or keys a second.
    pub max_rate: Option<u32>,
}

/// A consent given.
#[derive(ToSchema)]
pub struct GrantBody {
    /// Version of the privacy notice the subject saw.
    pub notice_version: String,
    /// Where it was given (`app`, `web`, `phone`, …).
    pub channel: String,
    /// Separate consent (PIPL Art. 29 and 39) where the purpose needs it.
    pub separate: Option<bool>,
    /// Given by a parent or guardian (Art. 31).
    pub guardian: Option<bool>,
}

/// A consent withdrawn.
#[derive(ToSchema)]
pub struct WithdrawBody {
    pub channel: Option<String>,
}

/// A data-subject request received.
#[derive(ToSchema)]
pub struct RequestBody {
    pub subject: String,
    /// `access`, `export`, `correct`, `delete`, `withdraw`.
    pub kind: String,
    /// A close relative of a deceased subject making the request (PIPL Art. 49): may ask
    /// for `access`, `export`, `correct` or `delete`.
    pub requester: Option<RequesterBody>,
}

/// A close relative making a request for a deceased subject.
#[derive(ToSchema)]
pub struct RequesterBody {
    /// `spouse`, `parent`, `child`, `sibling`, `grandparent`, `grandchild`.
    pub relationship: String,
    /// The reference of the evidence of the relationship.
    pub evidence: String,
}

/// A data-subject request's new status.
#[derive(ToSchema)]
pub struct UpdateBody {
    /// `in_progress`, `completed` or `rejected`.
    pub status: String,
    pub reason: Option<String>,
}

/// A legal hold placed.
#[derive(ToSchema)]
pub struct HoldBody {
    /// An opaque case reference (letters, digits, `-`, `_`; at most 64).
    pub case: String,
}
