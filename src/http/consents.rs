//! `/v1/subjects/{id}/consents`: grant, withdraw, list with history.

use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{ApiJson, Authorized};
use super::AppState;
use crate::audit::Decision;
use crate::authz::PurposeSpec;
use crate::classify::ValidationError;
use crate::pipl::{ConsentError, GrantRequest};
use crate::vault::SubjectId;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/subjects/{id}/consents", get(list))
        .route(
            "/v1/subjects/{id}/consents/{purpose}",
            put(grant).delete(withdraw),
        )
}

impl From<ConsentError> for ApiError {
    fn from(e: ConsentError) -> Self {
        match e {
            ConsentError::NotFound => ApiError::subject_not_found(),
            ConsentError::NotConsentBased(_) => ApiError::Invalid(ValidationError::new(
                "purpose",
                "not_consent_based",
                "this purpose does not rest on consent",
            )),
            ConsentError::Invalid(m) => {
                ApiError::Invalid(ValidationError::new("consent", "invalid", m))
            }
            ConsentError::NothingToWithdraw => ApiError::bad_request(
                "no_active_consent",
                "there is no active consent to withdraw",
            ),
            ConsentError::Store(s) => ApiError::internal(s),
            ConsentError::Audit(a) => a.into(),
        }
    }
}

fn code(e: &ConsentError) -> &'static str {
    match e {
        ConsentError::NotFound => "subject_not_found",
        ConsentError::NotConsentBased(_) => "not_consent_based",
        ConsentError::Invalid(_) => "invalid",
        ConsentError::NothingToWithdraw => "no_active_consent",
        ConsentError::Store(_) => "internal",
        ConsentError::Audit(_) => "audit_unavailable",
    }
}

fn parse(who: &Authorized, raw: &str, purpose: &str) -> Result<(SubjectId, PurposeSpec), ApiError> {
    let id = super::subject_id(raw)?;
    let spec = who.policy.purposes().get(purpose).cloned().ok_or_else(|| {
        ApiError::Invalid(ValidationError::new(
            "purpose",
            "unknown_purpose",
            "this purpose is not declared in purposes.toml",
        ))
    })?;
    Ok((id, spec))
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, consent_purpose = %purpose, role = %who.caller.role))]
async fn grant(
    State(state): State<AppState>,
    who: Authorized,
    Path((raw_id, purpose)): Path<(String, String)>,
    ApiJson(body): ApiJson<GrantRequest>,
) -> Result<Json<Value>, ApiError> {
    let (id, spec) = parse(&who, &raw_id, &purpose)?;
    let event = who
        .event("consent.grant")
        .subject(id.as_str())
        .target(&purpose);
    who.require(&state, "consent", "write", event.clone())
        .await?;
    if let Err(e) = state
        .consents
        .precheck_grant(&id, &purpose, &spec, &body)
        .await
    {
        state
            .audit
            .record_one(event.outcome(Decision::Error, code(&e)))
            .await?;
        return Err(e.into());
    }
    match state
        .consents
        .grant(
            &id,
            &purpose,
            &spec,
            &body,
            &who.caller.token_id,
            event.clone(),
        )
        .await
    {
        Ok(consent) => Ok(Json(json!({ "id": id.as_str(), "consent": consent }))),
        Err(e @ ConsentError::Audit(_)) => Err(e.into()),
        Err(e) => {
            state
                .audit
                .record_one(event.outcome(Decision::Error, code(&e)))
                .await?;
            Err(e.into())
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WithdrawBody {
    #[serde(default)]
    channel: Option<String>,
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, consent_purpose = %purpose, role = %who.caller.role))]
async fn withdraw(
    State(state): State<AppState>,
    who: Authorized,
    Path((raw_id, purpose)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    // The body is optional: `{"channel": "…"}` or nothing.
    let body: WithdrawBody = if body.iter().all(u8::is_ascii_whitespace) {
        WithdrawBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|_| {
            ApiError::bad_request(
                "malformed_body",
                "the body, if any, is {\"channel\": \"…\"}",
            )
        })?
    };
    let (id, spec) = parse(&who, &raw_id, &purpose)?;
    let event = who
        .event("consent.withdraw")
        .subject(id.as_str())
        .target(&purpose);
    who.require(&state, "consent", "write", event.clone())
        .await?;
    let channel = body.channel.unwrap_or_else(|| "api".into());
    if let Err(e) = state
        .consents
        .precheck_withdraw(&id, &purpose, &spec, &channel)
        .await
    {
        state
            .audit
            .record_one(event.outcome(Decision::Error, code(&e)))
            .await?;
        return Err(e.into());
    }
    match state
        .consents
        .withdraw(
            &id,
            &purpose,
            &spec,
            &channel,
            &who.caller.token_id,
            event.clone(),
        )
        .await
    {
        Ok(()) => Ok(Json(
            json!({ "id": id.as_str(), "purpose": purpose, "withdrawn": true }),
        )),
        Err(e @ ConsentError::Audit(_)) => Err(e.into()),
        Err(e) => {
            state
                .audit
                .record_one(event.outcome(Decision::Error, code(&e)))
                .await?;
            Err(e.into())
        }
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, role = %who.caller.role))]
async fn list(
    State(state): State<AppState>,
    who: Authorized,
    Path(raw_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = super::subject_id(&raw_id)?;
    let event = who.event("consent.read").subject(id.as_str());
    who.require(&state, "consent", "read", event.clone())
        .await?;
    let (current, history) = state.consents.list(&id, who.policy.purposes()).await?;
    state.audit.record_one(event).await?;
    Ok(Json(
        json!({ "id": id.as_str(), "consents": current, "history": history }),
    ))
}
