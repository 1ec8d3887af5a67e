//! Provisions to recipients, the deletion notices owed to them, and the yearly counts
//! of transfers abroad. Names and ids only; never a value.

use super::write::{op, WriteOp};
use super::{now_ms, Store, StoreError};

/// One provision of a subject's personal information to a recipient.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProvisionRow {
    pub seq: i64,
    pub subject_id: String,
    pub recipient: String,
    pub purpose: String,
    pub fields: Vec<String>,
    pub collections: Vec<String>,
    /// Where the recipient processes (`CN`: the mainland).
    pub region: String,
    /// Whether sensitive personal information was included.
    pub sensitive: bool,
    pub token_id: String,
    pub request_id: String,
    /// Milliseconds since the epoch.
    pub at: i64,
}

/// A deletion notice owed to (or delivered to) a recipient.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NoticeRow {
    pub id: i64,
    pub subject_id: String,
    pub recipient: String,
    /// `erasure` or `consent_withdrawn`.
    pub reason: String,
    /// The consent withdrawn (for `consent_withdrawn`).
    pub purpose: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    /// The token that marked it delivered.
    pub delivered_by: Option<String>,
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

type ProvisionTuple = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    i64,
);

type NoticeTuple = (
    i64,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
);

fn notice(
    (id, subject_id, recipient, reason, purpose, created_at, delivered_at, delivered_by): NoticeTuple,
) -> NoticeRow {
    NoticeRow {
        id,
        subject_id,
        recipient,
        reason,
        purpose,
        created_at,
        delivered_at,
        delivered_by,
    }
}

const NOTICE_COLUMNS: &str =
    "id, subject_id, recipient, reason, purpose, created_at, delivered_at, delivered_by";

/// Records, inside an erasure's or a withdrawal's transaction, a deletion notice for each
/// recipient that received the subject's data: all of them (`purpose` `None`, an
/// erasure), or those that received it for the purpose withdrawn, or the recipient a
/// `recipient:ID` consent named.
pub(super) async fn owe_notices(
    conn: &mut sqlx::AnyConnection,
    subject: &str,
    reason: &str,
    purpose: Option<&str>,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO deletion_notices (subject_id, recipient, reason, purpose, created_at) \
         SELECT DISTINCT subject_id, recipient, CAST($3 AS TEXT), CAST($4 AS TEXT), CAST($5 AS BIGINT) \
         FROM provisions WHERE subject_id = $1 \
         AND ($2 = '' OR purpose = $2 OR 'recipient:' || recipient = $2)",
    )
    .bind(subject)
    .bind(purpose.unwrap_or(""))
    .bind(reason)
    .bind(purpose)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// Records a provision, to commit with its audit events.
    pub fn record_provision_op(&self, row: ProvisionRow) -> WriteOp {
        op(move |conn| {
            let r = row.clone();
            Box::pin(async move {
                super::requests::active_subject(conn, &r.subject_id).await?;
                sqlx::query(
                    "INSERT INTO provisions (subject_id, recipient, purpose, fields, collections, \
                     region, sensitive, token_id, request_id, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(r.subject_id.as_str())
                .bind(r.recipient.as_str())
                .bind(r.purpose.as_str())
                .bind(r.fields.join(","))
                .bind(r.collections.join(","))
                .bind(r.region.as_str())
                .bind(i64::from(r.sensitive))
                .bind(r.token_id.as_str())
                .bind(r.request_id.as_str())
                .bind(r.at)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
    }

    /// Every provision of a subject's data, oldest first.
    pub async fn provisions_of(&self, subject: &str) -> Result<Vec<ProvisionRow>, StoreError> {
        let rows: Vec<ProvisionTuple> = sqlx::query_as(
            "SELECT seq, subject_id, recipient, purpose, fields, collections, region, sensitive, \
             token_id, request_id, at FROM provisions WHERE subject_id = $1 ORDER BY seq",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    seq,
                    subject_id,
                    recipient,
                    purpose,
                    fields,
                    collections,
                    region,
                    sensitive,
                    token_id,
                    request_id,
                    at,
                )| {
                    ProvisionRow {
                        seq,
                        subject_id,
                        recipient,
                        purpose,
                        fields: list(&fields),
                        collections: list(&collections),
                        region,
                        sensitive: sensitive != 0,
                        token_id,
                        request_id,
                        at,
                    }
                },
            )
            .collect())
    }

    /// Deletion notices after id `after`, oldest first: the pending ones only, or all;
    /// for one recipient, or all.
    pub async fn deletion_notices(
        &self,
        pending_only: bool,
        recipient: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<NoticeRow>, StoreError> {
        let rows: Vec<NoticeTuple> = sqlx::query_as(&format!(
            "SELECT {NOTICE_COLUMNS} FROM deletion_notices \
             WHERE id > $1 AND ($2 = 0 OR delivered_at IS NULL) AND ($3 = '' OR recipient = $3) \
             ORDER BY id LIMIT $4"
        ))
        .bind(after)
        .bind(i64::from(pending_only))
        .bind(recipient.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(notice).collect())
    }

    /// The deletion notices about one subject.
    pub async fn deletion_notices_of(&self, subject: &str) -> Result<Vec<NoticeRow>, StoreError> {
        let rows: Vec<NoticeTuple> = sqlx::query_as(&format!(
            "SELECT {NOTICE_COLUMNS} FROM deletion_notices WHERE subject_id = $1 ORDER BY id"
        ))
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(notice).collect())
    }

    /// Marks notice `id` delivered by `token`, to commit with its audit event.
    /// `NotFound` if there is no such notice, `Conflict` if it was delivered already.
    pub fn deliver_notice_op(&self, id: i64, token: &str) -> WriteOp {
        let token = token.to_owned();
        op(move |conn| {
            let token = token.clone();
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE deletion_notices SET delivered_at = $2, delivered_by = $3 \
                     WHERE id = $1 AND delivered_at IS NULL",
                )
                .bind(id)
                .bind(now_ms())
                .bind(token.as_str())
                .execute(&mut *conn)
                .await?;
                if done.rows_affected() == 1 {
                    return Ok(());
                }
                let exists = sqlx::query("SELECT 1 FROM deletion_notices WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
                Err(if exists.is_some() {
                    StoreError::Conflict
                } else {
                    StoreError::NotFound
                })
            })
        })
    }

    /// Distinct subjects whose data went to a recipient outside the mainland between
    /// `from` and `until` (ms): those whose provisions included sensitive personal
    /// information, and all of them.
    pub async fn subjects_transferred_abroad(
        &self,
        from: i64,
        until: i64,
    ) -> Result<(i64, i64), StoreError> {
        let (sensitive, all): (i64, i64) = sqlx::query_as(&format!(
            "SELECT \
             (SELECT CAST(count(DISTINCT subject_id) AS BIGINT) FROM provisions \
              WHERE region <> '{mainland}' AND sensitive = 1 AND at >= $1 AND at < $2), \
             (SELECT CAST(count(DISTINCT subject_id) AS BIGINT) FROM provisions \
              WHERE region <> '{mainland}' AND at >= $1 AND at < $2)",
            mainland = crate::pipl::MAINLAND
        ))
        .bind(from)
        .bind(until)
        .fetch_one(&self.pool)
        .await?;
        Ok((sensitive, all))
    }
}

