use sqlx::{Executor, Row};

use super::write::Script;
use super::{Backend, Store, StoreError, WriteTx, Writer};

/// One audit event as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: i64,
    pub ts: i64,
    pub actor_token: String,
    pub actor_role: String,
    pub action: String,
    pub subject: Option<String>,
    pub field: Option<String>,
    pub target: Option<String>,
    pub purpose: String,
    pub decision: String,
    pub reason: String,
    pub request_id: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// A signed checkpoint of the chain head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub ts: i64,
    pub key_id: String,
    pub signature: Vec<u8>,
}

type RawCheckpoint = (i64, Vec<u8>, i64, String, Vec<u8>);

/// PostgreSQL: the events `after < seq <= through` as `COPY … (FORMAT binary)`, which
/// the server writes with no per-event expression to evaluate.
async fn copy_events(
    bulk: &sqlx::PgPool,
    after: i64,
    through: i64,
) -> Result<PackedEvents, StoreError> {
    use futures_util::TryStreamExt as _;
    let mut conn = bulk.acquire().await?;
    // COPY takes no bind parameters; both bounds are integers.
    let sql = format!(
        "COPY (SELECT {COLUMNS} FROM audit_events WHERE seq > {after} AND seq <= {through} ORDER BY seq) \
         TO STDOUT (FORMAT binary)"
    );
    let mut bytes = Vec::new();
    {
        let mut stream = conn.copy_out_raw(sql.as_str()).await?;
        while let Some(chunk) = stream.try_next().await? {
            bytes.extend_from_slice(&chunk);
        }
    }
    // The header: signature, flags, and an extension area to skip.
    let body = bytes
        .strip_prefix(COPY_SIGNATURE)
        .and_then(|rest| {
            let ext = u32::from_be_bytes(rest.get(4..8)?.try_into().ok()?) as usize;
            rest.get(8 + ext..)
        })
        .ok_or_else(|| StoreError::Task("COPY output without its header".into()))?
        .to_vec();
    Ok(PackedEvents {
        bytes: body,
        copy: true,
    })
}

impl AuditRow {
    /// The same event, borrowed.
    pub fn borrowed(&self) -> AuditRowRef<'_> {
        AuditRowRef {
            seq: self.seq,
            ts: self.ts,
            actor_token: &self.actor_token,
            actor_role: &self.actor_role,
            action: &self.action,
            subject: self.subject.as_deref(),
            field: self.field.as_deref(),
            target: self.target.as_deref(),
            purpose: &self.purpose,
            decision: &self.decision,
            reason: &self.reason,
            request_id: &self.request_id,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        }
    }
}

/// One audit event borrowed from where it was read (an [`AuditRow`], or a page of
/// [`PackedEvents`]).
#[derive(Debug, Clone, Copy)]
pub struct AuditRowRef<'a> {
    pub seq: i64,
    pub ts: i64,
    pub actor_token: &'a str,
    pub actor_role: &'a str,
    pub action: &'a str,
    pub subject: Option<&'a str>,
    pub field: Option<&'a str>,
    pub target: Option<&'a str>,
    pub purpose: &'a str,
    pub decision: &'a str,
    pub reason: &'a str,
    pub request_id: &'a str,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
}

/// A run of consecutive events read in bulk. SQLite concatenates each event's columns
/// into `seq,ts,` followed by twelve length-prefixed values (`<bytes>:<value>`, or `-`
/// for NULL), and the events in order, into one value; PostgreSQL writes them with
/// `COPY … (FORMAT binary)`. Reading thousands of events as one value instead of as
/// rows of 14 columns is what makes `audit verify` fast: the driver's cost is per row
/// and per column, not per byte.
///
/// A row whose packing is NULL (a NULL in a NOT NULL column) is left out by the
/// aggregate, which the reader sees as a gap in the sequence: it cannot hide an event.
#[derive(Debug, Default)]
pub struct PackedEvents {
    bytes: Vec<u8>,
    /// PostgreSQL: the bytes are `COPY … (FORMAT binary)` output, header removed.
    copy: bool,
}

