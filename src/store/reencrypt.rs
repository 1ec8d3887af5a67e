//! Re-encryption (`piivault keys rotate --data`): a batch of subjects read, sealed
//! again under new data keys (and indexed again under the newest blind-index key) and
//! written back in one transaction that holds their rows
//! locked, so that no write to them can land in between.

use std::sync::Arc;

use sqlx::Row;

use super::changes::SUBJECT;
use super::write::{op, Script};
use super::{now_ms, IndexEntry, Store, StoreError, SubjectKeyRow, WriteOp};

/// One stored ciphertext of a subject.
#[derive(Debug, Clone)]
pub enum SealedItem {
    Field {
        name: String,
        dek_version: i64,
        sealed: Vec<u8>,
    },
    Record {
        id: String,
        collection: String,
        dek_version: i64,
        sealed: Vec<u8>,
    },
}

/// A subject as a re-encryption reads it: every data key and every ciphertext, and the
/// data-key version its new key must have.
#[derive(Debug, Clone)]
pub struct SealedSubject {
    pub id: String,
    pub keys: Vec<SubjectKeyRow>,
    pub items: Vec<SealedItem>,
    pub new_version: i64,
}

/// A subject sealed again: its new data key (version `SealedSubject::new_version`),
/// each item's new ciphertext, in the order of `SealedSubject::items`, and its blind
/// index entries made again (under the newest blind-index key); they replace all it had.
#[derive(Debug, Clone)]
pub struct Resealed {
    pub key: SubjectKeyRow,
    pub sealed: Vec<Vec<u8>>,
    pub index: Vec<IndexEntry>,
}

/// Seals a subject again; `None` leaves it as it is (its keys could not be opened).
pub type Reseal = dyn Fn(&SealedSubject) -> Option<Resealed> + Send + Sync;

