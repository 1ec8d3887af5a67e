use sqlx::Row;

use super::write::{op, WriteOp};
use super::{Store, StoreError};

/// A data-subject request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    pub id: String,
    pub subject_id: String,
    pub kind: String,
    pub received_at: i64,
    pub due_date: String,
    pub status: String,
    pub reason: Option<String>,
    pub created_by: String,
    pub updated_at: i64,
    pub closed_at: Option<i64>,
    /// A close relative's relationship to a deceased subject (PIPL Art. 49), when the
    /// request is theirs; `None`: the subject's own.
    pub requester: Option<String>,
    /// The reference of the evidence of that relationship.
    pub requester_evidence: Option<String>,
}

const COLUMNS: &str = "id, subject_id, kind, received_at, due_date, status, reason, created_by, \
     updated_at, closed_at, requester, requester_evidence";

/// A subject's state under PIPL Art. 49: deceased (when recorded, and the evidence's
/// reference), and whether the subject refused, while alive, that close relatives
/// exercise its rights.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SubjectStatus {
    pub deceased_at: Option<i64>,
    pub deceased_evidence: Option<String>,
    pub relatives_refused: bool,
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<RequestRow, sqlx::Error> {
    Ok(RequestRow {
        id: r.try_get(0)?,
        subject_id: r.try_get(1)?,
        kind: r.try_get(2)?,
        received_at: r.try_get(3)?,
        due_date: r.try_get(4)?,
        status: r.try_get(5)?,
        reason: r.try_get(6)?,
        created_by: r.try_get(7)?,
        updated_at: r.try_get(8)?,
        closed_at: r.try_get(9)?,
        requester: r.try_get(10)?,
        requester_evidence: r.try_get(11)?,
    })
}

impl Store {
    /// The subject's Art. 49 state (the default for a subject never marked).
    pub async fn subject_status(&self, subject: &str) -> Result<SubjectStatus, StoreError> {
        let row: Option<(Option<i64>, Option<String>, String)> = sqlx::query_as(
            "SELECT deceased_at, deceased_evidence, relatives FROM subject_status WHERE subject_id = $1",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map_or_else(SubjectStatus::default, |(at, evidence, relatives)| {
                SubjectStatus {
                    deceased_at: at,
                    deceased_evidence: evidence,
                    relatives_refused: relatives == "refused",
                }
            }),
        )
    }

    /// Records that the subject has died (`evidence`: a reference), to commit with its
    /// audit event. `NotFound` for no such subject, `Conflict` if already recorded.
    pub fn set_deceased_op(&self, subject: &str, evidence: &str, at: i64) -> WriteOp {
        let (subject, evidence) = (subject.to_owned(), evidence.to_owned());
        op(move |conn| {
            let (subject, evidence) = (subject.clone(), evidence.clone());
            Box::pin(async move {
                active_subject(conn, &subject).await?;
                sqlx::query(
                    "INSERT INTO subject_status (subject_id, relatives) VALUES ($1, 'allowed') \
                     ON CONFLICT (subject_id) DO NOTHING",
                )
                .bind(subject.as_str())
                .execute(&mut *conn)
                .await?;
                let set = sqlx::query(
                    "UPDATE subject_status SET deceased_at = $2, deceased_evidence = $3 \
                     WHERE subject_id = $1 AND deceased_at IS NULL",
                )
                .bind(subject.as_str())
                .bind(at)
                .bind(evidence.as_str())
                .execute(&mut *conn)
                .await?;
                if set.rows_affected() == 0 {
                    return Err(StoreError::Conflict);
                }
                Ok(())
            })
        })
    }

    /// Records the subject's own instruction on close relatives after its death
    /// (`refused` or not), to commit with its audit event. `NotFound` for no such
    /// subject; `Conflict` once it is recorded deceased (it can no longer instruct).
    pub fn set_relatives_op(&self, subject: &str, refused: bool) -> WriteOp {
        let subject = subject.to_owned();
        op(move |conn| {
            let subject = subject.clone();
            Box::pin(async move {
                active_subject(conn, &subject).await?;
                let value = if refused { "refused" } else { "allowed" };
                sqlx::query(
                    "INSERT INTO subject_status (subject_id, relatives) VALUES ($1, $2) \
                     ON CONFLICT (subject_id) DO UPDATE SET relatives = $2 \
                     WHERE subject_status.deceased_at IS NULL",
                )
                .bind(subject.as_str())
                .bind(value)
                .execute(&mut *conn)
                .await?;
                let deceased: Option<(Option<i64>,)> =
                    sqlx::query_as("SELECT deceased_at FROM subject_status WHERE subject_id = $1")
                        .bind(subject.as_str())
                        .fetch_optional(&mut *conn)
                        .await?;
                if deceased.is_some_and(|(at,)| at.is_some()) {
                    return Err(StoreError::Conflict);
                }
                Ok(())
            })
        })
    }

    pub async fn insert_request(&self, r: &RequestRow) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO dsr_requests ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(r.id.as_str())
        .bind(r.subject_id.as_str())
        .bind(r.kind.as_str())
        .bind(r.received_at)
        .bind(r.due_date.as_str())
        .bind(r.status.as_str())
        .bind(r.reason.as_deref())
        .bind(r.created_by.as_str())
        .bind(r.updated_at)
        .bind(r.closed_at)
        .bind(r.requester.as_deref())
        .bind(r.requester_evidence.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM dsr_requests WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(from_row)
            .transpose()
            .map_err(StoreError::from)
    }

    /// Requests, oldest due first; `overdue_before` keeps only unfinished ones due
    /// before that date (`YYYY-MM-DD`).
    pub async fn requests(
        &self,
        overdue_before: Option<&str>,
    ) -> Result<Vec<RequestRow>, StoreError> {
        let rows = match overdue_before {
            Some(today) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM dsr_requests WHERE status IN ('open', 'in_progress') \
                     AND due_date < $1 ORDER BY due_date, received_at"
                ))
                .bind(today)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM dsr_requests ORDER BY due_date, received_at"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    /// Moves a request from one of `from` to `to`. False if it was not in one of them.
    pub async fn transition_request(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        reason: Option<&str>,
        now: i64,
        closes: bool,
    ) -> Result<bool, StoreError> {
        let placeholders: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 6)).collect();
        let sql = format!(
            "UPDATE dsr_requests SET status = $2, reason = $3, updated_at = $4, closed_at = $5 \
             WHERE id = $1 AND status IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql)
            .bind(id)
            .bind(to)
            .bind(reason)
            .bind(now)
            .bind(closes.then_some(now));
        for f in from {
            q = q.bind(*f);
        }
        Ok(q.execute(&self.pool).await?.rows_affected() == 1)
    }
}

/// `NotFound` unless `subject` exists and is not erased (inside a change).
pub(super) async fn active_subject(
    conn: &mut sqlx::AnyConnection,
    subject: &str,
) -> Result<(), StoreError> {
    let found = sqlx::query("SELECT 1 FROM subjects WHERE id = $1 AND erased_at IS NULL")
        .bind(subject)
        .fetch_optional(&mut *conn)
        .await?;
    found.map(|_| ()).ok_or(StoreError::NotFound)
}
