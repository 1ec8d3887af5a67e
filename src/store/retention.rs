use super::write::op;
use super::{changes, now_ms, Store, StoreError, WriteOp};

/// Something past its retention period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredRow {
    pub subject_id: String,
    /// The record id, for record documents.
    pub record_id: Option<String>,
    pub held: bool,
}

impl Store {
    /// Placing (`Some(case)`) or lifting (`None`) a legal hold; `NotFound` if there is
    /// no such subject.
    pub fn set_legal_hold_op(&self, subject: &str, case: Option<&str>) -> WriteOp {
        let subject = subject.to_owned();
        let case = case.map(str::to_owned);
        op(move |conn| {
            let (subject, case) = (subject.clone(), case.clone());
            Box::pin(async move {
                let now = now_ms();
                let done = sqlx::query(
                    "UPDATE subjects SET legal_hold_at = $2, legal_hold_case = $3, updated_at = $4 \
                     WHERE id = $1 AND erased_at IS NULL",
                )
                .bind(subject.as_str())
                .bind(case.as_ref().map(|_| now))
                .bind(case.as_deref())
                .bind(now)
                .execute(&mut *conn)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::NotFound);
                }
                changes::note(conn, changes::SUBJECT, &subject, now).await
            })
        })
    }

    /// The case a subject is held for, if any.
    pub async fn legal_hold(&self, subject: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT legal_hold_case FROM subjects WHERE id = $1 AND erased_at IS NULL",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(c,)| c))
    }

    /// Values of `field` last written before `cutoff`.
    pub async fn expired_fields(
        &self,
        field: &str,
        cutoff: i64,
    ) -> Result<Vec<ExpiredRow>, StoreError> {
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT f.subject_id, s.legal_hold_at FROM subject_fields f JOIN subjects s ON s.id = f.subject_id \
             WHERE f.field = $1 AND f.updated_at < $2 AND s.erased_at IS NULL ORDER BY f.subject_id",
        )
        .bind(field)
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(subject_id, hold)| ExpiredRow {
                subject_id,
                record_id: None,
                held: hold.is_some(),
            })
            .collect())
    }

    /// Documents of `collection` created before `cutoff`.
    pub async fn expired_records(
        &self,
        collection: &str,
        cutoff: i64,
    ) -> Result<Vec<ExpiredRow>, StoreError> {
        let rows: Vec<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT r.id, r.subject_id, s.legal_hold_at FROM records r JOIN subjects s ON s.id = r.subject_id \
             WHERE r.collection = $1 AND r.created_at < $2 AND s.erased_at IS NULL ORDER BY r.subject_id, r.id",
        )
        .bind(collection)
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, subject_id, hold)| ExpiredRow {
                subject_id,
                record_id: Some(id),
                held: hold.is_some(),
            })
            .collect())
    }

    /// Erasing one expired field value and its blind-index entry, unless the subject was
    /// put on hold or the value rewritten since (`cutoff`). `NotFound` if there is nothing
    /// to erase (another sweep erased it first, or it changed): the audit writer then
    /// leaves the change and its event out, so each erasure is recorded exactly once.
    pub fn erase_expired_field_op(&self, subject: &str, field: &str, cutoff: i64) -> WriteOp {
        let (subject, field) = (subject.to_owned(), field.to_owned());
        op(move |conn| {
            let (subject, field) = (subject.clone(), field.clone());
            Box::pin(async move {
                let gone = sqlx::query(
                    "DELETE FROM subject_fields WHERE subject_id = $1 AND field = $2 AND updated_at < $3 \
                     AND subject_id IN (SELECT id FROM subjects WHERE legal_hold_at IS NULL)",
                )
                .bind(subject.as_str())
                .bind(field.as_str())
                .bind(cutoff)
                .execute(&mut *conn)
                .await?;
                if gone.rows_affected() != 1 {
                    return Err(StoreError::NotFound);
                }
                let table =
                    super::subjects::blind_index_by_subject(conn.backend_name() == "PostgreSQL");
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE subject_id = $1 AND field = $2"
                ))
                .bind(subject.as_str())
                .bind(field.as_str())
                .execute(&mut *conn)
                .await?;
                changes::note(conn, changes::SUBJECT, &subject, now_ms()).await
            })
        })
    }

    /// Erasing one expired record unless its subject was put on hold meanwhile;
    /// `NotFound` if there is nothing to erase (see [`Store::erase_expired_field_op`]).
    pub fn erase_expired_record_op(&self, record: &str) -> WriteOp {
        let record = record.to_owned();
        op(move |conn| {
            let record = record.clone();
            Box::pin(async move {
                let gone = sqlx::query(
                    "DELETE FROM records WHERE id = $1 \
                     AND subject_id IN (SELECT id FROM subjects WHERE legal_hold_at IS NULL)",
                )
                .bind(record.as_str())
                .execute(&mut *conn)
                .await?;
                if gone.rows_affected() == 1 {
                    Ok(())
                } else {
                    Err(StoreError::NotFound)
                }
            })
        })
    }
}
