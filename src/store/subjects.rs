use sqlx::Row;

use super::{is_conflict, now_ms, Store, StoreError};

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

type Tx = sqlx::Transaction<'static, sqlx::Any>;

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

    async fn insert_key(tx: &mut Tx, subject: &str, key: &SubjectKeyRow) -> Result<(), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO subject_keys (subject_id, version, kek_version, wrapped, encryptions, created_at) \
             VALUES ($1, $2, $3, $4, 0, $5)",
        )
        .bind(subject)
        .bind(key.version)
        .bind(key.kek_version)
        .bind(key.wrapped.as_slice())
        .bind(now_ms())
        .execute(&mut **tx)
        .await;
        match inserted {
            Err(e) if is_conflict(&e) => Err(StoreError::Conflict),
            other => other.map(|_| ()).map_err(StoreError::from),
        }
    }

    async fn count_encryptions(
        tx: &mut Tx,
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
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            // The key was erased or never stored: nothing sealed with it may land.
            Err(StoreError::Conflict)
        }
    }

    async fn upsert_fields(
        tx: &mut Tx,
        subject: &str,
        fields: &[FieldRow],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        for f in fields {
            sqlx::query(
                "INSERT INTO subject_fields (subject_id, field, dek_version, sealed, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (subject_id, field) DO UPDATE SET \
                 dek_version = excluded.dek_version, sealed = excluded.sealed, updated_at = excluded.updated_at",
            )
            .bind(subject)
            .bind(f.field.as_str())
            .bind(f.dek_version)
            .bind(f.sealed.as_slice())
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn insert_index(
        tx: &mut Tx,
        subject: &str,
        index: &[IndexEntry],
    ) -> Result<(), StoreError> {
        for e in index {
            sqlx::query(
                "INSERT INTO blind_index (field, digest, subject_id) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(e.field.as_str())
            .bind(e.digest.as_slice())
            .bind(subject)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    pub async fn create_subject(&self, s: &NewSubject) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO subjects (id, created_at, updated_at) VALUES ($1, $2, $2)")
            .bind(s.id.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        Self::insert_key(&mut tx, &s.id, &s.key).await?;
        Self::count_encryptions(&mut tx, &s.id, s.key.version, s.fields.len()).await?;
        Self::upsert_fields(&mut tx, &s.id, &s.fields).await?;
        Self::insert_index(&mut tx, &s.id, &s.index).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Applies a correction. Returns false if the subject does not exist or is erased.
    pub async fn write_subject(&self, w: &SubjectWrite) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // Locks the subject row (PostgreSQL) so concurrent writers to one subject queue.
        let found =
            sqlx::query("UPDATE subjects SET updated_at = $2 WHERE id = $1 AND erased_at IS NULL")
                .bind(w.subject_id.as_str())
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        if found.rows_affected() == 0 {
            return Ok(false);
        }
        if let Some(key) = &w.new_key {
            Self::insert_key(&mut tx, &w.subject_id, key).await?;
        }
        if !w.set.is_empty() {
            Self::count_encryptions(&mut tx, &w.subject_id, w.key_version, w.set.len()).await?;
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
                .execute(&mut *tx)
                .await?;
        }
        for field in &w.remove {
            sqlx::query("DELETE FROM subject_fields WHERE subject_id = $1 AND field = $2")
                .bind(w.subject_id.as_str())
                .bind(field.as_str())
                .execute(&mut *tx)
                .await?;
        }
        Self::upsert_fields(&mut tx, &w.subject_id, &w.set).await?;
        Self::insert_index(&mut tx, &w.subject_id, &w.index).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Crypto-shredding: destroys the subject's DEKs and removes its fields, records
    /// and index entries, keeping a tombstone. Returns false if there was no such subject.
    pub async fn erase_subject(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let found = sqlx::query("UPDATE subjects SET erased_at = $2, updated_at = $2 WHERE id = $1 AND erased_at IS NULL")
            .bind(id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        if found.rows_affected() == 0 {
            return Ok(false);
        }
        for table in [
            "subject_keys",
            "blind_index",
            "subject_fields",
            "records",
            "consent_events",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE subject_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn lookup(&self, field: &str, digest: &[u8]) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT b.subject_id FROM blind_index b JOIN subjects s ON s.id = b.subject_id \
             WHERE b.field = $1 AND b.digest = $2 AND s.erased_at IS NULL ORDER BY b.subject_id",
        )
        .bind(field)
        .bind(digest)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Adds a record. Returns false if the subject does not exist or is erased.
    pub async fn insert_record(
        &self,
        subject: &str,
        new_key: Option<&SubjectKeyRow>,
        record: &RecordRow,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let found =
            sqlx::query("UPDATE subjects SET updated_at = $2 WHERE id = $1 AND erased_at IS NULL")
                .bind(subject)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        if found.rows_affected() == 0 {
            return Ok(false);
        }
        if let Some(key) = new_key {
            Self::insert_key(&mut tx, subject, key).await?;
        }
        Self::count_encryptions(&mut tx, subject, record.dek_version, 1).await?;
        sqlx::query(
            "INSERT INTO records (id, subject_id, collection, dek_version, sealed, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(record.id.as_str())
        .bind(subject)
        .bind(record.collection.as_str())
        .bind(record.dek_version)
        .bind(record.sealed.as_slice())
        .bind(record.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
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
