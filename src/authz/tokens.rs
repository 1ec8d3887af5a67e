use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde::Serialize;
use zeroize::Zeroizing;

use super::PolicySet;
use crate::audit::{Audit, AuditError, CommitError, Event};
use crate::cache::Cache;
use crate::crypto::{ct_eq, random_bytes, random_id, Keys};
use crate::store::{Store, StoreError, TokenRow};

/// Prefix of every bearer secret, so leaked secrets are easy to recognise and scan for.
const SECRET_PREFIX: &str = "pvt_";
/// Longest lifetime a token may be given unless configured otherwise.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub role: String,
    pub purposes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("the bearer token is not valid")]
    Invalid,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token has been revoked")]
    Revoked,
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit event could not be written, so nothing was changed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl From<CommitError> for TokenError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Audit(a) => Self::Audit(a),
            CommitError::Change(s) => Self::Store(s),
        }
    }
}

/// What an administrator asks for when issuing a token.
#[derive(Debug)]
pub struct IssueRequest {
    pub role: String,
    pub purposes: Vec<String>,
    pub ttl: Duration,
    pub description: String,
    /// Who issued it: a token id, or `cli` for the operator command line.
    pub created_by: String,
}

/// A token's details, never its secret.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub role: String,
    pub purposes: Vec<String>,
    pub description: String,
    pub created_by: String,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
    pub status: &'static str,
}

impl TokenInfo {
    fn from_row(row: TokenRow, now: i64) -> Self {
        let status = if row.revoked_at.is_some() {
            "revoked"
        } else if row.expires_at <= now {
            "expired"
        } else {
            "active"
        };
        Self {
            purposes: serde_json::from_str(&row.purposes).unwrap_or_default(),
            id: row.id,
            role: row.role,
            description: row.description,
            created_by: row.created_by,
            created_at: crate::store::rfc3339(row.created_at),
            expires_at: crate::store::rfc3339(row.expires_at),
            revoked_at: row.revoked_at.map(crate::store::rfc3339),
            status,
        }
    }
}

/// A verified token as cached: who it is and until when.
#[derive(Debug, Clone)]
struct Verified {
    caller: Caller,
    expires_at: i64,
}

/// How long a verified token is trusted without asking the store again. Revocation does
/// not wait for this: it is forgotten at once here and through the change feed elsewhere.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);
const TOKEN_CACHE_MAX: usize = 10_000;

/// Issues and checks bearer tokens. Secrets are 256-bit random, shown once, stored
/// only as a keyed HMAC-SHA256 hash. Verified tokens are cached by that hash.
#[derive(Debug, Clone)]
pub struct Tokens {
    store: Store,
    audit: Audit,
    keys: Arc<Keys>,
    max_ttl: Duration,
    cache: Arc<Cache<Vec<u8>, Verified>>,
    clock: crate::clock::Clock,
}

impl Tokens {
    pub fn new(store: Store, audit: Audit, keys: Arc<Keys>, max_ttl: Duration) -> Self {
        Self {
            store,
            audit,
            keys,
            max_ttl,
            cache: Arc::new(Cache::new("tokens", TOKEN_CACHE_MAX, TOKEN_CACHE_TTL)),
            clock: crate::clock::Clock::system(),
        }
    }

    /// Reads the time from `clock` (issue and expiry times, expiry checks).
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Forgets a token (revoked here or elsewhere).
    pub fn forget(&self, token_id: &str) {
        self.cache.forget(|_, v| v.caller.token_id == token_id);
    }

    pub(crate) fn cache_enabled(&self, on: bool) {
        self.cache.set_enabled(on);
    }

    /// Issues a token for a role the policy knows, for purposes that role may claim;
    /// `event` (completed with the new token's id) is committed with it.
    pub async fn issue(
        &self,
        req: IssueRequest,
        policy: &PolicySet,
        event: Event,
    ) -> Result<(TokenInfo, Zeroizing<String>), TokenError> {
        let Some(claimable) = policy.claimable(&req.role) else {
            let roles: Vec<&str> = policy.roles().map(String::as_str).collect();
            return Err(TokenError::BadRequest(format!(
                "unknown role (roles in the policy: {})",
                roles.join(", ")
            )));
        };
        if req.purposes.is_empty() {
            return Err(TokenError::BadRequest(
                "at least one purpose is required".into(),
            ));
        }
        if let Some(p) = req.purposes.iter().find(|p| !claimable.contains(*p)) {
            let may: Vec<&str> = claimable.iter().map(String::as_str).collect();
            return Err(TokenError::BadRequest(format!(
                "role {} may not claim purpose {p:?} (it may claim: {})",
                req.role,
                may.join(", ")
            )));
        }
        if req.ttl.is_zero() || req.ttl > self.max_ttl {
            return Err(TokenError::BadRequest(format!(
                "the lifetime must be between 1 second and {} seconds",
                self.max_ttl.as_secs()
            )));
        }
        if req.description.chars().count() > 200 || req.description.chars().any(char::is_control) {
            return Err(TokenError::BadRequest(
                "the description must be at most 200 characters, without control characters".into(),
            ));
        }
        let mut purposes = req.purposes.clone();
        purposes.sort();
        purposes.dedup();
        let secret = Zeroizing::new(format!(
            "{SECRET_PREFIX}{}",
            B64URL.encode(Zeroizing::new(random_bytes::<32>()).as_slice())
        ));
        let now = self.clock.now_ms();
        let row = TokenRow {
            id: random_id("tok"),
            role: req.role,
            purposes: serde_json::to_string(&purposes).unwrap_or_else(|_| "[]".into()),
            description: req.description,
            created_by: req.created_by,
            created_at: now,
            expires_at: now.saturating_add(req.ttl.as_millis() as i64),
            revoked_at: None,
        };
        let event = event.target(&row.id);
        let op = self
            .store
            .insert_token_op(row.clone(), self.keys.token_hash(&secret));
        self.audit.record_with(vec![event], op).await?;
        Ok((TokenInfo::from_row(row, now), secret))
    }

