//! Who is calling: bearer tokens. (The casbin policy layer comes on top of this.)

mod tokens;

pub use tokens::{parse_ttl, Caller, IssueRequest, TokenError, TokenInfo, Tokens, MAX_TTL};

/// Roles a token may carry (SPEC section 4).
pub const ROLES: &[&str] = &[
    "onboarding",
    "customer_service",
    "billing",
    "marketing",
    "dsr_handler",
    "auditor",
    "admin",
];

/// Purposes a token may be allowed to claim (SPEC sections 4 and 6).
pub const PURPOSES: &[&str] = &[
    "service",
    "billing",
    "marketing",
    "analytics",
    "cross_border",
    "dsr",
    "audit",
    "admin",
];
