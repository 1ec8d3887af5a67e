//! The audit trail's indexes, kept off the audited request's path: which events are
//! about which subject (a subject's access history, PIPL Art. 45, and the
//! `accesses_by_subject` report), which were made by which token (the `incident` and
//! `accesses_by_actor` reports), and when each block of events happened (every report's
//! time window).
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
//! - The same holds for the two indexes the trail's own table no longer carries (each
//!   cost the audit commit a page or more; measured with the read load, see
//!   benches/load): `actor_events` stands for `audit_events (actor_token, …)`, and
//!   `time_blocks` for `audit_events (ts)`. That one is a summary, not an entry per
//!   event: for each block of `TIME_BLOCK` consecutive events, the earliest and latest
//!   time in it. A time window then becomes the range of sequence numbers from the first
//!   block that reaches into the window to the last one, read in the table's own order,
//!   plus the part not indexed yet. Times follow sequence numbers closely (an event is
//!   stamped as it is queued) but need not follow them exactly (another node's clock, a
//!   clock set back): the summary holds each block's true extremes, so a window is found
//!   whole whatever the order, and only less tightly when times stray.

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

/// Events per block of the time summary (`time_blocks`): a window's ends are found to
/// within a block, and the summary holds one row per block.
pub const TIME_BLOCK: i64 = 256;

/// The layout of the SQLite index file (its `user_version`). A file of an earlier layout
/// is emptied and made again from the trail: it is derived data.
const FILE_LAYOUT: i64 = 2;

/// Creates the SQLite index file's tables if the file is new or of an earlier layout (run
/// by the indexer's connection, before any other connection reads them; on PostgreSQL
/// migrations made them).
pub(super) async fn create_tables(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let layout: i64 = sqlx::query_scalar("PRAGMA audit_index.user_version")
        .fetch_one(&mut *conn)
        .await?;
    if layout == FILE_LAYOUT {
        return Ok(());
    }
    if layout != 0 {
        tracing::info!(
            layout,
            "the audit index file is of an earlier layout; making it again from the trail"
        );
    }
    // A deferred BEGIN: the statements lock the index file only, never the database the
    // server may be writing.
    conn.execute(
        format!(
            "BEGIN; \
             DROP TABLE IF EXISTS audit_index.subject_events; \
             DROP TABLE IF EXISTS audit_index.actor_events; \
             DROP TABLE IF EXISTS audit_index.time_blocks; \
             DROP TABLE IF EXISTS audit_index.state; \
             CREATE TABLE audit_index.subject_events ( \
                 subject TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (subject, seq) \
             ) WITHOUT ROWID; \
             CREATE TABLE audit_index.actor_events ( \
                 actor TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (actor, seq) \
             ) WITHOUT ROWID; \
             CREATE TABLE audit_index.time_blocks ( \
                 block INTEGER PRIMARY KEY, min_ts INTEGER NOT NULL, max_ts INTEGER NOT NULL \
             ); \
             CREATE TABLE audit_index.state ( \
                 id INTEGER PRIMARY KEY CHECK (id = 1), through_seq INTEGER NOT NULL, \
                 through_hash BLOB, pruned_through INTEGER NOT NULL \
             ); \
             INSERT INTO audit_index.state (id, through_seq, through_hash, pruned_through) \
                 VALUES (1, 0, NULL, 0); \
             PRAGMA audit_index.user_version = {FILE_LAYOUT}; \
             COMMIT;"
        )
        .as_str(),
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
         SELECT seq FROM audit_events WHERE subject = {subject}{after} AND {BEYOND_MARK}"
    )
}

/// The ids of the events made by the token bound as `token`, within the sequence range
/// that can hold the time window `[from, to)` (see `window_range`): indexed entries up to
/// the index's mark, and a scan of the trail beyond it. For `seq IN (…)` (`:token_seqs`
/// in a report).
pub fn token_seqs(token: &str, from: &str, to: &str) -> String {
    let WindowRange { first, last } = window_range(from, to);
    format!(
        "SELECT seq FROM audit_index.actor_events WHERE actor = {token} \
             AND seq >= {first} AND seq <= {last} \
         UNION ALL \
         SELECT seq FROM audit_events WHERE actor_token = {token} AND {BEYOND_MARK}"
    )
}

/// The index's mark, as a scalar subquery.
macro_rules! through {
    () => {
        "(SELECT through_seq FROM audit_index.state WHERE id = 1)"
    };
}
const THROUGH: &str = through!();