/// A PIPIA record as archived.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipiaRow {
    pub id: String,
    pub date: String,
    pub conclusion: String,
    pub reviewer: String,
    /// When this version was first loaded (ms).
    pub archived_at: i64,
}

impl Store {
    /// Keeps each of `records` (id, date, conclusion, reviewer), every version once.
    /// Archived rows cannot be changed, nor removed within three years of their date
    /// (database triggers).
    pub async fn archive_pipia(
        &self,
        records: Vec<(String, String, String, String)>,
    ) -> Result<(), StoreError> {
        use sha2::Digest as _;
        let now = now_ms();
        let change = op(move |conn| {
            let records = records.clone();
            Box::pin(async move {
                let mut new = 0;
                for (id, date, conclusion, reviewer) in &records {
                    let mut h = sha2::Sha256::new();
                    for part in [id, date, conclusion, reviewer] {
                        h.update((part.len() as u64).to_be_bytes());
                        h.update(part.as_bytes());
                    }
                    let digest = hex::encode(h.finalize());
                    new += sqlx::query(
                        "INSERT INTO pipia_records (id, digest, date, conclusion, reviewer, archived_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id, digest) DO NOTHING",
                    )
                    .bind(id.as_str())
                    .bind(digest)
                    .bind(date.as_str())
                    .bind(conclusion.as_str())
                    .bind(reviewer.as_str())
                    .bind(now)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                }
                tracing::debug!(new, "PIPIA records archived");
                Ok(())
            })
        });
        self.transact(change).await
    }

    /// Every archived PIPIA record, by id and age.
    pub async fn pipia_archive(&self) -> Result<Vec<PipiaRow>, StoreError> {
        let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT id, date, conclusion, reviewer, archived_at FROM pipia_records \
             ORDER BY id, archived_at",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, date, conclusion, reviewer, archived_at)| PipiaRow {
                id,
                date,
                conclusion,
                reviewer,
                archived_at,
            })
            .collect())
    }
}
