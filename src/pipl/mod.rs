//! PIPL obligations: consent (and, to come, retention and data-subject requests).

mod consent;

pub use consent::{
    ConsentCheck, ConsentError, ConsentEvent, ConsentGate, ConsentState, Consents, GrantRequest,
};
