use sqlx::Row;

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
}

const COLUMNS: &str =
    "id, subject_id, kind, received_at, due_date, status, reason, created_by, updated_at, closed_at";

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
    })
}

impl Store {
    pub async fn insert_request(&self, r: &RequestRow) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO dsr_requests ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
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
