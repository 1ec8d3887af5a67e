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

/// What a close relative may ask for a deceased subject (PIPL Art. 49): access, a copy,
/// correction, deletion.
pub const RELATIVE_KINDS: &[&str] = &["access", "export", "correct", "delete"];

/// Close relatives (PRC Civil Code Art. 1045): spouse, parents, children, siblings,
/// grandparents (paternal and maternal), grandchildren.
pub const CLOSE_RELATIVES: &[&str] = &[
    "spouse",
    "parent",
    "child",
    "sibling",
    "grandparent",
    "grandchild",
];

/// A close relative making a request for a deceased subject.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requester {
    /// One of [`CLOSE_RELATIVES`].
    pub relationship: String,
    /// The reference of the evidence of the relationship (letters, digits, `-`, `_`).
    pub evidence: String,
}

/// A reference code: 1 to 64 letters, digits, `-` or `_` (never free text).
pub fn valid_reference(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

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
    /// A close relative's request for a subject not recorded as deceased.
    #[error("a close relative may make a request only for a subject recorded as deceased (PIPL Art. 49)")]
    NotDeceased,
    /// The subject refused, while alive, that close relatives exercise its rights.
    #[error("the subject arranged, while alive, that close relatives may not exercise its rights (PIPL Art. 49)")]
    RelativesRefused,
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
    /// A close relative's relationship, when the request is theirs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester_evidence: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Requests {
    store: Store,
    calendar: WorkCalendar,
    due_working_days: u32,
    /// Count weekends only in a year the calendar does not list (else refuse).
    fallback: bool,
    /// A bulk export of more subjects than this waits for a second person's approval.
    bulk_export_threshold: usize,
}

/// Subjects a bulk export may hold before it needs a second person's approval.
pub const DEFAULT_BULK_EXPORT_THRESHOLD: usize = 100;

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
        requester: r.requester,
        requester_evidence: r.requester_evidence,
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

/// A warning for the operator when, within 30 days of `today`, requests will start to
/// fall due in a year `calendar` does not list: from which day, which year, and what
/// happens then (refused with `calendar_missing`, or, with the `fallback`, due dates that
/// count weekends only). `None` when the calendar reaches far enough.
pub fn calendar_warning(
    calendar: &WorkCalendar,
    today: time::Date,
    days: u32,
    fallback: bool,
) -> Option<String> {
    const AHEAD_DAYS: i64 = 30;
    (0..=AHEAD_DAYS).find_map(|n| {
        let received = today.checked_add(time::Duration::days(n))?;
        // The first day `due_on` itself would refuse, and the year it would name.
        let Err(RequestError::NoCalendar(year)) = due_on(calendar, received, days, false) else {
            return None;
        };
        Some(if fallback {
            format!(
                "policies/holidays.toml has no calendar for {year}: from {received}, due dates \
                 of data-subject requests count weekends only (dsr_calendar_fallback); add \
                 {year} from the State Council's notice"
            )
        } else {
            format!(
                "policies/holidays.toml has no calendar for {year}: from {received}, new \
                 data-subject requests will be refused (503 calendar_missing); add {year} from \
                 the State Council's notice, or set dsr_calendar_fallback = true"
            )
        })
    })
}

impl Requests {
    pub fn new(store: Store, calendar: WorkCalendar, due_working_days: u32) -> Self {
        Self {
            store,
            calendar,
            due_working_days,
            fallback: false,
            bulk_export_threshold: DEFAULT_BULK_EXPORT_THRESHOLD,
        }
    }

    /// A bulk export of more than `n` subjects waits for a second person's approval.
    pub fn with_bulk_export_threshold(mut self, n: usize) -> Self {
        self.bulk_export_threshold = n;
        self
    }

    pub fn bulk_export_threshold(&self) -> usize {
        self.bulk_export_threshold
    }

    /// In a year `holidays.toml` does not list, count weekends only (`fallback`) instead
    /// of refusing to compute a due date.
    pub fn with_calendar_fallback(mut self, fallback: bool) -> Self {
        self.fallback = fallback;
        self
    }

    /// A warning for the operator when new requests will soon fall due in a year
    /// `holidays.toml` does not list (see [`calendar_warning`]).
    pub fn calendar_warning(&self, today: time::Date) -> Option<String> {
        calendar_warning(&self.calendar, today, self.due_working_days, self.fallback)
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

    /// Records a request: the subject's own, or (`requester`) a close relative's for a
    /// deceased subject who did not refuse it while alive.
    pub async fn create(
        &self,
        subject: &SubjectId,
        kind: &str,
        actor: &str,
        requester: Option<&Requester>,
    ) -> Result<Request, RequestError> {
        if !KINDS.contains(&kind) {
            return Err(RequestError::Invalid(format!(
                "kind must be one of: {}",
                KINDS.join(", ")
            )));
        }
        if let Some(r) = requester {
            if !CLOSE_RELATIVES.contains(&r.relationship.as_str()) {
                return Err(RequestError::Invalid(format!(
                    "relationship must be one of: {}",
                    CLOSE_RELATIVES.join(", ")
                )));
            }
            if !valid_reference(&r.evidence) {
                return Err(RequestError::Invalid(
                    "evidence must be a reference: 1 to 64 letters, digits, - or _".into(),
                ));
            }
            if !RELATIVE_KINDS.contains(&kind) {
                return Err(RequestError::Invalid(format!(
                    "a close relative may ask for: {}",
                    RELATIVE_KINDS.join(", ")
                )));
            }
        }
        if !self.store.subject_active(subject.as_str()).await? {
            return Err(RequestError::SubjectNotFound);
        }
        if requester.is_some() {
            let status = self.store.subject_status(subject.as_str()).await?;
            if status.deceased_at.is_none() {
                return Err(RequestError::NotDeceased);
            }
            if status.relatives_refused {
                return Err(RequestError::RelativesRefused);
            }
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
            requester: requester.map(|r| r.relationship.clone()),
            requester_evidence: requester.map(|r| r.evidence.clone()),
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
        // The operator is warned 30 days ahead of the first refusal, with its day.
        assert_eq!(
            calendar_warning(&calendar, date!(2026 - 11 - 01), 15, false),
            None
        );
        let warning = calendar_warning(&calendar, date!(2026 - 11 - 20), 15, false).unwrap();
        assert!(warning.contains("no calendar for 2027"), "{warning}");
        assert!(warning.contains("from 2026-12-11"), "{warning}");
        // ...which is the first day refused.
        assert!(due_on(&calendar, date!(2026 - 12 - 10), 15, false).is_ok());
        assert!(due_on(&calendar, date!(2026 - 12 - 11), 15, false).is_err());
        assert!(warning.contains("calendar_missing"), "{warning}");
        let fallback = calendar_warning(&calendar, date!(2026 - 12 - 20), 15, true).unwrap();
        assert!(fallback.contains("from 2026-12-20"), "{fallback}");
        assert!(fallback.contains("weekends only"), "{fallback}");
        // Received in an unlisted year, due in it too.
        assert!(matches!(
            due_on(&calendar, date!(2031 - 03 - 02), 15, false),
            Err(RequestError::NoCalendar(2031))
        ));
    }
}