/// Rows per multi-row statement (at most 6 columns: well inside both stores' limits).
const ROWS_PER_STATEMENT: usize = 500;

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Up to `limit` subjects that exist and are not erased, in id order after `after`.
    pub async fn active_subjects_after(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM subjects WHERE id > $1 AND erased_at IS NULL ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many subjects exist and are not erased, in all and with an id up to `upto`.
    pub async fn count_active_subjects(&self, upto: &str) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(
            "SELECT CAST(count(*) AS BIGINT), CAST(COALESCE(sum(CASE WHEN id <= $1 THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM subjects WHERE erased_at IS NULL",
        )
        .bind(upto)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Re-encrypts subjects `ids` (those still there and not erased) with `reseal`:
    /// inside the transaction, their rows are locked, their keys and ciphertexts read,
    /// sealed again, and written back; every older data key of theirs is deleted. Each
    /// subject gets one new data-key version, the same for the whole batch (higher than
    /// any it had). `cursor` (a `vault_meta` key and value), if any, is set in the same
    /// transaction, so an interrupted run resumes after the last batch that landed.
    pub fn reencrypt_subjects_op(
        &self,
        ids: Vec<String>,
        reseal: Arc<Reseal>,
        cursor: Option<(&'static str, String)>,
    ) -> WriteOp {
        op(move |conn| {
            let (ids, reseal, cursor) = (ids.clone(), reseal.clone(), cursor.clone());
            Box::pin(async move {
                let now = now_ms();
                let mut subjects = if ids.is_empty() {
                    Vec::new()
                } else {
                    load_locked(conn, &ids).await?
                };
                let mut script = Script::new(conn);
                if !subjects.is_empty() {
                    let new_version = subjects
                        .iter()
                        .flat_map(|s| &s.keys)
                        .map(|k| k.version)
                        .max()
                        .unwrap_or(0)
                        + 1;
                    let mut keys = Vec::new();
                    let mut fields = Vec::new();
                    let mut records = Vec::new();
                    let mut index = Vec::new();
                    let mut done = Vec::new();
                    for s in &mut subjects {
                        s.new_version = new_version;
                        let Some(resealed) = reseal(s) else { continue };
                        if resealed.sealed.len() != s.items.len() {
                            continue;
                        }
                        keys.push((s.id.clone(), resealed.key, s.items.len() as i64));
                        index.extend(resealed.index.into_iter().map(|e| (s.id.clone(), e)));
                        for (item, sealed) in s.items.iter().zip(resealed.sealed) {
                            match item {
                                SealedItem::Field { name, .. } => {
                                    fields.push((s.id.clone(), name.clone(), sealed))
                                }
                                SealedItem::Record { id, collection, .. } => records.push((
                                    id.clone(),
                                    s.id.clone(),
                                    collection.clone(),
                                    sealed,
                                )),
                            }
                        }
                        done.push(s.id.clone());
                    }
                    write_resealed(
                        &mut script,
                        new_version,
                        now,
                        BatchRows {
                            keys,
                            fields,
                            records,
                            index,
                        },
                        &done,
                    );
                }
                if let Some((key, value)) = cursor {
                    script.sql("DELETE FROM vault_meta WHERE key = ?").bind(key);
                    script
                        .sql("INSERT INTO vault_meta (key, value) VALUES (?, ?)")
                        .bind(key)
                        .bind(value);
                }
                script.run(conn).await
            })
        })
    }
}

/// Locks the subjects of `ids` that exist and are not erased, and reads their keys and
/// ciphertexts (after the lock, so nothing written before it is missed).
async fn load_locked(
    conn: &mut sqlx::AnyConnection,
    ids: &[String],
) -> Result<Vec<SealedSubject>, StoreError> {
    let list = placeholders(1, ids.len());
    fn bind_ids<'q>(
        sql: &'q str,
        ids: &[String],
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        let mut q = sqlx::query(sql);
        for id in ids {
            q = q.bind(id.clone());
        }
        q
    }
    // Setting a column to itself takes the row lock on PostgreSQL (a writer to one of
    // these subjects waits for this transaction); SQLite already holds the write lock.
    let sql = format!(
        "UPDATE subjects SET updated_at = updated_at WHERE id IN ({list}) AND erased_at IS NULL RETURNING id"
    );
    let locked = bind_ids(&sql, ids).fetch_all(&mut *conn).await?;
    let mut subjects: Vec<SealedSubject> = Vec::with_capacity(locked.len());
    for r in &locked {
        subjects.push(SealedSubject {
            id: r.try_get(0)?,
            keys: Vec::new(),
            items: Vec::new(),
            new_version: 0,
        });
    }
    subjects.sort_by(|a, b| a.id.cmp(&b.id));
    let find = |subjects: &mut Vec<SealedSubject>, id: &str| -> Option<usize> {
        subjects.binary_search_by(|s| s.id.as_str().cmp(id)).ok()
    };
    let sql = format!(
        "SELECT subject_id, version, kek_version, wrapped, encryptions FROM subject_keys \
         WHERE subject_id IN ({list}) ORDER BY subject_id, version"
    );
    for r in bind_ids(&sql, ids).fetch_all(&mut *conn).await? {
        let id: String = r.try_get(0)?;
        if let Some(i) = find(&mut subjects, &id) {
            subjects[i].keys.push(SubjectKeyRow {
                version: r.try_get(1)?,
                kek_version: r.try_get(2)?,
                wrapped: r.try_get(3)?,
                encryptions: r.try_get(4)?,
            });
        }
    }
    let sql = format!(
        "SELECT subject_id, field, dek_version, sealed FROM subject_fields WHERE subject_id IN ({list})"
    );
    for r in bind_ids(&sql, ids).fetch_all(&mut *conn).await? {
        let id: String = r.try_get(0)?;
        if let Some(i) = find(&mut subjects, &id) {
            subjects[i].items.push(SealedItem::Field {
                name: r.try_get(1)?,
                dek_version: r.try_get(2)?,
                sealed: r.try_get(3)?,
            });
        }
    }
    let sql = format!(
        "SELECT subject_id, id, collection, dek_version, sealed FROM records WHERE subject_id IN ({list})"
    );
    for r in bind_ids(&sql, ids).fetch_all(&mut *conn).await? {
        let id: String = r.try_get(0)?;
        if let Some(i) = find(&mut subjects, &id) {
            subjects[i].items.push(SealedItem::Record {
                id: r.try_get(1)?,
                collection: r.try_get(2)?,
                dek_version: r.try_get(3)?,
                sealed: r.try_get(4)?,
            });
        }
    }
    Ok(subjects)
}