/// A page of [`PackedEvents`] that does not follow the format (or holds text that is
/// not UTF-8): the trail was altered outside the vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an audit event cannot be read (altered outside the vault)")]
pub struct Unreadable;

impl PackedEvents {
    /// The events in order; after an [`Unreadable`], nothing more.
    pub fn iter(&self) -> impl Iterator<Item = Result<AuditRowRef<'_>, Unreadable>> + '_ {
        let mut rest = self.bytes.as_slice();
        let copy = self.copy;
        std::iter::from_fn(move || {
            if copy && rest == (-1i16).to_be_bytes() {
                return None; // the trailer
            }
            if rest.is_empty() {
                return None;
            }
            let row = if copy {
                unpack_copy(&mut rest)
            } else {
                unpack(&mut rest)
            }
            .ok_or(Unreadable);
            if row.is_err() {
                rest = &[];
            }
            Some(row)
        })
    }
}

/// Reads one packed event off the front of `rest`.
fn unpack<'a>(rest: &mut &'a [u8]) -> Option<AuditRowRef<'a>> {
    fn number(rest: &mut &[u8], end: u8) -> Option<i64> {
        let at = rest.iter().position(|b| *b == end)?;
        let (digits, tail) = rest.split_at(at);
        *rest = &tail[1..];
        let (negative, digits) = match digits.split_first() {
            Some((b'-', d)) => (true, d),
            _ => (false, digits),
        };
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = digits.iter().try_fold(0i64, |n, d| {
            n.checked_mul(10)?.checked_add(i64::from(d - b'0'))
        })?;
        Some(if negative { -n } else { n })
    }
    fn value<'a>(rest: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
        if let Some(tail) = rest.strip_prefix(b"-") {
            *rest = tail;
            return Some(None);
        }
        let len = usize::try_from(number(rest, b':')?).ok()?;
        if len > rest.len() {
            return None;
        }
        let (v, tail) = rest.split_at(len);
        *rest = tail;
        Some(Some(v))
    }
    assemble(rest, |r| number(r, b','), value)
}

/// An event from the columns in table order, read by `int` (seq, ts) and `value` (the
/// rest: `None` is NULL); text must be UTF-8.
fn assemble<'a>(
    rest: &mut &'a [u8],
    int: impl Fn(&mut &'a [u8]) -> Option<i64>,
    value: impl Fn(&mut &'a [u8]) -> Option<Option<&'a [u8]>>,
) -> Option<AuditRowRef<'a>> {
    let text = |rest: &mut &'a [u8]| -> Option<Option<&'a str>> {
        value(rest)?
            .map(|v| std::str::from_utf8(v).ok())
            .map_or(Some(None), |t| t.map(Some))
    };
    let required = |rest: &mut &'a [u8]| text(rest)?;
    Some(AuditRowRef {
        seq: int(rest)?,
        ts: int(rest)?,
        actor_token: required(rest)?,
        actor_role: required(rest)?,
        action: required(rest)?,
        subject: text(rest)?,
        field: text(rest)?,
        target: text(rest)?,
        purpose: required(rest)?,
        decision: required(rest)?,
        reason: required(rest)?,
        request_id: required(rest)?,
        prev_hash: value(rest)??,
        hash: value(rest)??,
    })
}

/// Reads one event off the front of `COPY … (FORMAT binary)` output: a field count,
/// then each field as a 4-byte length (-1: NULL) and its bytes; bigint as 8 bytes.
fn unpack_copy<'a>(rest: &mut &'a [u8]) -> Option<AuditRowRef<'a>> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if rest.len() < n {
            return None;
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Some(head)
    }
    fn value<'a>(rest: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
        let len = i32::from_be_bytes(take(rest, 4)?.try_into().ok()?);
        if len == -1 {
            return Some(None);
        }
        Some(Some(take(rest, usize::try_from(len).ok()?)?))
    }
    fn int(rest: &mut &[u8]) -> Option<i64> {
        Some(i64::from_be_bytes(value(rest)??.try_into().ok()?))
    }
    if i16::from_be_bytes(take(rest, 2)?.try_into().ok()?) != 14 {
        return None;
    }
    assemble(rest, int, value)
}

