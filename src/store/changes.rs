//! The change feed that keeps every process's caches honest (see `src/changes.rs`).

use super::audit::CHAIN_LOCK;
use super::write::Script;
use super::{Store, StoreError};

/// A token was revoked; the key is its id.
pub const TOKEN: &str = "token";
/// A subject's consent, hold or existence changed; the key is its id.
pub const SUBJECT: &str = "subject";
/// A master-key version was added or destroyed: read the key source again.
pub const KEYS: &str = "keys";

/// Records a change, inside the transaction that makes it.
pub(super) async fn note(
    conn: &mut sqlx::AnyConnection,
    kind: &str,
    key: &str,
    at: i64,
) -> Result<(), StoreError> {
    let mut script = Script::new(conn);
    note_in(&mut script, kind, key, at);
    script.run(conn).await
}

/// [`note`] as part of a script. On PostgreSQL change rows are numbered under the
/// audit chain's advisory lock (re-entrant: the audit writer already holds it for its
/// batch), so a poller that has seen `seq` can never later meet a smaller one.
pub(super) fn note_in(script: &mut Script, kind: &str, key: &str, at: i64) {
    if script.postgres() {
        script
            .sql("SELECT pg_advisory_xact_lock(?)")
            .bind(CHAIN_LOCK);
    }
    script
        .sql("INSERT INTO cache_changes (kind, key, at) VALUES (?, ?, ?)")
        .bind(kind.to_owned())
        .bind(key.to_owned())
        .bind(at);
}

/// [`note_in`] for many keys of one kind, in one statement a chunk.
pub(super) fn note_many_in(script: &mut Script, kind: &str, keys: &[String], at: i64) {
    if keys.is_empty() {
        return;
    }
    if script.postgres() {
        script
            .sql("SELECT pg_advisory_xact_lock(?)")
            .bind(CHAIN_LOCK);
    }
    for chunk in keys.chunks(500) {
        script.sql(&format!(
            "INSERT INTO cache_changes (kind, key, at) VALUES {}",
            super::write::tuples(chunk.len(), 3)
        ));
        for key in chunk {
            script.bind(kind.to_owned()).bind(key.clone()).bind(at);
        }
    }
}

impl Store {
    /// The newest change's number (0 when there is none).
    pub async fn changes_head(&self) -> Result<i64, StoreError> {
        let head: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM cache_changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(head.unwrap_or(0))
    }

    /// Changes after `seq`, oldest first: `(seq, kind, key)`.
    pub async fn changes_since(&self, seq: i64) -> Result<Vec<(i64, String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT seq, kind, key FROM cache_changes WHERE seq > $1 ORDER BY seq LIMIT 10000",
        )
        .bind(seq)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Removes changes older than `before` (ms); every live process has long seen them.
    pub async fn prune_changes(&self, before: i64) -> Result<(), StoreError> {
        self.transact(super::write::op(move |conn| {
            Box::pin(async move {
                sqlx::query("DELETE FROM cache_changes WHERE at < $1")
                    .bind(before)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        }))
        .await
    }
}
