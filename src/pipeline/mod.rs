//! The request pipeline: the one place where a request is authenticated, its purpose
//! checked against its token, decided by the policy, checked against legal holds and
//! consent, carried out, and made durable in the audit trail before anything leaves.
//! Every interface calls it (the HTTP API today; the CLI's operator commands and the
//! web console next); interfaces only translate requests and answers.
//! (HashiCorp Vault is the model: `http/` builds a request, `request_handling.go` does
//! token check, ACL, audit and routing.)

pub mod audit;
pub mod consents;
pub mod dsr;
mod error;
pub mod import;
pub mod keys;
pub mod provisions;
pub mod subjects;
pub mod tokens;

pub use error::{reason_code, Error};
pub use subjects::{subject_id, FieldsInput, LookupInput, ReadInput};

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::audit::{Audit, Decision, Event};
use crate::authz::{
    Caller, FailureLimiter, FieldAccess, Policy, PolicySet, TokenError, Tokens, Verdict,
};
use crate::crypto::AuditPublicKey;
use crate::store::Store;
use crate::vault::Vault;

/// The parts of the vault a request can reach.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub vault: Vault,
    pub tokens: Tokens,
    pub store: Store,
    pub audit: Audit,
    pub consents: crate::pipl::Consents,
    pub requests: crate::pipl::Requests,
    pub checkpoint_file: PathBuf,
    pub reports: Arc<crate::audit::Reports>,
    pub policy: Arc<Policy>,
    pub limiter: Arc<FailureLimiter>,
    /// Set while a rotation started over HTTP runs in this process (one at a time).
    pub rotation: Arc<std::sync::atomic::AtomicBool>,
}

/// What an interface knows about a request before the pipeline looks at it. Its `Debug`
/// never shows the bearer secret.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// The `Authorization` header's value, if any.
    pub authorization: Option<&'a str>,
    /// The purpose claimed (`X-Purpose`), if any.
    pub purpose: Option<&'a str>,
    pub request_id: &'a str,
    /// Where the request came from (bad-token limiting).
    pub client: Option<IpAddr>,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("authorization", &self.authorization.map(|_| "<redacted>"))
            .field("purpose", &self.purpose)
            .field("request_id", &self.request_id)
            .field("client", &self.client)
            .finish()
    }
}

impl Pipeline {
    pub async fn verify_audit(&self) -> anyhow::Result<crate::audit::VerifyReport> {
        crate::verify_trail(&self.store, &self.trusted_keys(), &self.checkpoint_file).await
    }

    /// Public keys that verify audit checkpoints (read afresh: a rotation adds one).
    pub fn trusted_keys(&self) -> Vec<AuditPublicKey> {
        crate::trusted_audit_keys(&self.audit, &self.checkpoint_file)
    }

    /// Authentication: a bearer token that is known, unrevoked and unexpired. An address
    /// that keeps presenting bad tokens is delayed and refused.
    pub async fn authenticate(&self, creds: &Credentials<'_>) -> Result<Caller, Error> {
        if self.vault.keys().0.is_sealed() {
            return Err(Error::Sealed);
        }
        let checked = match creds.authorization {
            None => Err(TokenError::Missing),
            Some(value) => match value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
            {
                Some(secret) => self.tokens.authenticate(secret.trim()).await,
                None => Err(TokenError::Invalid),
            },
        };
        match checked {
            Ok(caller) => Ok(caller),
            Err(e @ (TokenError::Store(_) | TokenError::Audit(_))) => Err(e.into()),
            Err(e) => {
                let refused: Error = e.into();
                let code = match &refused {
                    Error::Unauthorized { code, .. } => *code,
                    _ => "other",
                };
                metrics::counter!(crate::metrics::TOKENS_REFUSED, "code" => code).increment(1);
                if let Some(ip) = creds.client {
                    if let Verdict::Limited { retry_after } = self.limiter.failure(ip) {
                        tracing::warn!(client = %ip, "bad tokens over budget; delaying");
                        tokio::time::sleep(self.limiter.config().penalty).await;
                        return Err(Error::TooManyFailures { retry_after });
                    }
                }
                Err(refused)
            }
        }
    }