/// The signature every `COPY … (FORMAT binary)` output starts with.
const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// SQLite: the SELECT that packs the events `seq > $1 AND seq <= $2` (see
/// [`PackedEvents`]; PostgreSQL writes them with COPY instead).
fn packed_sql() -> &'static str {
    use std::sync::LazyLock;
    const TEXTS: [&str; 10] = [
        "actor_token",
        "actor_role",
        "action",
        "subject",
        "field",
        "target",
        "purpose",
        "decision",
        "reason",
        "request_id",
    ];
    const NULLABLE: [&str; 3] = ["subject", "field", "target"];
    static SQLITE: LazyLock<String> = LazyLock::new(|| {
        // octet_length() counts bytes; `||` passes a BLOB's bytes through as they are
        // (and measured faster here than one concat() call per event). Each `||` copies
        // both sides, so the pieces are joined as a balanced tree: every byte is copied
        // about log2(pieces) times instead of once per piece after it.
        let mut pieces = vec!["seq".to_owned(), "','".into(), "ts".into(), "','".into()];
        for c in TEXTS {
            pieces.push(if NULLABLE.contains(&c) {
                format!("iif({c} IS NULL, '-', octet_length({c}) || ':' || {c})")
            } else {
                format!("(octet_length({c}) || ':' || {c})")
            });
        }
        for c in ["prev_hash", "hash"] {
            pieces.push(format!("(octet_length({c}) || ':' || {c})"));
        }
        while pieces.len() > 1 {
            pieces = pieces
                .chunks(2)
                .map(|pair| match pair {
                    [a, b] => format!("({a} || {b})"),
                    [a] => a.clone(),
                    _ => unreachable!("chunks of two"),
                })
                .collect();
        }
        let p = pieces.remove(0);
        format!(
            "SELECT CAST(group_concat(p, '') AS BLOB) FROM \
             (SELECT {p} AS p FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq)"
        )
    });
    &SQLITE
}

/// Advisory lock key that serialises appends to the chain across vault nodes.
pub(super) const CHAIN_LOCK: i64 = 0x7069_6976_6175_6c74;

const COLUMNS: &str = "seq, ts, actor_token, actor_role, action, subject, field, target, purpose, \
                       decision, reason, request_id, prev_hash, hash";

fn row_to_event(r: &sqlx::any::AnyRow) -> Result<AuditRow, sqlx::Error> {
    Ok(AuditRow {
        seq: r.try_get(0)?,
        ts: r.try_get(1)?,
        actor_token: r.try_get(2)?,
        actor_role: r.try_get(3)?,
        action: r.try_get(4)?,
        subject: r.try_get(5)?,
        field: r.try_get(6)?,
        target: r.try_get(7)?,
        purpose: r.try_get(8)?,
        decision: r.try_get(9)?,
        reason: r.try_get(10)?,
        request_id: r.try_get(11)?,
        prev_hash: r.try_get(12)?,
        hash: r.try_get(13)?,
    })
}

/// Rows per INSERT statement (14 bind parameters each; well inside SQLite's and
/// PostgreSQL's limits).
const INSERT_CHUNK: usize = 256;

