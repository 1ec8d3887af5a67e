use std::sync::Arc;

use sqlx::Row;

use super::write::{add_arg, op, Script};
use super::{now_ms, Store, StoreError, WriteOp};

/// The tables a subject's rows are inserted into many at a time (create, import,
/// re-encryption), each with the columns a row is inserted with.
pub(super) const BLIND_INDEX_COLUMNS: &str = "blind_index (field, digest, subject_id, key_version)";
pub(super) const SUBJECT_KEYS_COLUMNS: &str =
    "subject_keys (subject_id, version, kek_version, wrapped, encryptions, created_at)";
pub(super) const SUBJECT_FIELDS_COLUMNS: &str =
    "subject_fields (subject_id, field, dek_version, sealed, updated_at)";
pub(super) const RECORDS_COLUMNS: &str =
    "records (id, subject_id, collection, dek_version, sealed, created_at)";

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

/// One blind-index entry of a subject, made by blind-index key `key_version`.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub field: String,
    pub digest: Vec<u8>,
    pub key_version: i64,
}

/// Rows per INSERT statement in an import (at 6 columns, well inside SQLite's 32,766
/// and PostgreSQL's 65,535 bind parameters).
pub const IMPORT_ROWS_PER_INSERT: usize = 500;

/// One bound value of an import row.
#[derive(Clone)]
enum Arg {
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// `INSERT INTO target VALUES …` for `rows` (all of one width), [`IMPORT_ROWS_PER_INSERT`]
/// a statement.
fn insert_rows(script: &mut Script, target: &str, rows: &[Vec<Arg>]) {
    let Some(per_row) = rows.first().map(Vec::len) else {
        return;
    };
    for chunk in rows.chunks(IMPORT_ROWS_PER_INSERT) {
        script.insert_values(target, chunk.len(), per_row, "");
        for arg in chunk.iter().flatten() {
            match arg.clone() {
                Arg::Int(v) => script.bind(v),
                Arg::Text(v) => script.bind(v),
                Arg::Bytes(v) => script.bind(v),
            };
        }
    }
}

/// The rows an import batch inserts, table by table, made ready before the batch
/// reaches the writer ([`ImportRows::new`] runs on the importer's worker thread): the
/// writer, which every other change waits for, only binds them.
pub struct ImportRows {
    subjects: usize,
    tables: Vec<(&'static str, Vec<Vec<Arg>>)>,
}

impl ImportRows {
    pub fn new(imports: Vec<ImportSubject>) -> Self {
        let now = now_ms();
        let count = imports.len();
        let (mut subjects, mut keys, mut fields) = (Vec::new(), Vec::new(), Vec::new());
        let (mut records, mut consents, mut index) = (Vec::new(), Vec::new(), Vec::new());
        for ImportSubject {
            subject: s,
            records: rs,
            consents: cs,
        } in imports
        {
            subjects.push(vec![Arg::Text(s.id.clone()), Arg::Int(now), Arg::Int(now)]);
            keys.push(vec![
                Arg::Text(s.id.clone()),
                Arg::Int(s.key.version),
                Arg::Int(s.key.kek_version),
                Arg::Bytes(s.key.wrapped),
                Arg::Int((s.fields.len() + rs.len()) as i64),
                Arg::Int(now),
            ]);
            for f in s.fields {
                fields.push(vec![
                    Arg::Text(s.id.clone()),
                    Arg::Text(f.field),
                    Arg::Int(f.dek_version),
                    Arg::Bytes(f.sealed),
                    Arg::Int(now),
                ]);
            }
            for r in rs {
                records.push(vec![
                    Arg::Text(r.id),
                    Arg::Text(s.id.clone()),
                    Arg::Text(r.collection),
                    Arg::Int(r.dek_version),
                    Arg::Bytes(r.sealed),
                    Arg::Int(r.created_at),
                ]);
            }
            for c in cs {
                consents.push(vec![
                    Arg::Text(c.subject_id),
                    Arg::Text(c.purpose),
                    Arg::Text(c.kind),
                    Arg::Int(c.purpose_version),
                    Arg::Text(c.notice_version),
                    Arg::Text(c.channel),
                    Arg::Int(i64::from(c.separate)),
                    Arg::Int(i64::from(c.guardian)),
                    Arg::Text(c.actor_token),
                    Arg::Int(c.at),
                ]);
            }
            for e in s.index {
                index.push(vec![
                    Arg::Text(e.field),
                    Arg::Bytes(e.digest),
                    Arg::Text(s.id.clone()),
                    Arg::Int(e.key_version),
                ]);
            }
        }
        Self {
            subjects: count,
            tables: vec![
                ("subjects (id, created_at, updated_at)", subjects),
                (SUBJECT_KEYS_COLUMNS, keys),
                (SUBJECT_FIELDS_COLUMNS, fields),
                (RECORDS_COLUMNS, records),
                (
                    "consent_events (subject_id, purpose, kind, purpose_version, notice_version, \
                     channel, separate, guardian, actor_token, at)",
                    consents,
                ),
                (BLIND_INDEX_COLUMNS, index),
            ],
        }
    }

