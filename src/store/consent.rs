use sqlx::Row;

use super::write::op;
use super::{changes, Store, StoreError, WriteOp};

/// One grant or withdrawal of consent, as stored (append-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRow {
    pub seq: i64,
    pub subject_id: String,
    pub purpose: String,
    /// `grant` or `withdraw`.
    pub kind: String,
    pub purpose_version: i64,
    pub notice_version: String,
    pub channel: String,
    pub separate: bool,
    pub guardian: bool,
    pub actor_token: String,
    pub at: i64,
}

const COLUMNS: &str = "seq, subject_id, purpose, kind, purpose_version, notice_version, channel, \
                       separate, guardian, actor_token, at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<ConsentRow, sqlx::Error> {
    Ok(ConsentRow {
        seq: r.try_get(0)?,
        subject_id: r.try_get(1)?,
        purpose: r.try_get(2)?,
        kind: r.try_get(3)?,
        purpose_version: r.try_get(4)?,
        notice_version: r.try_get(5)?,
        channel: r.try_get(6)?,
        separate: r.try_get::<i64, _>(7)? != 0,
        guardian: r.try_get::<i64, _>(8)? != 0,
        actor_token: r.try_get(9)?,
        at: r.try_get(10)?,
    })
}

impl Store {
    /// Appending a grant or withdrawal; `NotFound` if the subject does not exist or is
    /// erased.
    pub fn append_consent_op(&self, c: ConsentRow) -> WriteOp {
        op(move |conn| {
            let c = c.clone();
            Box::pin(async move {
                let found = sqlx::query(
                    "UPDATE subjects SET updated_at = $2 WHERE id = $1 AND erased_at IS NULL",
                )
                .bind(c.subject_id.as_str())
                .bind(c.at)
                .execute(&mut *conn)
                .await?;
                if found.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                sqlx::query(
                    "INSERT INTO consent_events (subject_id, purpose, kind, purpose_version, notice_version, \
                     channel, separate, guardian, actor_token, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(c.subject_id.as_str())
                .bind(c.purpose.as_str())
                .bind(c.kind.as_str())
                .bind(c.purpose_version)
                .bind(c.notice_version.as_str())
                .bind(c.channel.as_str())
                .bind(i64::from(c.separate))
                .bind(i64::from(c.guardian))
                .bind(c.actor_token.as_str())
                .bind(c.at)
                .execute(&mut *conn)
                .await?;
                if c.kind == "withdraw" {
                    // The recipients that received data under this consent are told.
                    super::provisions::owe_notices(
                        conn,
                        &c.subject_id,
                        "consent_withdrawn",
                        Some(&c.purpose),
                        c.at,
                    )
                    .await?;
                }
                changes::note(conn, changes::SUBJECT, &c.subject_id, c.at).await
            })
        })
    }

    /// The newest grant or withdrawal for one subject and purpose.
    pub async fn current_consent(
        &self,
        subject: &str,
        purpose: &str,
    ) -> Result<Option<ConsentRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM consent_events WHERE subject_id = $1 AND purpose = $2 ORDER BY seq DESC LIMIT 1"
        ))
        .bind(subject)
        .bind(purpose)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(from_row)
            .transpose()
            .map_err(StoreError::from)
    }

    /// A subject's whole consent history, oldest first.
    pub async fn consent_history(&self, subject: &str) -> Result<Vec<ConsentRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM consent_events WHERE subject_id = $1 ORDER BY seq"
        ))
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }
}