impl WriteTx {
    /// Takes the chain lock (PostgreSQL: an advisory lock held until commit, which
    /// serialises appends across vault nodes; SQLite: the write lock is already held)
    /// and returns the chain head.
    pub async fn lock_chain(&mut self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(CHAIN_LOCK)
                .execute(&mut *self.conn())
                .await?;
        }
        Ok(
            sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *self.conn())
                .await?,
        )
    }

    /// Checks that an event could be appended now: inserts one after the head inside a
    /// savepoint and takes it back. Nothing is left in the trail.
    pub async fn probe_audit_insert(&mut self, after_seq: i64) -> Result<(), StoreError> {
        self.conn().execute("SAVEPOINT piivault_probe").await?;
        let row = AuditRow {
            seq: after_seq + 1,
            actor_token: "probe".into(),
            actor_role: "vault".into(),
            action: "probe".into(),
            purpose: "admin".into(),
            decision: "allow".into(),
            reason: "probe".into(),
            request_id: "probe".into(),
            prev_hash: vec![0; 32],
            hash: vec![0; 32],
            ..Default::default()
        };
        let inserted = self.insert_audit(vec![row]).await;
        self.conn()
            .execute("ROLLBACK TO SAVEPOINT piivault_probe")
            .await?;
        self.conn()
            .execute("RELEASE SAVEPOINT piivault_probe")
            .await?;
        inserted
    }

    /// Inserts numbered and chained events, many rows per statement (anonymous
    /// placeholders on SQLite: see `Script`).
    pub async fn insert_audit(&mut self, rows: Vec<AuditRow>) -> Result<(), StoreError> {
        let script = self.audit_script(rows);
        script.run(self.conn()).await
    }

    /// Inserts the events as [`WriteTx::insert_audit`] does, and commits. On SQLite the
    /// inserts and the `COMMIT` go to SQLite's worker thread as one statement list (one
    /// round trip instead of two for every batch of the audit writer). If any of them
    /// fails, the transaction is left open and dropped with its connection: the database
    /// rolls it back, whichever statement failed.
    pub async fn append_and_commit(mut self, rows: Vec<AuditRow>) -> Result<(), StoreError> {
        if self.backend() == Backend::Postgres {
            self.insert_audit(rows).await?;
            return self.commit().await;
        }
        let mut script = self.audit_script(rows);
        script.sql("COMMIT");
        script.run(self.conn()).await?;
        self.committed();
        Ok(())
    }

    fn audit_script(&mut self, rows: Vec<AuditRow>) -> Script {
        let mut script = Script::new(self.conn());
        add_audit_inserts(&mut script, rows);
        script
    }
}

/// Adds the inserts of `rows` to `script`, many rows per statement.
fn add_audit_inserts(script: &mut Script, rows: Vec<AuditRow>) {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<AuditRow> = rows.by_ref().take(INSERT_CHUNK).collect();
        script.insert_values(&format!("audit_events ({COLUMNS})"), chunk.len(), 14, "");
        for row in chunk {
            script
                .bind(row.seq)
                .bind(row.ts)
                .bind(row.actor_token)
                .bind(row.actor_role)
                .bind(row.action)
                .bind(row.subject)
                .bind(row.field)
                .bind(row.target)
                .bind(row.purpose)
                .bind(row.decision)
                .bind(row.reason)
                .bind(row.request_id)
                .bind(row.prev_hash)
                .bind(row.hash);
        }
    }
}

/// What [`Store::append_audit_after_known_head`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The events are committed.
    Committed,
    /// Nothing was written: the head has moved (another process appended), or another
    /// process holds the write lock. Append the usual way, which reads the head.
    HeadUnknown,
}

