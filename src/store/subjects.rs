use sqlx::Row;

use super::write::op;
use super::{is_conflict, now_ms, values, Store, StoreError, WriteOp};

/// A subject's DEK as stored: wrapped by KEK `kek_version`.
#[derive(Debug, Clone)]
pub struct SubjectKeyRow {
    pub version: i64,
    pub kek_version: i64,
    pub wrapped: Vec<u8>,
    /// How many values this DEK has encrypted (bounds nonce reuse risk).
    pub encryptions: i64,
}

/// One encrypted field value.
#[derive(Debug, Clone)]
pub struct FieldRow {
    pub field: String,
    pub dek_version: i64,
    pub sealed: Vec<u8>,
}

/// One blind-index entry of a subject.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub field: String,
    pub digest: Vec<u8>,
}

/// A new subject with its first DEK, fields and index entries.
#[derive(Debug)]
pub struct NewSubject {
    pub id: String,
    pub key: SubjectKeyRow,
    pub fields: Vec<FieldRow>,
    pub index: Vec<IndexEntry>,
}

/// A change to an existing subject's fields, made with DEK `key_version`; `new_key`
/// is set when that version was created for this write (usage bound reached).
#[derive(Debug)]
pub struct SubjectWrite {
    pub subject_id: String,
    pub new_key: Option<SubjectKeyRow>,
    pub key_version: i64,
    pub set: Vec<FieldRow>,
    pub remove: Vec<String>,
    /// Index entries of the fields in `set` and `remove` are replaced by these.
    pub index: Vec<IndexEntry>,
}

/// One encrypted record document.
#[derive(Debug, Clone)]
pub struct RecordRow {
    pub id: String,
    pub collection: String,
    pub dek_version: i64,
    pub sealed: Vec<u8>,
    pub created_at: i64,
}

/// What a read needs of a subject, fetched in one round trip.
#[derive(Debug, Clone, Default)]
pub struct SubjectSnapshot {
    /// The case the subject is held for, if under a legal hold.
    pub legal_hold: Option<String>,
    pub keys: Vec<SubjectKeyRow>,
    pub fields: Vec<FieldRow>,
}

type Conn = sqlx::AnyConnection;

/// Marks the subject as changed; `NotFound` if it does not exist or is erased. On
/// PostgreSQL this locks the subject row, so concurrent writers to one subject queue.
async fn touch(conn: &mut Conn, subject: &str, now: i64) -> Result<(), StoreError> {
    let found =
        sqlx::query("UPDATE subjects SET updated_at = $2 WHERE id = $1 AND erased_at IS NULL")
            .bind(subject)
            .bind(now)
            .execute(&mut *conn)
            .await?;
    if found.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

async fn insert_key(
    conn: &mut Conn,
    subject: &str,
    key: &SubjectKeyRow,
    encryptions: i64,
) -> Result<(), StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO subject_keys (subject_id, version, kek_version, wrapped, encryptions, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(subject)
    .bind(key.version)
    .bind(key.kek_version)
    .bind(key.wrapped.as_slice())
    .bind(encryptions)
    .bind(now_ms())
    .execute(&mut *conn)
    .await;
    match inserted {
        Err(e) if is_conflict(&e) => Err(StoreError::Conflict),
        other => other.map(|_| ()).map_err(StoreError::from),
    }
}

async fn count_encryptions(
    conn: &mut Conn,
    subject: &str,
    version: i64,
    n: usize,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE subject_keys SET encryptions = encryptions + $3 WHERE subject_id = $1 AND version = $2",
    )
    .bind(subject)
    .bind(version)
    .bind(n as i64)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        // The key was erased or never stored: nothing sealed with it may land.
        Err(StoreError::Conflict)
    }
}

