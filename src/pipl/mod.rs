//! PIPL obligations: consent, data-subject requests and their deadlines, retention, and
//! the recipients personal information may be provided to.

mod calendar;
mod consent;
mod inventory;
mod recipients;
mod requests;
mod retention;

pub use calendar::{CalendarError, WorkCalendar};
pub use consent::{
    ConsentCheck, ConsentError, ConsentEvent, ConsentGate, ConsentState, Consents, GrantRequest,
};
pub use inventory::{processing_record, ProcessingRecord};
pub use recipients::{
    consent_purpose, Pipia, Recipient, RecipientKind, Recipients, TransferMechanism, MAINLAND,
};
pub use requests::{
    valid_reference, Request, RequestError, Requester, Requests, CLOSE_RELATIVES,
    DEFAULT_BULK_EXPORT_THRESHOLD, DEFAULT_DUE_WORKING_DAYS, KINDS, REJECTION_REASONS,
};
pub use retention::{Retention, RetentionError, SweepItem, SweepReport};