    /// How many subjects the batch creates.
    pub fn subjects(&self) -> usize {
        self.subjects
    }
}

/// A subject an import creates, with its records and consents.
#[derive(Debug, Clone)]
pub struct ImportSubject {
    pub subject: NewSubject,
    pub records: Vec<RecordRow>,
    pub consents: Vec<super::ConsentRow>,
}

/// A new subject with its first DEK, fields and index entries.
#[derive(Debug, Clone)]
pub struct NewSubject {
    pub id: String,
    pub key: SubjectKeyRow,
    pub fields: Vec<FieldRow>,
    pub index: Vec<IndexEntry>,
}

/// A change to an existing subject's fields, made with DEK `key_version`; `new_key`
/// is set when that version was created for this write (usage bound reached).
#[derive(Debug, Clone)]
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

/// The one-round-trip snapshot query; `$blob` is the backend's byte-string type (the
/// only difference between the two).
macro_rules! snapshot_sql {
    ($blob:literal) => {
        concat!(
            "SELECT CAST(0 AS BIGINT), legal_hold_case, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), \
                    CAST(NULL AS BIGINT), CAST(NULL AS ", $blob, ") \
               FROM subjects WHERE id = $1 AND erased_at IS NULL \
             UNION ALL \
             SELECT CAST(1 AS BIGINT), CAST(NULL AS TEXT), version, kek_version, encryptions, wrapped \
               FROM subject_keys WHERE subject_id = $1 \
             UNION ALL \
             SELECT CAST(2 AS BIGINT), field, dek_version, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), sealed \
               FROM subject_fields WHERE subject_id = $1"
        )
    };
}

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

/// Counts `n` more encryptions under data-key `version` of the subject; `Conflict` if
/// that key no longer exists. A write seals its values before its transaction starts;
/// a re-encryption may have replaced that key since. Run after `touch`, which holds the
/// subject (PostgreSQL: its row lock; a re-encryption takes it too; SQLite: the write
/// lock), so the answer stays true until the commit. The write is then made again with
/// the subject's current key.
async fn count_encryptions(
    conn: &mut Conn,
    subject: &str,
    version: i64,
    n: i64,
) -> Result<(), StoreError> {
    let counted = sqlx::query(
        "UPDATE subject_keys SET encryptions = encryptions + $3 WHERE subject_id = $1 AND version = $2",
    )
    .bind(subject)
    .bind(version)
    .bind(n)
    .execute(&mut *conn)
    .await?;
    if counted.rows_affected() == 0 {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

/// Numbered, typed parameters for one PostgreSQL statement.
#[derive(Default)]
struct Params {
    args: sqlx::any::AnyArguments<'static>,
    n: usize,
}

impl Params {
    /// Binds `value` and returns its placeholder, cast to `ty`.
    fn push<T>(&mut self, value: T, ty: &str) -> String
    where
        T: sqlx::Encode<'static, sqlx::Any> + sqlx::Type<sqlx::Any> + Send + 'static,
    {
        add_arg(&mut self.args, value);
        self.n += 1;
        format!("${}::{ty}", self.n)
    }

    /// `(field, dek_version, sealed)` rows of a `VALUES` list.
    fn field_rows(&mut self, fields: Vec<FieldRow>) -> String {
        let rows: Vec<String> = fields
            .into_iter()
            .map(|f| {
                format!(
                    "({}, {}, {})",
                    self.push(f.field, "text"),
                    self.push(f.dek_version, "bigint"),
                    self.push(f.sealed, "bytea")
                )
            })
            .collect();
        rows.join(", ")
    }

    /// `(field, digest)` rows of a `VALUES` list.
    fn index_keys(&mut self, index: impl IntoIterator<Item = (String, Vec<u8>)>) -> String {
        let rows: Vec<String> = index
            .into_iter()
            .map(|(field, digest)| {
                format!(
                    "({}, {})",
                    self.push(field, "text"),
                    self.push(digest, "bytea")
                )
            })
            .collect();
        rows.join(", ")
    }

    /// `(field, digest, key_version)` rows of a `VALUES` list.
    fn index_rows(&mut self, index: Vec<IndexEntry>) -> String {
        let rows: Vec<String> = index
            .into_iter()
            .map(|e| {
                format!(
                    "({}, {}, {})",
                    self.push(e.field, "text"),
                    self.push(e.digest, "bytea"),
                    self.push(e.key_version, "bigint")
                )
            })
            .collect();
        rows.join(", ")
    }
}

/// A correction on PostgreSQL in one round trip: data-modifying CTEs, each guarded by
/// the subject row that the first one updates (and locks), so that nothing is written
/// for a subject that does not exist or was erased. They all see one snapshot, so the
/// blind-index delete spares the entries the insert would put back.
async fn correct_in_one_statement(
    conn: &mut Conn,
    w: SubjectWrite,
    now: i64,
) -> Result<(), StoreError> {
    let mut p = Params::default();
    let id = p.push(w.subject_id.clone(), "text");
    let at = p.push(now, "bigint");
    let guard = "EXISTS (SELECT 1 FROM touched)";
    let mut ctes = vec![format!(
        "touched AS (UPDATE subjects SET updated_at = {at} WHERE id = {id} AND erased_at IS NULL RETURNING id)"
    )];
    let n = w.set.len() as i64;
    if let Some(key) = &w.new_key {
        let (version, kek, wrapped, count) = (
            p.push(key.version, "bigint"),
            p.push(key.kek_version, "bigint"),
            p.push(key.wrapped.clone(), "bytea"),
            p.push(n, "bigint"),
        );
        ctes.push(format!(
            "new_key AS (INSERT INTO subject_keys (subject_id, version, kek_version, wrapped, encryptions, created_at) \
             SELECT {id}, {version}, {kek}, {wrapped}, {count}, {at} WHERE {guard})"
        ));
    } else if n > 0 {
        let (count, version) = (p.push(n, "bigint"), p.push(w.key_version, "bigint"));
        ctes.push(format!(
            "counted AS (UPDATE subject_keys SET encryptions = encryptions + {count} \
             WHERE subject_id = {id} AND version = {version} AND {guard} RETURNING 1)"
        ));
    }
    let counted = if w.new_key.is_none() && n > 0 {
        "(SELECT count(*) FROM counted)"
    } else {
        "CAST(1 AS BIGINT)"
    };
    let changed: Vec<String> = w
        .set
        .iter()
        .map(|f| f.field.clone())
        .chain(w.remove.iter().cloned())
        .collect();
    if !changed.is_empty() {
        let list: Vec<String> = changed.into_iter().map(|f| p.push(f, "text")).collect();
        let spare = if w.index.is_empty() {
            String::new()
        } else {
            let keep = p.index_keys(w.index.iter().map(|e| (e.field.clone(), e.digest.clone())));
            format!(" AND (field, digest) NOT IN ({keep})")
        };
        ctes.push(format!(
            "unindexed AS (DELETE FROM blind_index WHERE subject_id = {id} AND field IN ({}){spare} AND {guard})",
            list.join(", ")
        ));
    }
    if !w.remove.is_empty() {
        let list: Vec<String> = w.remove.iter().map(|f| p.push(f.clone(), "text")).collect();
        ctes.push(format!(
            "removed AS (DELETE FROM subject_fields WHERE subject_id = {id} AND field IN ({}) AND {guard})",
            list.join(", ")
        ));
    }
    if !w.set.is_empty() {
        let rows = p.field_rows(w.set);
        ctes.push(format!(
            "upserted AS (INSERT INTO subject_fields (subject_id, field, dek_version, sealed, updated_at) \
             SELECT {id}, v.field, v.dek_version, v.sealed, {at} FROM (VALUES {rows}) AS v (field, dek_version, sealed) \
             WHERE {guard} ON CONFLICT (subject_id, field) DO UPDATE SET \
             dek_version = excluded.dek_version, sealed = excluded.sealed, updated_at = excluded.updated_at)"
        ));
    }
    if !w.index.is_empty() {
        let rows = p.index_rows(w.index);
        ctes.push(format!(
            "indexed AS (INSERT INTO blind_index (field, digest, subject_id, key_version) \
             SELECT v.field, v.digest, {id}, v.key_version FROM (VALUES {rows}) AS v (field, digest, key_version) \
             WHERE {guard} ON CONFLICT DO NOTHING)"
        ));
    }
    let (kind, lock) = (
        p.push(super::changes::SUBJECT.to_owned(), "text"),
        p.push(super::audit::CHAIN_LOCK, "bigint"),
    );
    ctes.push(format!(
        "noted AS (INSERT INTO cache_changes (kind, key, at) SELECT {kind}, {id}, {at} \
         FROM (SELECT pg_advisory_xact_lock({lock})) AS l WHERE {guard})"
    ));
    let sql = format!(
        "WITH {} SELECT (SELECT count(*) FROM touched), {counted}",
        ctes.join(", ")
    );
    let (found, counted): (i64, i64) = match sqlx::query_as_with(&sql, p.args)
        .fetch_one(&mut *conn)
        .await
    {
        Ok(found) => found,
        Err(e) if super::is_conflict(&e) => return Err(StoreError::Conflict),
        Err(e) => return Err(e.into()),
    };
    if found == 0 {
        return Err(StoreError::NotFound);
    }
    if counted == 0 {
        // The data key this write sealed under was replaced meanwhile (a
        // re-encryption): the write is undone with its transaction, and made again.
        return Err(StoreError::Conflict);
    }
    Ok(())
}

/// A new subject on PostgreSQL in one round trip: its row, first key, fields and index
/// entries as data-modifying CTEs (a colliding id fails the whole statement).
async fn create_in_one_statement(
    conn: &mut Conn,
    s: NewSubject,
    now: i64,
) -> Result<(), StoreError> {
    let mut p = Params::default();
    let id = p.push(s.id.clone(), "text");
    let at = p.push(now, "bigint");
    let (version, kek, wrapped, count) = (
        p.push(s.key.version, "bigint"),
        p.push(s.key.kek_version, "bigint"),
        p.push(s.key.wrapped.clone(), "bytea"),
        p.push(s.fields.len() as i64, "bigint"),
    );
    let mut ctes = vec![
        format!("created AS (INSERT INTO subjects (id, created_at, updated_at) VALUES ({id}, {at}, {at}) RETURNING id)"),
        format!(
            "keyed AS (INSERT INTO subject_keys (subject_id, version, kek_version, wrapped, encryptions, created_at) \
             SELECT id, {version}, {kek}, {wrapped}, {count}, {at} FROM created)"
        ),
    ];
    if !s.fields.is_empty() {
        let rows = p.field_rows(s.fields);
        ctes.push(format!(
            "filled AS (INSERT INTO subject_fields (subject_id, field, dek_version, sealed, updated_at) \
             SELECT c.id, v.field, v.dek_version, v.sealed, {at} FROM created c, (VALUES {rows}) AS v (field, dek_version, sealed))"
        ));
    }
    if !s.index.is_empty() {
        let rows = p.index_rows(s.index);
        ctes.push(format!(
            "indexed AS (INSERT INTO blind_index (field, digest, subject_id, key_version) \
             SELECT v.field, v.digest, c.id, v.key_version FROM created c, (VALUES {rows}) AS v (field, digest, key_version) ON CONFLICT DO NOTHING)"
        ));
    }
    let sql = format!("WITH {} SELECT count(*) FROM created", ctes.join(", "));
    match sqlx::query_scalar_with::<_, i64, _>(&sql, p.args)
        .fetch_one(&mut *conn)
        .await
    {
        Ok(1) => Ok(()),
        Ok(_) => Err(StoreError::Conflict),
        Err(e) if super::is_conflict(&e) => Err(StoreError::Conflict),
        Err(e) => Err(e.into()),
    }
}

/// The blind index, to be searched by subject. Without statistics SQLite would search
/// its primary key (field, digest, subject) by field alone, walking every subject's
/// entry for that field: a scan that grows with the vault.
pub(super) fn blind_index_by_subject(postgres: bool) -> &'static str {
    if postgres {
        "blind_index"
    } else {
        "blind_index INDEXED BY blind_index_subject"
    }
}

fn add_key(script: &mut Script, subject: &str, key: &SubjectKeyRow, encryptions: i64, now: i64) {
    script
        .sql(
            "INSERT INTO subject_keys (subject_id, version, kek_version, wrapped, encryptions, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(subject.to_owned())
        .bind(key.version)
        .bind(key.kek_version)
        .bind(key.wrapped.clone())
        .bind(encryptions)
        .bind(now);
}

fn add_fields(script: &mut Script, subject: &str, fields: Vec<FieldRow>, now: i64) {
    if fields.is_empty() {
        return;
    }
    script.insert_values(
        SUBJECT_FIELDS_COLUMNS,
        fields.len(),
        5,
        " ON CONFLICT (subject_id, field) DO UPDATE SET \
         dek_version = excluded.dek_version, sealed = excluded.sealed, updated_at = excluded.updated_at",
    );
    for f in fields {
        script
            .bind(subject.to_owned())
            .bind(f.field)
            .bind(f.dek_version)
            .bind(f.sealed)
            .bind(now);
    }
}

fn add_index(script: &mut Script, subject: &str, index: Vec<IndexEntry>) {
    if index.is_empty() {
        return;
    }
    script.insert_values(
        BLIND_INDEX_COLUMNS,
        index.len(),
        4,
        " ON CONFLICT DO NOTHING",
    );
    for e in index {
        script
            .bind(e.field)
            .bind(e.digest)
            .bind(subject.to_owned())
            .bind(e.key_version);
    }
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
        let sql = match self.backend {
            super::Backend::Sqlite => snapshot_sql!("BLOB"),
            super::Backend::Postgres => snapshot_sql!("BYTEA"),
        };
        let rows = sqlx::query(sql).bind(id).fetch_all(&self.pool).await?;
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
            let s = s.clone();
            Box::pin(async move {
                let now = now_ms();
                if conn.backend_name() == "PostgreSQL" {
                    return create_in_one_statement(conn, s, now).await;
                }
                let mut script = Script::new(conn);
                script
                    .sql("INSERT INTO subjects (id, created_at, updated_at) VALUES (?, ?, ?)")
                    .bind(s.id.clone())
                    .bind(now)
                    .bind(now);
                add_key(&mut script, &s.id, &s.key, s.fields.len() as i64, now);
                add_fields(&mut script, &s.id, s.fields, now);
                add_index(&mut script, &s.id, s.index);
                script.run(conn).await
            })
        })
    }

