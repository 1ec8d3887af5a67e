use sqlx::{Executor, Row};

use super::write::{tuples, Script};
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
        let mut script = Script::new(self.conn());
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<AuditRow> = rows.by_ref().take(INSERT_CHUNK).collect();
            script.sql(&format!(
                "INSERT INTO audit_events ({COLUMNS}) VALUES {}",
                tuples(chunk.len(), 14)
            ));
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
        script.run(self.conn()).await
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

    /// One page of events after `after_seq`, optionally only those about `subject`.
    async fn audit_page(
        &self,
        subject: Option<&str>,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let filter = if subject.is_some() {
            "subject = $3 AND "
        } else {
            ""
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_events WHERE {filter}seq > $1 ORDER BY seq LIMIT $2"
        );
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
