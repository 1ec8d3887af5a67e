//! Data-subject requests (PIPL Art. 44-50): recorded with the time received and a due
//! date (working days on the mainland calendar), moved open → in_progress → done, or
//! rejected with a stated reason (Art. 50).

use serde::Serialize;
use time::OffsetDateTime;

use super::WorkCalendar;
use crate::crypto::random_id;
use crate::store::{now_ms, rfc3339, RequestRow, Store, StoreError};
use crate::vault::SubjectId;

/// Request kinds a subject may make.
pub const KINDS: &[&str] = &["access", "export", "correct", "delete", "withdraw"];

/// Reasons a request may be rejected for. Codes, not free text, so that no personal
/// information ends up in the request table.
pub const REJECTION_REASONS: &[&str] = &[
    "identity_not_verified",
    "not_the_subject",
    "manifestly_unfounded",
    "excessive_or_repeated",
    "legal_obligation_to_retain",
    "law_or_regulation_prevents",
    "duplicate_request",
];

/// Default deadline: 15 working days.
pub const DEFAULT_DUE_WORKING_DAYS: u32 = 15;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no such subject")]
    SubjectNotFound,
    #[error("no such request")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("a request that is {from} cannot become {to}")]
    BadTransition { from: String, to: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request as answered to callers.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub id: String,
    pub subject: String,
    pub kind: String,
    pub received: String,
    pub due: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub overdue: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Requests {
    store: Store,
    calendar: WorkCalendar,
    due_working_days: u32,
}

fn today() -> String {
    OffsetDateTime::now_utc().date().to_string()
}

fn to_request(r: RequestRow) -> Request {
    let open = r.status == "open" || r.status == "in_progress";
    Request {
        overdue: open && r.due_date < today(),
        id: r.id,
        subject: r.subject_id,
        kind: r.kind,
        received: rfc3339(r.received_at),
        due: r.due_date,
        status: r.status,
        reason: r.reason,
        closed: r.closed_at.map(rfc3339),
    }
}

impl Requests {
    pub fn new(store: Store, calendar: WorkCalendar, due_working_days: u32) -> Self {
        Self {
            store,
            calendar,
            due_working_days,
        }
    }

    /// The due date for a request received at `received_ms`.
    pub fn due_date(&self, received_ms: i64) -> String {
        let received =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(received_ms) * 1_000_000)
                .map(|t| t.date())
                .unwrap_or_else(|_| OffsetDateTime::now_utc().date());
        let due = self
            .calendar
            .add_working_days(received, self.due_working_days);
        if !self.calendar.covers(due.year()) {
            tracing::warn!(
                year = due.year(),
                "holidays.toml lists no holidays for this year; the due date counts weekends only"
            );
        }
        due.to_string()
    }

    pub async fn create(
        &self,
        subject: &SubjectId,
        kind: &str,
        actor: &str,
    ) -> Result<Request, RequestError> {
        if !KINDS.contains(&kind) {
            return Err(RequestError::Invalid(format!(
                "kind must be one of: {}",
                KINDS.join(", ")
            )));
        }
        if !self.store.subject_active(subject.as_str()).await? {
            return Err(RequestError::SubjectNotFound);
        }
        let now = now_ms();
        let row = RequestRow {
            id: random_id("dsr"),
            subject_id: subject.as_str().to_owned(),
            kind: kind.to_owned(),
            received_at: now,
            due_date: self.due_date(now),
            status: "open".into(),
            reason: None,
            created_by: actor.to_owned(),
            updated_at: now,
            closed_at: None,
        };
        self.store.insert_request(&row).await?;
        Ok(to_request(row))
    }

    pub async fn get(&self, id: &str) -> Result<Request, RequestError> {
        self.store
            .request(id)
            .await?
            .map(to_request)
            .ok_or(RequestError::NotFound)
    }

    pub async fn list(&self, overdue_only: bool) -> Result<Vec<Request>, RequestError> {
        let today = today();
        let rows = self
            .store
            .requests(overdue_only.then_some(today.as_str()))
            .await?;
        Ok(rows.into_iter().map(to_request).collect())
    }

    /// Moves a request on: `in_progress`, `done`, or `rejected` (with a reason code).
    pub async fn transition(
        &self,
        id: &str,
        to: &str,
        reason: Option<&str>,
    ) -> Result<Request, RequestError> {
        let current = self.get(id).await?;
        let from: &[&str] = match to {
            "in_progress" => &["open"],
            "done" => &["open", "in_progress"],
            "rejected" => &["open", "in_progress"],
            _ => {
                return Err(RequestError::Invalid(
                    "status must be in_progress, done or rejected".into(),
                ))
            }
        };
        let reason = match (to, reason) {
            ("rejected", Some(r)) if REJECTION_REASONS.contains(&r) => Some(r),
            ("rejected", _) => {
                return Err(RequestError::Invalid(format!(
                    "a rejection needs a reason, one of: {}",
                    REJECTION_REASONS.join(", ")
                )))
            }
            (_, Some(_)) => {
                return Err(RequestError::Invalid(
                    "only a rejection takes a reason".into(),
                ))
            }
            (_, None) => None,
        };
        let closes = to != "in_progress";
        if !self
            .store
            .transition_request(id, from, to, reason, now_ms(), closes)
            .await?
        {
            return Err(RequestError::BadTransition {
                from: current.status,
                to: to.to_owned(),
            });
        }
        self.get(id).await
    }
}
