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
    /// The due date falls in a year `holidays.toml` has no calendar for.
    #[error("policies/holidays.toml has no calendar for {0}: add the year from the State Council's notice, or set dsr_calendar_fallback = true to count weekends only")]
    NoCalendar(i32),
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
    /// Count weekends only in a year the calendar does not list (else refuse).
    fallback: bool,
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

/// `days` working days after `received` on `calendar`; `NoCalendar` for a year on the
/// way that the calendar does not list, unless `fallback` (then weekends only, with a
/// warning).
pub fn due_on(
    calendar: &WorkCalendar,
    received: time::Date,
    days: u32,
    fallback: bool,
) -> Result<time::Date, RequestError> {
    let due = calendar.add_working_days(received, days);
    for year in received.year()..=due.year() {
        if calendar.covers(year) {
            continue;
        }
        if !fallback {
            return Err(RequestError::NoCalendar(year));
        }
        tracing::warn!(
            year,
            "holidays.toml lists no holidays for this year; the due date counts weekends only (dsr_calendar_fallback)"
        );
    }
    Ok(due)
}

impl Requests {
    pub fn new(store: Store, calendar: WorkCalendar, due_working_days: u32) -> Self {
        Self {
            store,
            calendar,
            due_working_days,
            fallback: false,
        }
    }

    /// In a year `holidays.toml` does not list, count weekends only (`fallback`) instead
    /// of refusing to compute a due date.
    pub fn with_calendar_fallback(mut self, fallback: bool) -> Self {
        self.fallback = fallback;
        self
    }

    /// The due date for a request received at `received_ms`. `NoCalendar` when it falls
    /// in a year the calendar does not list (or passes through one), unless the
    /// fallback is on.
    pub fn due_date(&self, received_ms: i64) -> Result<String, RequestError> {
        let received =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(received_ms) * 1_000_000)
                .map(|t| t.date())
                .unwrap_or_else(|_| OffsetDateTime::now_utc().date());
        due_on(
            &self.calendar,
            received,
            self.due_working_days,
            self.fallback,
        )
        .map(|d| d.to_string())
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
            due_date: self.due_date(now)?,
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn a_due_date_in_a_year_without_a_calendar_is_refused_unless_told_to_fall_back() {
        let calendar = WorkCalendar::parse(include_str!("../../policies/holidays.toml")).unwrap();
        // Within 2026: the published holidays count (the National Day week off, the
        // Saturday 10 October worked).
        assert_eq!(
            due_on(&calendar, date!(2026 - 09 - 30), 15, false).unwrap(),
            date!(2026 - 10 - 27)
        );
        // A due date in 2027, which the calendar does not list: refused, naming the year.
        let refused = due_on(&calendar, date!(2026 - 12 - 20), 15, false).unwrap_err();
        assert!(
            matches!(refused, RequestError::NoCalendar(2027)),
            "{refused}"
        );
        assert!(refused.to_string().contains("dsr_calendar_fallback"));
        // Told to fall back: weekends only.
        assert_eq!(
            due_on(&calendar, date!(2026 - 12 - 20), 15, true).unwrap(),
            date!(2027 - 01 - 08)
        );
        // Received in an unlisted year, due in it too.
        assert!(matches!(
            due_on(&calendar, date!(2031 - 03 - 02), 15, false),
            Err(RequestError::NoCalendar(2031))
        ));
    }
}
