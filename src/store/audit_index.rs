//! Which audit events are about which subject: the index behind a subject's access
//! history (PIPL Art. 45) and the `accesses_by_subject` report, kept off the audited
//! request's path.
//!
//! An index on `audit_events (subject, …)` maintained by every commit costs one random
//! index page per event: each audited read of a different subject dirties a different
//! page, and SQLite writes every dirty page whole into its WAL (4 KB per event, the
//! largest cost of an audited read; measured with perf, see benches/load). Instead, the
//! events are indexed afterwards, many at a time, sorted by subject, so each index page
//! is written once for all the events it gains (`Store::index_audit`, run about once a
//! second by the audit trail's indexer task). What the index has not reached yet is
//! found by scanning the newest events, which are few: a lookup is always complete.
//!
//! - The index lives in the schema `audit_index`: on PostgreSQL a schema of the same
//!   database; on SQLite a file of its own beside the database (`<db>-audit-index`),
//!   attached to every reading connection and to the indexer's. Its writes then never
//!   take the database's write lock, so indexing never holds up the audit writer.
//! - It holds subject ids and sequence numbers only, and is derived data: if the file is
//!   lost it is made again from the trail. If it does not match the trail (the database
//!   was restored from a backup, say) it is emptied and made again: `state` records the
//!   hash of the last event indexed, checked on every start.
//! - `state.through_seq` says how far the index reaches; entries and that mark change in
//!   one transaction, so a lookup (one statement, one snapshot of the index) takes
//!   indexed entries up to the mark and scans the trail only beyond it.

use sqlx::{AnyConnection, Executor};

use super::{Backend, Store, StoreError, Writer};

/// The SQLite index file beside the database at `db` (none for an in-memory database).
pub(super) fn file_for(db: &str) -> Option<String> {
    (!db.is_empty() && db != ":memory:").then(|| format!("{db}-audit-index"))
}

/// Attaches the SQLite index file as `audit_index`. Its commits are
/// `synchronous = NORMAL`: a commit lost to a power cut is only indexing work done again.
pub(super) async fn attach(conn: &mut AnyConnection, path: &str) -> Result<(), sqlx::Error> {
    sqlx::query("ATTACH DATABASE $1 AS audit_index")
        .bind(path)
        .execute(&mut *conn)
        .await?;
    conn.execute("PRAGMA audit_index.journal_mode = WAL; PRAGMA audit_index.synchronous = NORMAL;")
        .await?;
    Ok(())
}

/// Creates the SQLite index file's tables if the file is new (run by the indexer's
/// connection, before any other connection reads them; on PostgreSQL a migration made
/// them).
pub(super) async fn create_tables(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS audit_index.subject_events ( \
             subject TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (subject, seq) \
         ) WITHOUT ROWID; \
         CREATE TABLE IF NOT EXISTS audit_index.state ( \
             id INTEGER PRIMARY KEY CHECK (id = 1), through_seq INTEGER NOT NULL, \
             through_hash BLOB, pruned_through INTEGER NOT NULL \
         ); \
         INSERT OR IGNORE INTO audit_index.state (id, through_seq, through_hash, pruned_through) \
             VALUES (1, 0, NULL, 0);",
    )
    .await?;
    Ok(())
}

/// The ids of the events about the subject bound as `subject` (a placeholder such as
/// `$3`), after the seq bound as `after` if given: indexed entries up to the index's mark,
/// and a scan of the trail beyond it. For `seq IN (…)`; the one definition of "the events
/// about a subject", used by the access history and by reports (`:subject_seqs`).
pub fn subject_seqs(subject: &str, after: Option<&str>) -> String {
    let after = after.map(|a| format!(" AND seq > {a}")).unwrap_or_default();
    format!(
        "SELECT seq FROM audit_index.subject_events WHERE subject = {subject}{after} \
         UNION ALL \
         SELECT seq FROM audit_events WHERE subject = {subject}{after} \
             AND seq > (SELECT through_seq FROM audit_index.state WHERE id = 1)"
    )
}