    /// Checks a presented secret: known, unrevoked and unexpired.
    pub async fn authenticate(&self, secret: &str) -> Result<Caller, TokenError> {
        if !well_formed_secret(secret) {
            return Err(TokenError::Invalid);
        }
        // One hash per live token-hash key version (one, except during a rotation).
        let hashes = self.keys.token_hashes(secret);
        for (i, (_, hash)) in hashes.iter().enumerate() {
            if let Some(v) = self.cache.get(hash) {
                if i > 0 {
                    // Verified under an older token-hash key: go to the store, which
                    // moves the token to the newest key (and caches it under that).
                    break;
                }
                if v.expires_at <= self.clock.now_ms() {
                    return Err(TokenError::Expired);
                }
                return Ok(v.caller);
            }
        }
        let generation = self.cache.generation();
        let mut found = None;
        for (i, (_, hash)) in hashes.iter().enumerate() {
            if let Some((row, stored)) = self.store.token_by_hash(hash).await? {
                if ct_eq(&stored, hash) {
                    found = Some((i, row, hash.clone()));
                    break;
                }
            }
        }
        let (under, row, hash) = found.ok_or(TokenError::Invalid)?;
        if row.revoked_at.is_some() {
            return Err(TokenError::Revoked);
        }
        if row.expires_at <= self.clock.now_ms() {
            return Err(TokenError::Expired);
        }
        if under > 0 {
            // Hashed under an older key: move it to the newest, so that the old key can
            // be destroyed. Not on the request's path; a failure is tried again on the
            // token's next use.
            if let Some(newest) = hashes.first().cloned() {
                let (store, id) = (self.store.clone(), row.id.clone());
                let op = store.rehash_token_op(&id, hash.clone(), newest);
                tokio::spawn(async move {
                    if let Err(e) = store.transact(op).await {
                        tracing::warn!(token = %id, error = %e, "a token could not be moved to the newest token-hash key");
                    }
                });
            }
        }
        let caller = Caller {
            purposes: serde_json::from_str(&row.purposes).unwrap_or_default(),
            token_id: row.id,
            role: row.role,
        };
        self.cache.insert(
            generation,
            hash,
            Verified {
                caller: caller.clone(),
                expires_at: row.expires_at,
            },
        );
        Ok(caller)
    }

    pub async fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let now = self.clock.now_ms();
        Ok(self
            .store
            .tokens()
            .await?
            .into_iter()
            .map(|r| TokenInfo::from_row(r, now))
            .collect())
    }

    /// Revokes a token, committed with `event`; false if there is no unrevoked token
    /// with that id (then nothing is recorded). Refused at once on this node, and on
    /// others within the change feed's bound.
    pub async fn revoke(&self, id: &str, event: Event) -> Result<bool, TokenError> {
        let result = self
            .audit
            .record_with(vec![event], self.store.revoke_token_op(id))
            .await;
        self.forget(id);
        match result {
            Ok(()) => Ok(true),
            Err(CommitError::Change(StoreError::NotFound)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether a presented secret has the shape of one the vault issues (`pvt_` and 43
/// base64url characters, 256 bits); only such a secret is looked up.
pub fn well_formed_secret(secret: &str) -> bool {
    secret
        .strip_prefix(SECRET_PREFIX)
        .is_some_and(|body| body.len() == 43 && B64URL.decode(body).is_ok())
}

/// Parses a lifetime such as `90s`, `15m`, `1h`, `30d`.
pub fn parse_ttl(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.len().checked_sub(1)?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn ttl() {
        assert_eq!(parse_ttl("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2d"), Some(Duration::from_secs(172800)));
        assert_eq!(parse_ttl("2w"), None);
        assert_eq!(parse_ttl("h"), None);
        assert_eq!(parse_ttl(""), None);
    }
}
