//! Extractors: the authenticated caller with the purpose it claims, and JSON bodies
//! whose parse errors never echo the input.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::{AppState, RequestId};
use crate::audit::{Decision, Event};
use crate::authz::{Caller, FieldAccess, PolicySet, TokenError, Verdict};

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, TokenError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or(TokenError::Missing)?;
    let value = header.to_str().map_err(|_| TokenError::Invalid)?;
    let secret = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(TokenError::Invalid)?
        .trim();
    state.tokens.authenticate(secret).await
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match authenticate(parts, state).await {
            Ok(caller) => {
                tracing::Span::current().record("token", caller.token_id.as_str());
                Ok(caller)
            }
            Err(e @ TokenError::Store(_)) => Err(e.into()),
            Err(e) => {
                let ip = parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(addr)| addr.ip());
                if let Some(ip) = ip {
                    if let Verdict::Limited { retry_after } = state.limiter.failure(ip) {
                        tracing::warn!(client = %ip, "bad tokens over budget; delaying");
                        tokio::time::sleep(state.limiter.config().penalty).await;
                        return Err(ApiError::TooManyFailures { retry_after });
                    }
                }
                Err(e.into())
            }
        }
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
        state: &AppState,
        event: Event,
        object: &str,
        message: String,
    ) -> ApiError {
        tracing::info!(object, action = %event.action, "denied by policy");
        match state
            .audit
            .record_one(event.outcome(Decision::Deny, "policy_denied"))
            .await
        {
            Ok(()) => ApiError::denied(message, Some(object)),
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
        state: &AppState,
        object: &str,
        action: &str,
        event: Event,
    ) -> Result<(), ApiError> {
        if self.may(object, action) {
            Ok(())
        } else {
            let message =
                format!("the policy does not allow {action} on {object} for this role and purpose");
            Err(self.deny(state, event, object, message).await)
        }
    }

    pub fn field_access(&self, field: &str) -> Option<FieldAccess> {
        self.policy
            .field_access(&self.caller.role, field, &self.purpose)
    }
}

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let purpose = parts
            .headers
            .get("x-purpose")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request("purpose_missing", "the X-Purpose header is required")
            })?
            .to_owned();
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let policy = state.policy.current();
        if !caller.purposes.contains(&purpose) {
            // The header is the client's text: only a declared purpose name is recorded.
            let named = if policy.purposes().contains_key(&purpose) {
                purpose.as_str()
            } else {
                "(undeclared)"
            };
            let event = Event::new(&caller.token_id, &caller.role, named, &request_id, "access")
                .outcome(Decision::Deny, "purpose_not_allowed");
            state.audit.record_one(event).await?;
            return Err(ApiError::Forbidden {
                code: "purpose_not_allowed",
                message: "this token may not claim that purpose".into(),
                field: None,
            });
        }
        Ok(Self {
            caller,
            purpose,
            policy,
            request_id,
        })
    }
}

/// A JSON body. Errors say where the body is wrong, never what it contained.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request("body_unreadable", "the request body could not be read")
            }
        })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Data => "does not have the expected shape",
                _ => "is not valid JSON",
            };
            ApiError::bad_request(
                "malformed_body",
                format!(
                    "the request body {what} (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })
    }
}
