//! Bearer tokens: issue, list and revoke (admin only), decided and audited here.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{Authorized, Error, Pipeline};
use crate::authz::IssueRequest;

/// A token to issue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueInput {
    pub role: String,
    pub purposes: Vec<String>,
    pub ttl_seconds: u64,
    #[serde(default)]
    pub description: String,
}

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
/// Issues a token; the answer carries the secret, shown this once.
pub async fn issue(state: &Pipeline, who: &Authorized, body: IssueInput) -> Result<Value, Error> {
    let event = who.event("token.issue");
    who.require(state, "tokens", "admin", event.clone()).await?;
    let (info, secret) = state
        .tokens
        .issue(
            IssueRequest {
                role: body.role,
                purposes: body.purposes,
                ttl: Duration::from_secs(body.ttl_seconds),
                description: body.description,
                created_by: who.caller.token_id.clone(),
            },
            &who.policy,
            event,
        )
        .await?;
    tracing::info!(token = %info.id, token_role = %info.role, "token issued");
    let mut answer = serde_json::to_value(&info).map_err(Error::internal)?;
    answer["token"] = json!(secret.as_str());
    Ok(answer)
}

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
pub async fn list(state: &Pipeline, who: &Authorized) -> Result<Value, Error> {
    let event = who.event("token.list");
    who.require(state, "tokens", "admin", event.clone()).await?;
    state.audit.record_one(event).await?;
    let tokens = state.tokens.list().await?;
    Ok(json!({ "tokens": tokens }))
}

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, purpose = %who.purpose, token_id = %id))]
pub async fn revoke(state: &Pipeline, who: &Authorized, id: &str) -> Result<Value, Error> {
    let event = who.event("token.revoke").target(id);
    who.require(state, "tokens", "admin", event.clone()).await?;
    if state.tokens.revoke(id, event.clone()).await? {
        tracing::info!("token revoked");
        Ok(json!({ "id": id, "revoked": true }))
    } else {
        state
            .audit
            .record_one(event.outcome(crate::audit::Decision::Error, "token_not_found"))
            .await?;
        Err(Error::NotFound {
            code: "token_not_found",
            message: "no active token with that id",
        })
    }
}

/// Signing in to an interface for people (the web console): the token must be valid and
/// able to claim one of `purposes`. The sign-in is recorded under the token's own name,
/// for the first of them it may claim, which is returned.
pub async fn sign_in(
    state: &Pipeline,
    creds: &super::Credentials<'_>,
    purposes: &[&'static str],
) -> Result<&'static str, Error> {
    let caller = state.authenticate(creds).await?;
    let Some(purpose) = purposes
        .iter()
        .copied()
        .find(|p| caller.purposes.iter().any(|c| c == p))
    else {
        return Err(Error::Forbidden {
            code: "purpose_not_allowed",
            message: "this token may claim none of the purposes this interface serves".into(),
            field: None,
        });
    };
    let event = crate::audit::Event::new(
        &caller.token_id,
        &caller.role,
        purpose,
        creds.request_id,
        "console.sign_in",
    );
    state.audit.record_one(event).await?;
    Ok(purpose)
}