impl Store {
    /// SQLite: appends events already chained after the head this process's audit writer
    /// committed last, in one round trip to SQLite's worker thread (`BEGIN IMMEDIATE`, the
    /// inserts and `COMMIT` as one statement list), without reading the head first.
    ///
    /// Safe because sequence numbers are contiguous and unique: if another process
    /// appended meanwhile, the event numbered after the known head exists already, the
    /// first insert fails on it, and the transaction is rolled back whole.
    pub async fn append_audit_after_known_head(
        &self,
        rows: Vec<AuditRow>,
    ) -> Result<Appended, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(Appended::HeadUnknown);
        }
        let mut lease = self.lease_for(Writer::Audit).await?;
        let mut script = Script::new(lease.conn());
        script.sql("BEGIN IMMEDIATE");
        add_audit_inserts(&mut script, rows);
        script.sql("COMMIT");
        match script.execute(lease.conn()).await {
            Ok(()) => Ok(Appended::Committed),
            Err(e) if super::is_conflict(&e) || super::write::is_busy(&e) => {
                // A conflict: BEGIN took the lock and the first insert failed. Busy: BEGIN
                // was refused and no transaction is open, and ROLLBACK only says so.
                if lease.conn().execute("ROLLBACK").await.is_err() && super::is_conflict(&e) {
                    lease.discard();
                }
                Ok(Appended::HeadUnknown)
            }
            Err(e) => {
                // Whichever statement failed, closing the connection rolls back what is open.
                lease.discard();
                Err(e.into())
            }
        }
    }
}