async fn upsert_fields(
    conn: &mut Conn,
    subject: &str,
    fields: &[FieldRow],
) -> Result<(), StoreError> {
    if fields.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let sql = format!(
        "INSERT INTO subject_fields (subject_id, field, dek_version, sealed, updated_at) VALUES {} \
         ON CONFLICT (subject_id, field) DO UPDATE SET \
         dek_version = excluded.dek_version, sealed = excluded.sealed, updated_at = excluded.updated_at",
        values(conn, fields.len(), 5)
    );
    let mut q = sqlx::query(&sql);
    for f in fields {
        q = q
            .bind(subject)
            .bind(f.field.as_str())
            .bind(f.dek_version)
            .bind(f.sealed.as_slice())
            .bind(now);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

async fn insert_index(
    conn: &mut Conn,
    subject: &str,
    index: &[IndexEntry],
) -> Result<(), StoreError> {
    if index.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO blind_index (field, digest, subject_id) VALUES {} ON CONFLICT DO NOTHING",
        values(conn, index.len(), 3)
    );
    let mut q = sqlx::query(&sql);
    for e in index {
        q = q
            .bind(e.field.as_str())
            .bind(e.digest.as_slice())
            .bind(subject);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

impl Store {
    /// Whether a subject exists and is not erased.
    pub async fn subject_active(&self, id: &str) -> Result<bool, StoreError> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM subjects WHERE id = $1 AND erased_at IS NULL")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    pub async fn subject_keys(&self, id: &str) -> Result<Vec<SubjectKeyRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, kek_version, wrapped, encryptions FROM subject_keys \
             WHERE subject_id = $1 ORDER BY version",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SubjectKeyRow {
                    version: r.try_get(0)?,
                    kek_version: r.try_get(1)?,
                    wrapped: r.try_get(2)?,
                    encryptions: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// A subject's hold state, data keys and stored fields in one round trip; `None` if
    /// it does not exist or was erased. Keys come in version order.
    pub async fn subject_snapshot(&self, id: &str) -> Result<Option<SubjectSnapshot>, StoreError> {
        let blob = match self.backend {
            super::Backend::Sqlite => "BLOB",
            super::Backend::Postgres => "BYTEA",
        };
        let sql = format!(
            "SELECT CAST(0 AS BIGINT), legal_hold_case, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                    CAST(NULL AS BIGINT), CAST(NULL AS {blob}) \
               FROM subjects WHERE id = $1 AND erased_at IS NULL \
             UNION ALL \
             SELECT CAST(1 AS BIGINT), CAST(NULL AS TEXT), version, kek_version, encryptions, wrapped \
               FROM subject_keys WHERE subject_id = $1 \
             UNION ALL \
             SELECT CAST(2 AS BIGINT), field, dek_version, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), sealed \
               FROM subject_fields WHERE subject_id = $1"
        );
        let rows = sqlx::query(&sql).bind(id).fetch_all(&self.pool).await?;
        let mut snapshot: Option<SubjectSnapshot> = None;
        let mut keys = Vec::new();
        let mut fields = Vec::new();
        for r in &rows {
            match r.try_get::<i64, _>(0)? {
                0 => {
                    snapshot = Some(SubjectSnapshot {
                        legal_hold: r.try_get(1)?,
                        ..Default::default()
                    })
                }
                1 => keys.push(SubjectKeyRow {
                    version: r.try_get(2)?,
                    kek_version: r.try_get(3)?,
                    encryptions: r.try_get(4)?,
                    wrapped: r.try_get(5)?,
                }),
                _ => fields.push(FieldRow {
                    field: r.try_get(1)?,
                    dek_version: r.try_get(2)?,
                    sealed: r.try_get(5)?,
                }),
            }
        }
        Ok(snapshot.map(|mut s| {
            keys.sort_by_key(|k| k.version);
            s.keys = keys;
            s.fields = fields;
            s
        }))
    }

    /// All stored fields of a subject.
    pub async fn subject_fields(&self, id: &str) -> Result<Vec<FieldRow>, StoreError> {
        let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT field, dek_version, sealed FROM subject_fields WHERE subject_id = $1 \
             ORDER BY field",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(field, dek_version, sealed)| FieldRow {
                field,
                dek_version,
                sealed,
            })
            .collect())
    }

    /// Creating a subject with its first key, fields and index entries.
    pub fn create_subject_op(&self, s: NewSubject) -> WriteOp {
        op(move |conn| {
            Box::pin(async move {
                let now = now_ms();
                let inserted = sqlx::query(
                    "INSERT INTO subjects (id, created_at, updated_at) VALUES ($1, $2, $2)",
                )
                .bind(s.id.as_str())
                .bind(now)
                .execute(&mut *conn)
                .await;
                if let Err(e) = inserted {
                    return Err(if is_conflict(&e) {
                        StoreError::Conflict
                    } else {
                        e.into()
                    });
                }
                insert_key(conn, &s.id, &s.key, s.fields.len() as i64).await?;
                upsert_fields(conn, &s.id, &s.fields).await?;
                insert_index(conn, &s.id, &s.index).await
            })
        })
    }

    /// A correction; `NotFound` if the subject does not exist or is erased.
    pub fn write_subject_op(&self, w: SubjectWrite) -> WriteOp {
        op(move |conn| {
            Box::pin(async move {
                touch(conn, &w.subject_id, now_ms()).await?;
                if let Some(key) = &w.new_key {
                    insert_key(conn, &w.subject_id, key, 0).await?;
                }
                if !w.set.is_empty() {
                    count_encryptions(conn, &w.subject_id, w.key_version, w.set.len()).await?;
                }
                for field in w
                    .set
                    .iter()
                    .map(|f| f.field.as_str())
                    .chain(w.remove.iter().map(String::as_str))
                {
                    sqlx::query("DELETE FROM blind_index WHERE subject_id = $1 AND field = $2")
                        .bind(w.subject_id.as_str())
                        .bind(field)
                        .execute(&mut *conn)
                        .await?;
                }
                for field in &w.remove {
                    sqlx::query("DELETE FROM subject_fields WHERE subject_id = $1 AND field = $2")
                        .bind(w.subject_id.as_str())
                        .bind(field.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
                upsert_fields(conn, &w.subject_id, &w.set).await?;
                insert_index(conn, &w.subject_id, &w.index).await?;
                super::changes::note(conn, super::changes::SUBJECT, &w.subject_id, now_ms()).await
            })
        })
    }

    /// Crypto-shredding: destroys the subject's DEKs and removes its fields, records,
    /// index entries and consents, keeping a tombstone. `NotFound` if there was no such
    /// subject.
    pub fn erase_subject_op(&self, id: &str) -> WriteOp {
        let id = id.to_owned();
        op(move |conn| {
            Box::pin(async move {
                let now = now_ms();
                let found = sqlx::query(
                    "UPDATE subjects SET erased_at = $2, updated_at = $2 WHERE id = $1 AND erased_at IS NULL",
                )
                .bind(id.as_str())
                .bind(now)
                .execute(&mut *conn)
                .await?;
                if found.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                for table in [
                    "subject_keys",
                    "blind_index",
                    "subject_fields",
                    "records",
                    "consent_events",
                ] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE subject_id = $1"))
                        .bind(id.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
                super::changes::note(conn, super::changes::SUBJECT, &id, now).await
            })
        })
    }

    /// Subjects whose index entry for `field` is `digest`, each with whether it is under
    /// a legal hold.
    pub async fn lookup(
        &self,
        field: &str,
        digest: &[u8],
    ) -> Result<Vec<(String, bool)>, StoreError> {
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT b.subject_id, s.legal_hold_at FROM blind_index b JOIN subjects s ON s.id = b.subject_id \
             WHERE b.field = $1 AND b.digest = $2 AND s.erased_at IS NULL ORDER BY b.subject_id",
        )
        .bind(field)
        .bind(digest)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, held)| (id, held.is_some()))
            .collect())
    }

    /// Adding a record; `NotFound` if the subject does not exist or is erased.
    pub fn insert_record_op(
        &self,
        subject: &str,
        new_key: Option<SubjectKeyRow>,
        record: RecordRow,
    ) -> WriteOp {
        let subject = subject.to_owned();
        op(move |conn| {
            Box::pin(async move {
                touch(conn, &subject, now_ms()).await?;
                if let Some(key) = &new_key {
                    insert_key(conn, &subject, key, 0).await?;
                }
                count_encryptions(conn, &subject, record.dek_version, 1).await?;
                sqlx::query(
                    "INSERT INTO records (id, subject_id, collection, dek_version, sealed, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(record.id.as_str())
                .bind(subject.as_str())
                .bind(record.collection.as_str())
                .bind(record.dek_version)
                .bind(record.sealed.as_slice())
                .bind(record.created_at)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
    }

    pub async fn records(
        &self,
        subject: &str,
        collection: &str,
    ) -> Result<Vec<RecordRow>, StoreError> {
        let rows: Vec<(String, i64, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT id, dek_version, sealed, created_at FROM records \
             WHERE subject_id = $1 AND collection = $2 ORDER BY created_at, id",
        )
        .bind(subject)
        .bind(collection)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, dek_version, sealed, created_at)| RecordRow {
                id,
                collection: collection.to_owned(),
                dek_version,
                sealed,
                created_at,
            })
            .collect())
    }
}
