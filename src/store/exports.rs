//! Bulk exports awaiting a second person's approval.

use super::write::{op, WriteOp};
use super::{now_ms, Store, StoreError};

/// A bulk export request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BulkExportRow {
    pub id: String,
    pub subjects: Vec<String>,
    pub requested_by: String,
    pub requested_at: i64,
    pub approved_by: Option<String>,
    pub approved_at: Option<i64>,
    pub delivered_at: Option<i64>,
}

type Tuple = (
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

impl Store {
    /// Records a bulk export request, to commit with its audit event.
    pub fn request_bulk_export_op(&self, row: BulkExportRow) -> WriteOp {
        op(move |conn| {
            let r = row.clone();
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO bulk_exports (id, subjects, requested_by, requested_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(r.id.as_str())
                .bind(r.subjects.join(","))
                .bind(r.requested_by.as_str())
                .bind(r.requested_at)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
    }

    pub async fn bulk_export(&self, id: &str) -> Result<Option<BulkExportRow>, StoreError> {
        let row: Option<Tuple> = sqlx::query_as(
            "SELECT id, subjects, requested_by, requested_at, approved_by, approved_at, delivered_at \
             FROM bulk_exports WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(id, subjects, requested_by, requested_at, approved_by, approved_at, delivered_at)| {
                BulkExportRow {
                    id,
                    subjects: subjects
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    requested_by,
                    requested_at,
                    approved_by,
                    approved_at,
                    delivered_at,
                }
            },
        ))
    }

    /// Approves a pending bulk export by `token` (which must not be its requester's),
    /// to commit with its audit event. `Conflict` if it is not pending any more.
    pub fn approve_bulk_export_op(&self, id: &str, token: &str) -> WriteOp {
        let (id, token) = (id.to_owned(), token.to_owned());
        op(move |conn| {
            let (id, token) = (id.clone(), token.clone());
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE bulk_exports SET approved_by = $2, approved_at = $3 \
                     WHERE id = $1 AND approved_at IS NULL AND requested_by <> $2",
                )
                .bind(id.as_str())
                .bind(token.as_str())
                .bind(now_ms())
                .execute(&mut *conn)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict);
                }
                Ok(())
            })
        })
    }

    /// Marks an approved bulk export delivered, once, to commit with the export's
    /// events. `Conflict` if it is not approved, or was delivered already.
    pub fn deliver_bulk_export_op(&self, id: &str) -> WriteOp {
        let id = id.to_owned();
        op(move |conn| {
            let id = id.clone();
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE bulk_exports SET delivered_at = $2 \
                     WHERE id = $1 AND approved_at IS NOT NULL AND delivered_at IS NULL",
                )
                .bind(id.as_str())
                .bind(now_ms())
                .execute(&mut *conn)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict);
                }
                Ok(())
            })
        })
    }
}