    /// Many new subjects at once (an import): each table filled by multi-row INSERTs of
    /// at most [`IMPORT_ROWS_PER_INSERT`] rows. A subject that already exists is a
    /// `Conflict`, and the whole op fails.
    pub fn import_subjects_op(&self, rows: ImportRows) -> WriteOp {
        let rows = Arc::new(rows);
        op(move |conn| {
            let rows = rows.clone();
            Box::pin(async move {
                let mut script = Script::new(conn);
                for (target, table) in &rows.tables {
                    insert_rows(&mut script, target, table);
                }
                script.run(conn).await
            })
        })
    }

    /// How many of `ids` exist as subjects (erased or not).
    pub async fn count_subjects(&self, ids: &[String]) -> Result<i64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let list = (1..=ids.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT count(*) FROM subjects WHERE id IN ({list})");
        let mut query = sqlx::query_scalar::<_, i64>(&sql);
        for id in ids {
            query = query.bind(id.as_str());
        }
        Ok(query.fetch_one(&self.pool).await?)
    }

    /// A correction; `NotFound` if the subject does not exist or is erased.
    pub fn write_subject_op(&self, w: SubjectWrite) -> WriteOp {
        op(move |conn| {
            let w = w.clone();
            Box::pin(async move {
                let now = now_ms();
                if conn.backend_name() == "PostgreSQL" {
                    return correct_in_one_statement(conn, w, now).await;
                }
                touch(conn, &w.subject_id, now).await?;
                let n = w.set.len() as i64;
                if w.new_key.is_none() && n > 0 {
                    count_encryptions(conn, &w.subject_id, w.key_version, n).await?;
                }
                let mut script = Script::new(conn);
                if let Some(key) = &w.new_key {
                    add_key(&mut script, &w.subject_id, key, n, now);
                }
                let changed: Vec<String> = w
                    .set
                    .iter()
                    .map(|f| f.field.clone())
                    .chain(w.remove.iter().cloned())
                    .collect();
                if !changed.is_empty() {
                    let list = vec!["?"; changed.len()].join(", ");
                    script
                        .sql(&format!(
                            "DELETE FROM {} WHERE subject_id = ? AND field IN ({list})",
                            blind_index_by_subject(script.postgres())
                        ))
                        .bind(w.subject_id.clone());
                    for f in changed {
                        script.bind(f);
                    }
                }
                if !w.remove.is_empty() {
                    let list = vec!["?"; w.remove.len()].join(", ");
                    script
                        .sql(&format!(
                            "DELETE FROM subject_fields WHERE subject_id = ? AND field IN ({list})"
                        ))
                        .bind(w.subject_id.clone());
                    for f in &w.remove {
                        script.bind(f.clone());
                    }
                }
                add_fields(&mut script, &w.subject_id, w.set, now);
                add_index(&mut script, &w.subject_id, w.index);
                super::changes::note_in(&mut script, super::changes::SUBJECT, &w.subject_id, now);
                script.run(conn).await
            })
        })
    }

