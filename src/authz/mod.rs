//! Who is calling and what they may do: bearer tokens, the casbin policy, and the
//! bad-token limiter.

mod limit;
mod policy;
mod tokens;

pub use limit::{FailureLimiter, LimitConfig, Verdict};
pub(crate) use policy::parse_purposes;
pub use policy::{
    Explanation, FieldAccess, LegalBasis, Policy, PolicyError, PolicySet, PurposeSpec, Reload,
    SeparateConsent, ACTIONS, SPECIAL_OBJECTS,
};
pub use tokens::{
    parse_ttl, well_formed_secret, Caller, IssueRequest, TokenError, TokenInfo, Tokens,
    DEFAULT_MAX_TTL,
};