/// The rows a batch writes back: new keys (with their item counts), ciphertexts of
/// fields and records, index entries, each with its subject.
struct BatchRows {
    keys: Vec<(String, SubjectKeyRow, i64)>,
    fields: Vec<(String, String, Vec<u8>)>,
    records: Vec<(String, String, String, Vec<u8>)>,
    index: Vec<(String, IndexEntry)>,
}

/// The statements that store resealed subjects: new keys, ciphertexts replaced in
/// place (their times kept), older keys deleted, and a change noted for each subject
/// so that every node forgets what it cached.
fn write_resealed(
    script: &mut Script,
    new_version: i64,
    now: i64,
    rows: BatchRows,
    done: &[String],
) {
    let BatchRows {
        keys,
        fields,
        records,
        index,
    } = rows;
    if done.is_empty() {
        return;
    }
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        script.insert_values(super::subjects::SUBJECT_KEYS_COLUMNS, chunk.len(), 6, "");
        for (id, key, items) in chunk {
            script
                .bind(id.clone())
                .bind(key.version)
                .bind(key.kek_version)
                .bind(key.wrapped.clone())
                .bind(*items)
                .bind(now);
        }
    }
    for chunk in fields.chunks(ROWS_PER_STATEMENT) {
        script.insert_values(
            super::subjects::SUBJECT_FIELDS_COLUMNS,
            chunk.len(),
            5,
            " ON CONFLICT (subject_id, field) DO UPDATE SET dek_version = excluded.dek_version, sealed = excluded.sealed",
        );
        for (id, field, sealed) in chunk {
            script
                .bind(id.clone())
                .bind(field.clone())
                .bind(new_version)
                .bind(sealed.clone())
                .bind(now);
        }
    }
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        script.insert_values(
            super::subjects::RECORDS_COLUMNS,
            chunk.len(),
            6,
            " ON CONFLICT (id) DO UPDATE SET dek_version = excluded.dek_version, sealed = excluded.sealed",
        );
        for (id, subject, collection, sealed) in chunk {
            script
                .bind(id.clone())
                .bind(subject.clone())
                .bind(collection.clone())
                .bind(new_version)
                .bind(sealed.clone())
                .bind(now);
        }
    }
    for chunk in done.chunks(ROWS_PER_STATEMENT) {
        script.sql(&format!(
            "DELETE FROM subject_keys WHERE version < ? AND subject_id IN ({})",
            vec!["?"; chunk.len()].join(", ")
        ));
        script.bind(new_version);
        for id in chunk {
            script.bind(id.clone());
        }
    }
    let by_subject = super::subjects::blind_index_by_subject(script.postgres());
    for chunk in done.chunks(ROWS_PER_STATEMENT) {
        script.sql(&format!(
            "DELETE FROM {by_subject} WHERE subject_id IN ({})",
            vec!["?"; chunk.len()].join(", ")
        ));
        for id in chunk {
            script.bind(id.clone());
        }
    }
    for chunk in index.chunks(ROWS_PER_STATEMENT) {
        script.insert_values(
            super::subjects::BLIND_INDEX_COLUMNS,
            chunk.len(),
            4,
            " ON CONFLICT DO NOTHING",
        );
        for (id, e) in chunk {
            script
                .bind(e.field.clone())
                .bind(e.digest.clone())
                .bind(id.clone())
                .bind(e.key_version);
        }
    }
    super::changes::note_many_in(script, SUBJECT, done, now);
}