    /// Crypto-shredding: destroys the subject's DEKs and removes its fields, records,
    /// index entries and consents, keeping a tombstone. `NotFound` if there was no such
    /// subject.
    pub fn erase_subject_op(&self, id: &str) -> WriteOp {
        let id = id.to_owned();
        op(move |conn| {
            let id = id.clone();
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
                // Art. 47: every recipient that received the subject's data is told.
                super::provisions::owe_notices(conn, &id, "erasure", None, now).await?;
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
    /// a legal hold: at most `limit`, in id order, after the id `after` (a page).
    /// `digests` holds the value's digest under each live blind-index key version (one,
    /// except while the key is rotated); a subject indexed under any of them is found.
    pub async fn lookup(
        &self,
        field: &str,
        digests: &[Vec<u8>],
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, bool)>, StoreError> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let list = (4..4 + digests.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT DISTINCT b.subject_id, s.legal_hold_at FROM blind_index b JOIN subjects s ON s.id = b.subject_id \
             WHERE b.field = $1 AND b.subject_id > $2 AND s.erased_at IS NULL AND b.digest IN ({list}) \
             ORDER BY b.subject_id LIMIT $3"
        );
        let mut query = sqlx::query_as::<_, (String, Option<i64>)>(&sql)
            .bind(field)
            .bind(after)
            .bind(limit);
        for d in digests {
            query = query.bind(d.as_slice());
        }
        let rows = query.fetch_all(&self.pool).await?;
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
            let (subject, new_key, record) = (subject.clone(), new_key.clone(), record.clone());
            Box::pin(async move {
                let now = now_ms();
                touch(conn, &subject, now).await?;
                let mut script = Script::new(conn);
                match &new_key {
                    Some(key) => add_key(&mut script, &subject, key, 1, now),
                    None => count_encryptions(conn, &subject, record.dek_version, 1).await?,
                }
                script
                    .sql(
                        "INSERT INTO records (id, subject_id, collection, dek_version, sealed, created_at) \
                         VALUES (?, ?, ?, ?, ?, ?)",
                    )
                    .bind(record.id)
                    .bind(subject.clone())
                    .bind(record.collection)
                    .bind(record.dek_version)
                    .bind(record.sealed)
                    .bind(record.created_at);
                script.run(conn).await
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
