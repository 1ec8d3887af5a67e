//! PIPL obligations: consent, data-subject requests and their deadlines (retention to come).

mod calendar;
mod consent;
mod requests;

pub use calendar::{CalendarError, WorkCalendar};
pub use consent::{
    ConsentCheck, ConsentError, ConsentEvent, ConsentGate, ConsentState, Consents, GrantRequest,
};
pub use requests::{
    Request, RequestError, Requests, DEFAULT_DUE_WORKING_DAYS, KINDS, REJECTION_REASONS,
};
