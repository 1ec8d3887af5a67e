//! PIPL obligations: consent, data-subject requests and their deadlines and retention.

mod calendar;
mod consent;
mod requests;
mod retention;

pub use calendar::{CalendarError, WorkCalendar};
pub use consent::{
    ConsentCheck, ConsentError, ConsentEvent, ConsentGate, ConsentState, Consents, GrantRequest,
};
pub use requests::{
    Request, RequestError, Requests, DEFAULT_DUE_WORKING_DAYS, KINDS, REJECTION_REASONS,
};
pub use retention::{Retention, RetentionError, SweepItem, SweepReport};