/// What one indexing step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStep {
    /// Events the step took in.
    pub indexed: i64,
    /// Events still beyond the index's mark afterwards.
    pub behind: i64,
}

impl Store {
    /// Checks the index against the trail at start, and empties it if it does not match
    /// (it is then made again from the start of the trail).
    pub(super) async fn open_audit_index(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            // Its first connection creates the index file's tables.
            self.index_conn.ready().await?;
        }
        let (through, hash): (i64, Option<Vec<u8>>) =
            sqlx::query_as("SELECT through_seq, through_hash FROM audit_index.state WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        if through == 0 {
            return Ok(());
        }
        let trail: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT hash FROM audit_events WHERE seq = $1")
                .bind(through)
                .fetch_optional(&self.pool)
                .await?;
        let anchor: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_anchors")
            .fetch_one(&self.pool)
            .await?;
        let matches = match trail {
            Some(h) => Some(h) == hash,
            // Pruned since it was indexed: its entries are removed by the next step.
            None => through <= anchor,
        };
        if !matches {
            tracing::warn!(
                through,
                "the audit index does not match the trail (restored from a backup?); making it again"
            );
            let mut tx = self.begin_write(Writer::Index, false).await?;
            tx.conn()
                .execute(
                    "DELETE FROM audit_index.subject_events; \
                     UPDATE audit_index.state SET through_seq = 0, through_hash = NULL, \
                         pruned_through = 0 WHERE id = 1",
                )
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Indexes up to `max` events beyond the index's mark, in one transaction, and
    /// removes the entries of events pruned since the last step. Several processes may
    /// run it at once: PostgreSQL serialises them on the state row; on SQLite the second
    /// writer of the index file fails on its stale snapshot and tries again later.
    pub async fn index_audit(&self, max: i64) -> Result<IndexStep, StoreError> {
        let postgres = self.backend == Backend::Postgres;
        let mut tx = self.begin_write(Writer::Index, false).await?;
        let lock = if postgres { " FOR UPDATE" } else { "" };
        let (through, pruned): (i64, i64) = sqlx::query_as(&format!(
            "SELECT through_seq, pruned_through FROM audit_index.state WHERE id = 1{lock}"
        ))
        .fetch_one(&mut *tx.conn())
        .await?;
        let (anchor, head): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM audit_anchors), \
                    (SELECT COALESCE(MAX(seq), 0) FROM audit_events)",
        )
        .fetch_one(&mut *tx.conn())
        .await?;
        if anchor > pruned {
            // Rare (an operator prunes the trail), and a scan of the index.
            sqlx::query("DELETE FROM audit_index.subject_events WHERE seq <= $1")
                .bind(anchor)
                .execute(&mut *tx.conn())
                .await?;
        }
        // Every event up to the anchor is gone (the trail may now be empty).
        let head = head.max(anchor);
        let from = through.max(anchor);
        let upto = head.min(from.saturating_add(max.max(1)));
        if upto > from {
            // Sorted by subject, so each index page is visited once.
            sqlx::query(
                "INSERT INTO audit_index.subject_events (subject, seq) \
                 SELECT subject, seq FROM audit_events \
                 WHERE seq > $1 AND seq <= $2 AND subject IS NOT NULL \
                 ORDER BY subject, seq \
                 ON CONFLICT DO NOTHING",
            )
            .bind(from)
            .bind(upto)
            .execute(&mut *tx.conn())
            .await?;
        }
        if upto > through || anchor > pruned {
            sqlx::query(
                "UPDATE audit_index.state SET through_seq = $1, pruned_through = $2, \
                     through_hash = (SELECT hash FROM audit_events WHERE seq = $1) \
                 WHERE id = 1",
            )
            .bind(upto.max(through))
            .bind(anchor)
            .execute(&mut *tx.conn())
            .await?;
            tx.commit().await?;
        } else {
            tx.rollback().await;
        }
        Ok(IndexStep {
            indexed: (upto - from).max(0),
            behind: head - upto.max(through),
        })
    }
}