impl Store {
    /// The last event's sequence number and hash.
    pub async fn audit_head(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Up to `limit` events after `after_seq`, in order.
    pub async fn audit_events(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        self.audit_page(None, after_seq, limit).await
    }

    /// Every audit event about one subject, oldest first (for its own access history).
    pub async fn audit_events_for_subject(
        &self,
        subject: &str,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut out = Vec::new();
        loop {
            let after = out.last().map_or(0, |e: &AuditRow| e.seq);
            let page = self.audit_page(Some(subject), after, 5000).await?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }

    /// The events `after_seq < seq <= through_seq`, packed (see [`PackedEvents`]).
    pub async fn audit_packed(
        &self,
        after_seq: i64,
        through_seq: i64,
    ) -> Result<PackedEvents, StoreError> {
        if let Some(bulk) = &self.bulk {
            return copy_events(bulk, after_seq, through_seq).await;
        }
        let bytes: Option<Vec<u8>> = sqlx::query_scalar(packed_sql())
            .bind(after_seq)
            .bind(through_seq)
            .fetch_one(&self.pool)
            .await?;
        Ok(PackedEvents {
            bytes: bytes.unwrap_or_default(),
            copy: false,
        })
    }

    /// One page of events after `after_seq`, optionally only those about `subject`.
    async fn audit_page(
        &self,
        subject: Option<&str>,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let sql = if subject.is_some() {
            format!(
                "SELECT {COLUMNS} FROM audit_events WHERE seq IN ({}) ORDER BY seq LIMIT $2",
                super::subject_seqs("$3", Some("$1"))
            )
        } else {
            format!("SELECT {COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
        };
        let mut query = sqlx::query(&sql).bind(after_seq).bind(limit);
        if let Some(s) = subject {
            query = query.bind(s);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(row_to_event)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    /// Stores a signed checkpoint (through the writer: on SQLite, the one connection
    /// that writes).
    pub async fn insert_checkpoint(&self, cp: &CheckpointRow) -> Result<(), StoreError> {
        let cp = cp.clone();
        self.transact(super::write::op(move |conn| {
            let cp = cp.clone();
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (seq, hash, ts, key_id, signature) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (seq, key_id) DO NOTHING",
                )
                .bind(cp.seq)
                .bind(cp.hash.as_slice())
                .bind(cp.ts)
                .bind(cp.key_id.as_str())
                .bind(cp.signature.as_slice())
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        }))
        .await
    }

    pub async fn checkpoints(&self) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows: Vec<RawCheckpoint> = sqlx::query_as(
            "SELECT seq, hash, ts, key_id, signature FROM audit_checkpoints ORDER BY seq, key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, hash, ts, key_id, signature)| CheckpointRow {
                seq,
                hash,
                ts,
                key_id,
                signature,
            })
            .collect())
    }
}

/// A value bound to a report query.
#[derive(Debug, Clone)]
pub enum ReportParam {
    Int(i64),
    Text(String),
}

impl Store {
    /// Runs a report's SELECT (declared in `audit/`) and returns column names and rows,
    /// each cell as JSON (integers, text, reals or null).
    pub async fn run_report(
        &self,
        sql: &str,
        binds: &[ReportParam],
    ) -> Result<(Vec<String>, Vec<Vec<serde_json::Value>>), StoreError> {
        use sqlx::Column;
        let mut q = sqlx::query(sql);
        for b in binds {
            q = match b {
                ReportParam::Int(i) => q.bind(*i),
                ReportParam::Text(s) => q.bind(s.clone()),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        let columns = rows
            .first()
            .map(|r| r.columns().iter().map(|c| c.name().to_owned()).collect())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut cells = Vec::with_capacity(r.len());
            for i in 0..r.len() {
                let cell = if let Ok(v) = r.try_get::<Option<i64>, _>(i) {
                    v.map(serde_json::Value::from)
                } else if let Ok(v) = r.try_get::<Option<String>, _>(i) {
                    v.map(serde_json::Value::from)
                } else if let Ok(v) = r.try_get::<Option<f64>, _>(i) {
                    v.map(serde_json::Value::from)
                } else {
                    None
                };
                cells.push(cell.unwrap_or(serde_json::Value::Null));
            }
            out.push(cells);
        }
        Ok((columns, out))
    }
}

impl Store {
    /// The newest pruning anchor: events up to its seq were archived and removed.
    pub async fn audit_anchor(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT seq, hash FROM audit_anchors ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Records the anchor and removes every event up to it, in one transaction.
    /// Returns the number of events removed.
    pub async fn prune_audit(&self, seq: i64, hash: &[u8]) -> Result<u64, StoreError> {
        let mut tx = self.begin_write(Writer::Audit, false).await?;
        tx.lock_chain().await?;
        sqlx::query("INSERT INTO audit_anchors (seq, hash, pruned_at) VALUES ($1, $2, $3)")
            .bind(seq)
            .bind(hash)
            .bind(super::now_ms())
            .execute(&mut *tx.conn())
            .await?;
        let gone = sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
            .bind(seq)
            .execute(&mut *tx.conn())
            .await?;
        tx.commit().await?;
        Ok(gone.rows_affected())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn row(seq: i64) -> AuditRow {
        AuditRow {
            seq,
            ts: -5,
            actor_token: "tok_1".into(),
            actor_role: "审计员".into(),
            action: "read".into(),
            subject: (seq % 2 == 0).then(|| "sub_1".into()),
            field: Some(String::new()),
            target: Some("3:x-,".into()),
            purpose: "audit".into(),
            decision: "allow".into(),
            reason: "ok".into(),
            request_id: "req_1".into(),
            prev_hash: vec![0, b':', b'-', 255],
            hash: vec![7; 32],
        }
    }

    /// The text columns of a row, in column order.
    fn texts(r: &AuditRow) -> [Option<&String>; 10] {
        [
            Some(&r.actor_token),
            Some(&r.actor_role),
            Some(&r.action),
            r.subject.as_ref(),
            r.field.as_ref(),
            r.target.as_ref(),
            Some(&r.purpose),
            Some(&r.decision),
            Some(&r.reason),
            Some(&r.request_id),
        ]
    }

    /// Packs rows the way SQLite does.
    fn pack(rows: &[AuditRow]) -> PackedEvents {
        let mut bytes = Vec::new();
        for r in rows {
            bytes.extend_from_slice(format!("{},{},", r.seq, r.ts).as_bytes());
            let values = texts(r)
                .into_iter()
                .map(|t| t.map(|t| t.as_bytes()))
                .chain([Some(r.prev_hash.as_slice()), Some(r.hash.as_slice())]);
            for v in values {
                match v {
                    None => bytes.push(b'-'),
                    Some(v) => {
                        bytes.extend_from_slice(format!("{}:", v.len()).as_bytes());
                        bytes.extend_from_slice(v);
                    }
                }
            }
        }
        PackedEvents { bytes, copy: false }
    }

    fn unpacked(p: &PackedEvents) -> Vec<Result<AuditRow, Unreadable>> {
        p.iter()
            .map(|r| {
                r.map(|r| AuditRow {
                    seq: r.seq,
                    ts: r.ts,
                    actor_token: r.actor_token.into(),
                    actor_role: r.actor_role.into(),
                    action: r.action.into(),
                    subject: r.subject.map(Into::into),
                    field: r.field.map(Into::into),
                    target: r.target.map(Into::into),
                    purpose: r.purpose.into(),
                    decision: r.decision.into(),
                    reason: r.reason.into(),
                    request_id: r.request_id.into(),
                    prev_hash: r.prev_hash.to_vec(),
                    hash: r.hash.to_vec(),
                })
            })
            .collect()
    }

    #[test]
    fn packed_events_read_back_exactly() {
        let rows = vec![row(1), row(2), row(3)];
        let read = unpacked(&pack(&rows));
        assert_eq!(read, rows.into_iter().map(Ok).collect::<Vec<_>>());
        assert!(unpacked(&PackedEvents::default()).is_empty());
    }

    /// A row as PostgreSQL's `COPY … (FORMAT binary)` writes it.
    fn copy_row(r: &AuditRow) -> Vec<u8> {
        let mut out = 14i16.to_be_bytes().to_vec();
        let mut field = |v: Option<&[u8]>| match v {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        };
        field(Some(&r.seq.to_be_bytes()));
        field(Some(&r.ts.to_be_bytes()));
        for t in texts(r) {
            field(t.map(|t| t.as_bytes()));
        }
        field(Some(&r.prev_hash));
        field(Some(&r.hash));
        out
    }

    #[test]
    fn copy_output_reads_back_exactly_and_stops_where_it_breaks() {
        let rows = [row(1), row(2)];
        let mut bytes: Vec<u8> = rows.iter().flat_map(copy_row).collect();
        bytes.extend_from_slice(&(-1i16).to_be_bytes());
        let packed = PackedEvents {
            bytes: bytes.clone(),
            copy: true,
        };
        assert_eq!(
            unpacked(&packed),
            rows.iter().cloned().map(Ok).collect::<Vec<_>>()
        );
        // Cut short, or a field count that is not the table's.
        let cut = PackedEvents {
            bytes: bytes[..bytes.len() - 40].to_vec(),
            copy: true,
        };
        assert!(unpacked(&cut).last().unwrap().is_err());
        let mut wrong = bytes.clone();
        wrong[1] = 13;
        let wrong = PackedEvents {
            bytes: wrong,
            copy: true,
        };
        assert_eq!(unpacked(&wrong), vec![Err(Unreadable)]);
    }

    #[test]
    fn a_malformed_page_stops_at_the_event_it_cannot_read() {
        let good = pack(&[row(1)]).bytes;
        let mut cases: Vec<Vec<u8>> = vec![
            good[..good.len() - 1].to_vec(),        // truncated
            [&good[..], b"2,".as_slice()].concat(), // a second event cut short
            b"x,1,".to_vec(),                       // not a number
            b"1,1,99999999999999999999:".to_vec(),  // a length that overflows
            b"1,1,5:ab".to_vec(),                   // a length past the end
            b"1,1,".to_vec(),                       // nothing after the numbers
            b",1,".to_vec(),                        // an empty number
            b"1,1,1:\xff".to_vec(),                 // text that is not UTF-8
            [&good[..], b"-".as_slice()].concat(),  // a NULL where a number goes
        ];
        // A NULL in a column that may not be NULL.
        let text = String::from_utf8_lossy(&good).replacen("5:tok_1", "-", 1);
        cases.push(text.into_bytes());
        for bytes in cases {
            let read = unpacked(&PackedEvents {
                bytes: bytes.clone(),
                copy: false,
            });
            let bad = read.iter().position(Result::is_err);
            assert_eq!(
                bad,
                Some(read.len() - 1),
                "{:?}: {read:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}
