//! Consent per subject and purpose: grant, withdraw, list with history; decided,
//! recorded and audited here for every interface.

use serde_json::{json, Value};

use super::{Authorized, Error, Pipeline};
use crate::audit::{Decision, Event};
use crate::authz::PurposeSpec;
use crate::classify::ValidationError;
use crate::pipl::{ConsentError, GrantRequest};
use crate::vault::SubjectId;

impl From<ConsentError> for Error {
    fn from(e: ConsentError) -> Self {
        match e {
            ConsentError::NotFound => Error::subject_not_found(),
            ConsentError::NotConsentBased(_) => Error::Invalid(ValidationError::new(
                "purpose",
                "not_consent_based",
                "this purpose does not rest on consent",
            )),
            ConsentError::Invalid(m) => {
                Error::Invalid(ValidationError::new("consent", "invalid", m))
            }
            ConsentError::NothingToWithdraw => Error::bad_request(
                "no_active_consent",
                "there is no active consent to withdraw",
            ),
            ConsentError::Store(s) => Error::store(s),
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

fn parse(who: &Authorized, raw: &str, purpose: &str) -> Result<(SubjectId, PurposeSpec), Error> {
    let id = super::subject_id(raw)?;
    let spec = who.policy.consent_spec(purpose).ok_or_else(|| {
        Error::Invalid(ValidationError::new(
            "purpose",
            "unknown_purpose",
            "this purpose is not declared in purposes.toml, nor recipient:ID for a registered recipient that needs separate consent",
        ))
    })?;
    Ok((id, spec))
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, consent_purpose = %purpose, role = %who.caller.role))]
pub async fn grant(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
    purpose: &str,
    body: &GrantRequest,
) -> Result<Value, Error> {
    let (id, spec) = parse(who, raw_id, purpose)?;
    let event = who
        .event("consent.grant")
        .subject(id.as_str())
        .target(purpose);
    who.require(state, "consent", "write", event.clone())
        .await?;
    match state
        .consents
        .grant(
            &id,
            purpose,
            &spec,
            body,
            &who.caller.token_id,
            event.clone(),
        )
        .await
    {
        Ok(consent) => Ok(json!({ "id": id.as_str(), "consent": consent })),
        Err(e) => Err(refused(state, event, e).await),
    }
}

/// A consent change that was refused or failed: recorded as an `error` event with its
/// reason (the change and its own event were not written), and passed on. A trail that
/// cannot be written is passed on as it is.
async fn refused(state: &Pipeline, event: Event, e: ConsentError) -> Error {
    if let ConsentError::Audit(_) = e {
        return e.into();
    }
    match state
        .audit
        .record_one(event.outcome(Decision::Error, code(&e)))
        .await
    {
        Ok(()) => e.into(),
        Err(a) => a.into(),
    }
}

/// A withdrawal: the channel it came through (default `api`).
#[derive(Debug, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WithdrawRequest {
    #[serde(default)]
    pub channel: Option<String>,
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, consent_purpose = %purpose, role = %who.caller.role))]
pub async fn withdraw(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
    purpose: &str,
    body: WithdrawRequest,
) -> Result<Value, Error> {
    let (id, spec) = parse(who, raw_id, purpose)?;
    let event = who
        .event("consent.withdraw")
        .subject(id.as_str())
        .target(purpose);
    who.require(state, "consent", "write", event.clone())
        .await?;
    let channel = body.channel.unwrap_or_else(|| "api".into());
    match state
        .consents
        .withdraw(
            &id,
            purpose,
            &spec,
            &channel,
            &who.caller.token_id,
            event.clone(),
        )
        .await
    {
        Ok(()) => Ok(json!({ "id": id.as_str(), "purpose": purpose, "withdrawn": true })),
        Err(e) => Err(refused(state, event, e).await),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, role = %who.caller.role))]
pub async fn list(state: &Pipeline, who: &Authorized, raw_id: &str) -> Result<Value, Error> {
    let id = super::subject_id(raw_id)?;
    let event = who.event("consent.read").subject(id.as_str());
    who.require(state, "consent", "read", event.clone()).await?;
    let (current, history) = state
        .consents
        .list(&id, |p| who.policy.consent_spec(p))
        .await?;
    state.audit.record_one(event).await?;
    Ok(json!({ "id": id.as_str(), "consents": current, "history": history }))
}
