//! Why the pipeline refused or failed a request: one error type with stable machine
//! codes, the same for every interface. The HTTP layer maps each kind to a status
//! (`http/error.rs`); the internal cause is logged there, never sent, never a value.

use crate::authz::TokenError;
use crate::classify::ValidationError;
use crate::vault::VaultError;

#[derive(Debug)]
pub enum Error {
    Unauthorized {
        code: &'static str,
        message: &'static str,
    },
    Forbidden {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    TooManyFailures {
        retry_after: u64,
    },
    NotFound {
        code: &'static str,
        message: &'static str,
    },
    Invalid(ValidationError),
    BadRequest {
        code: &'static str,
        message: String,
    },
    /// The request clashes with work under way (409).
    Conflict {
        code: &'static str,
        message: String,
    },
    PayloadTooLarge,
    /// The client did not send its whole request body in time.
    RequestTimeout,
    Unavailable,
    /// The vault's configuration does not let it do this yet (503): the message says
    /// what an operator must add.
    NotConfigured {
        code: &'static str,
        message: String,
    },
    /// A master-key version the data needs is not loaded on this node.
    KeyUnavailable,
    /// The vault is sealed: its external key source has not confirmed the master keys
    /// for longer than it may hold them.
    Sealed,
    /// The audit event could not be written: nothing is handed out or changed.
    AuditUnavailable,
    /// A stored ciphertext failed authentication: answered as an error, never as data.
    Integrity,
    Internal(String),
}

impl Error {
    pub fn subject_not_found() -> Self {
        Self::NotFound {
            code: "subject_not_found",
            message: "no such subject",
        }
    }

    /// Denied by the access policy; names the field or object when there is one.
    pub fn denied(message: impl Into<String>, field: Option<&str>) -> Self {
        Self::Forbidden {
            code: "policy_denied",
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    /// A store error: 503 `store_unavailable` when the store cannot be reached or is
    /// shutting down or overloaded (the request may be retried, and the vault serves
    /// again by itself once the store answers); otherwise an internal error.
    pub fn store(e: crate::store::StoreError) -> Self {
        if store_unreachable(&e) {
            tracing::warn!(error = %e, "store unavailable");
            Self::Unavailable
        } else {
            Self::internal(e)
        }
    }
}

/// Whether a store error means the store cannot be reached now (as opposed to a fault
/// in what was asked of it).
fn store_unreachable(e: &crate::store::StoreError) -> bool {
    let crate::store::StoreError::Db(e) = e else {
        return false;
    };
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL: connection exceptions (08), operator intervention such as a
        // shutdown (57), insufficient resources (53). SQLite: busy, locked, I/O error,
        // disk full, cannot open (5, 6, 10, 13, 14 and their extended codes).
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("57")
                || c.starts_with("53")
                || c.parse::<i64>()
                    .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 13 | 14))
        }),
        _ => false,
    }
}

impl From<crate::audit::AuditError> for Error {
    fn from(e: crate::audit::AuditError) -> Self {
        tracing::error!(error = %e, "audit event not written; failing closed");
        Self::AuditUnavailable
    }
}

impl From<crate::audit::CommitError> for Error {
    fn from(e: crate::audit::CommitError) -> Self {
        match e {
            crate::audit::CommitError::Audit(a) => a.into(),
            crate::audit::CommitError::Change(s) => Self::store(s),
        }
    }
}

/// The stable reason code an audit event records for a failed operation.
pub fn reason_code(e: &VaultError) -> &'static str {
    match e {
        VaultError::NotFound => "subject_not_found",
        VaultError::UnknownCollection => "collection_not_found",
        VaultError::Invalid(v) => v.rule,
        VaultError::Integrity { .. } => "integrity_error",
        VaultError::Audit(_) => "audit_unavailable",
        VaultError::KeyUnavailable(_) => "key_unavailable",
        _ => "internal",
    }
}

impl From<VaultError> for Error {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NotFound => Self::NotFound {
                code: "subject_not_found",
                message: "no such subject",
            },
            VaultError::UnknownCollection => Self::NotFound {
                code: "collection_not_found",
                message: "no such record collection in the classification",
            },
            VaultError::Invalid(v) => Self::Invalid(v),
            VaultError::Integrity { .. } => Self::Integrity,
            VaultError::Audit(a) => a.into(),
            VaultError::Store(s) => Self::store(s),
            VaultError::KeyUnavailable(_) => Self::KeyUnavailable,
            other => Self::internal(other),
        }
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Missing => Self::Unauthorized {
                code: "token_missing",
                message: "an Authorization: Bearer token is required",
            },
            TokenError::Invalid => Self::Unauthorized {
                code: "token_invalid",
                message: "the bearer token is not valid",
            },
            TokenError::Expired => Self::Unauthorized {
                code: "token_expired",
                message: "the bearer token has expired",
            },
            TokenError::Revoked => Self::Unauthorized {
                code: "token_revoked",
                message: "the bearer token has been revoked",
            },
            TokenError::BadRequest(m) => Self::bad_request("invalid_token_request", m),
            TokenError::Store(s) => Self::store(s),
            TokenError::Audit(a) => a.into(),
        }
    }
}

/// For interfaces that print (the command line): the stable code and what happened,
/// never a value.
impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unauthorized { code, message } | Self::NotFound { code, message } => {
                write!(f, "{code}: {message}")
            }
            Self::Forbidden { code, message, .. }
            | Self::BadRequest { code, message }
            | Self::Conflict { code, message } => write!(f, "{code}: {message}"),
            Self::TooManyFailures { .. } => f.write_str("too_many_failures"),
            Self::Invalid(v) => write!(f, "{}: {}: {}", v.rule, v.field, v.message),
            Self::PayloadTooLarge => f.write_str("payload_too_large"),
            Self::RequestTimeout => f.write_str("request_timeout"),
            Self::Unavailable => f.write_str("unavailable: the store cannot be reached"),
            Self::NotConfigured { code, message } => write!(f, "{code}: {message}"),
            Self::KeyUnavailable => {
                f.write_str("key_unavailable: a master key version is not loaded on this node")
            }
            Self::Sealed => f.write_str(
                "key_unavailable: the master key source has not confirmed the keys lately (sealed)",
            ),
            Self::AuditUnavailable => f.write_str(
                "audit_unavailable: the audit trail cannot be written; nothing was changed",
            ),
            Self::Integrity => {
                f.write_str("integrity_error: stored data failed its integrity check")
            }
            Self::Internal(cause) => write!(f, "internal: {cause}"),
        }
    }
}