/// The part of the trail beyond the index's mark, as a condition on `seq`. Bounded above
/// by the head as well, which changes nothing in one statement's snapshot but lets
/// PostgreSQL's planner see a range: with only `seq > (subquery)` it expects a third of
/// the trail and starts parallel workers for a few rows (measured: 5–100 ms a report on
/// a million events, against 1 ms with the bound).
const BEYOND_MARK: &str = concat!(
    "seq > ",
    through!(),
    " AND seq <= (SELECT MAX(seq) FROM audit_events)"
);

/// The range of indexed sequence numbers that can hold events of a time window, as two
/// scalar SQL expressions (NULL when no indexed event can be in it).
struct WindowRange {
    first: String,
    last: String,
}

/// The indexed sequence numbers that can hold events with a time in `[from, to)` (both
/// placeholders such as `$1`): from the first block of the summary that reaches into the
/// window to the end of the last one. The blocks are scanned in order and the scan stops
/// at the first match from each end, so a recent window costs little however long the
/// trail.
fn window_range(from: &str, to: &str) -> WindowRange {
    let blocks = format!("FROM audit_index.time_blocks WHERE max_ts >= {from} AND min_ts < {to}");
    WindowRange {
        first: format!("((SELECT block {blocks} ORDER BY block LIMIT 1) * {TIME_BLOCK} + 1)"),
        last: format!(
            "((SELECT block {blocks} ORDER BY block DESC LIMIT 1) * {TIME_BLOCK} + {TIME_BLOCK})"
        ),
    }
}

/// The events with a time in `[from, to)` (placeholders such as `$1`, each used twice), as
/// a table named `audit_events` with all its columns (`FROM :events_in_window` in a
/// report): the indexed part read as one range in sequence order, the rest scanned.
pub fn events_in_window(from: &str, to: &str) -> String {
    let WindowRange { first, last } = window_range(from, to);
    format!(
        "(SELECT * FROM audit_events WHERE seq >= {first} AND seq <= {last} \
             AND seq <= {THROUGH} AND ts >= {from} AND ts < {to} \
         UNION ALL \
         SELECT * FROM audit_events WHERE {BEYOND_MARK} AND ts >= {from} AND ts < {to}) \
         audit_events"
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
                     DELETE FROM audit_index.actor_events; \
                     DELETE FROM audit_index.time_blocks; \
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
            for delete in [
                "DELETE FROM audit_index.subject_events WHERE seq <= $1",
                "DELETE FROM audit_index.actor_events WHERE seq <= $1",
                // Blocks wholly pruned; the block the anchor falls in keeps its extremes,
                // which still bound what is left of it.
                &format!(
                    "DELETE FROM audit_index.time_blocks WHERE block * {TIME_BLOCK} + {TIME_BLOCK} <= $1"
                ),
            ] {
                sqlx::query(delete)
                    .bind(anchor)
                    .execute(&mut *tx.conn())
                    .await?;
            }
        }
        // Every event up to the anchor is gone (the trail may now be empty).
        let head = head.max(anchor);
        let from = through.max(anchor);
        let upto = head.min(from.saturating_add(max.max(1)));
        if upto > from {
            // Sorted by key, so each index page is visited once: a subject's or a token's
            // new entries are one run (few tokens make most events).
            for (index, key, only) in [
                (
                    "subject_events (subject, seq)",
                    "subject",
                    " AND subject IS NOT NULL",
                ),
                ("actor_events (actor, seq)", "actor_token", ""),
            ] {
                sqlx::query(&format!(
                    "INSERT INTO audit_index.{index} \
                     SELECT {key}, seq FROM audit_events \
                     WHERE seq > $1 AND seq <= $2{only} \
                     ORDER BY {key}, seq \
                     ON CONFLICT DO NOTHING"
                ))
                .bind(from)
                .bind(upto)
                .execute(&mut *tx.conn())
                .await?;
            }
            // A block the last step left partial widens to take in its new events.
            let (least, greatest) = if postgres {
                ("LEAST", "GREATEST")
            } else {
                ("MIN", "MAX")
            };
            sqlx::query(&format!(
                "INSERT INTO audit_index.time_blocks AS b (block, min_ts, max_ts) \
                 SELECT (seq - 1) / {TIME_BLOCK}, MIN(ts), MAX(ts) FROM audit_events \
                 WHERE seq > $1 AND seq <= $2 \
                 GROUP BY (seq - 1) / {TIME_BLOCK} \
                 ON CONFLICT (block) DO UPDATE SET \
                     min_ts = {least}(b.min_ts, excluded.min_ts), \
                     max_ts = {greatest}(b.max_ts, excluded.max_ts)"
            ))
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