    /// Authentication, then the purpose: one the token may claim. A claim the token does
    /// not carry is refused and recorded.
    pub async fn authorize(&self, creds: &Credentials<'_>) -> Result<Authorized, Error> {
        let caller = self.authenticate(creds).await?;
        tracing::Span::current().record("token", caller.token_id.as_str());
        let purpose = creds
            .purpose
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                Error::bad_request("purpose_missing", "the X-Purpose header is required")
            })?
            .to_owned();
        let policy = self.policy.current();
        if !caller.purposes.contains(&purpose) {
            // The header is the client's text: only a declared purpose name is recorded.
            let named = if policy.purposes().contains_key(&purpose) {
                purpose.as_str()
            } else {
                "(undeclared)"
            };
            let event = Event::new(
                &caller.token_id,
                &caller.role,
                named,
                creds.request_id,
                "access",
            )
            .outcome(Decision::Deny, "purpose_not_allowed");
            self.audit.record_one(event).await?;
            return Err(Error::Forbidden {
                code: "purpose_not_allowed",
                message: "this token may not claim that purpose".into(),
                field: None,
            });
        }
        Ok(Authorized {
            caller,
            purpose,
            policy,
            request_id: creds.request_id.to_owned(),
        })
    }
}

/// An authenticated caller, the purpose it claims in `X-Purpose` (one its token may
/// claim), and the policy in force for this request.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub caller: Caller,
    pub purpose: String,
    pub policy: Arc<PolicySet>,
    pub request_id: String,
}

impl Authorized {
    /// An audit event by this caller, for this purpose and request.
    pub fn event(&self, action: &str) -> Event {
        Event::new(
            &self.caller.token_id,
            &self.caller.role,
            &self.purpose,
            &self.request_id,
            action,
        )
    }

    /// Records a refusal by policy and returns the 403 to send (503 if the refusal
    /// cannot be recorded).
    pub async fn deny(
        &self,
        pipeline: &Pipeline,
        event: Event,
        object: &str,
        message: String,
    ) -> Error {
        tracing::info!(object, action = %event.action, "denied by policy");
        metrics::counter!(crate::metrics::POLICY_REFUSALS, "role" => self.caller.role.clone())
            .increment(1);
        match pipeline
            .audit
            .record_one(event.outcome(Decision::Deny, "policy_denied"))
            .await
        {
            Ok(()) => Error::denied(message, Some(object)),
            Err(e) => e.into(),
        }
    }

    /// Whether the policy allows `action` on `object` for this caller and purpose.
    pub fn may(&self, object: &str, action: &str) -> bool {
        self.policy
            .allows(&self.caller.role, object, action, &self.purpose)
    }

    /// Refuses with 403 `policy_denied` (recorded in the audit trail as `event`),
    /// naming the object, unless allowed.
    pub async fn require(
        &self,
        pipeline: &Pipeline,
        object: &str,
        action: &str,
        event: Event,
    ) -> Result<(), Error> {
        if self.may(object, action) {
            Ok(())
        } else {
            let message =
                format!("the policy does not allow {action} on {object} for this role and purpose");
            Err(self.deny(pipeline, event, object, message).await)
        }
    }

    pub fn field_access(&self, field: &str) -> Option<FieldAccess> {
        self.policy
            .field_access(&self.caller.role, field, &self.purpose)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_secret_or_a_value() {
        let creds = Credentials {
            authorization: Some("Bearer pvt_secretsecret"),
            purpose: Some("dsr"),
            request_id: "req_1",
            client: None,
        };
        let fields: FieldsInput =
            serde_json::from_str(r#"{"fields": {"phone": "13912345678"}}"#).unwrap();
        let lookup: LookupInput =
            serde_json::from_str(r#"{"field": "id_number", "value": "11010519491231002X"}"#)
                .unwrap();
        let shown = format!("{creds:?} {fields:?} {lookup:?}");
        for secret in ["pvt_secretsecret", "13912345678", "11010519491231002X"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("phone") && shown.contains("id_number"),
            "{shown}"
        );
    }
}
