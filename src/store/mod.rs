//! The one place SQL lives. SQLite and PostgreSQL behind one `Store`.
//!
//! We use sqlx's `AnyPool` with `$1` placeholders: every statement is written once and
//! runs on both stores, so the two backends cannot drift apart feature by feature. The
//! price is that only basic types cross the boundary (i64, text, bytes), which is all
//! this schema uses (times are i64 milliseconds, ciphertexts and digests are bytes).
//! Migrations stay per backend (`migrations/sqlite`, `migrations/postgres`).

mod audit;
mod audit_index;
pub(crate) mod changes;
mod consent;
mod exports;
mod keys;
mod nodes;
mod provisions;
mod reencrypt;
mod requests;
mod retention;
mod subjects;
mod tokens;
mod write;

pub use audit::{
    Appended, AuditRow, AuditRowRef, CheckpointRow, PackedEvents, ReportParam, Unreadable,
};
pub use audit_index::{events_in_window, subject_seqs, token_seqs, IndexStep, TIME_BLOCK};
pub use consent::ConsentRow;
pub use exports::BulkExportRow;
pub use keys::{KeyVersionRow, MasterKeyRow, Rewrapped, SystemKeyRow, WrappedCount, WrappedKey};
pub use nodes::NodeRow;
pub use provisions::{NoticeRow, PipiaRow, ProvisionRow};
pub use reencrypt::{Reseal, Resealed, SealedItem, SealedSubject};
pub use requests::{RequestRow, SubjectStatus};
pub use retention::ExpiredRow;
pub use subjects::{
    FieldRow, ImportRows, ImportSubject, IndexEntry, NewSubject, RecordRow, SubjectKeyRow,
    SubjectSnapshot, SubjectWrite,
};
pub use tokens::TokenRow;
pub(crate) use write::Writer;
pub use write::{WriteOp, WriteTx};

use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::ConnectOptions as _;
use sqlx::{AnyConnection, AnyPool, Executor};

use write::Dedicated;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (use sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("a concurrent write changed the same keys; retry")]
    Conflict,
    /// The subject (or the row a change needs) does not exist, or was erased.
    #[error("no such subject")]
    NotFound,
    #[error("store task: {0}")]
    Task(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A connection pool to one store, with migrations applied, and the dedicated
/// connections writes go through (see `write.rs`).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite: the one connection every write transaction of this process uses.
    write_conn: Arc<Dedicated>,
    /// PostgreSQL: the audit writer's own connection.
    audit_conn: Arc<Dedicated>,
    /// SQLite: the audit indexer's connection (see `audit_index.rs`).
    index_conn: Arc<Dedicated>,
    /// PostgreSQL: connections made only when the trail is read in bulk (`COPY`, which
    /// the `Any` driver does not offer).
    bulk: Option<sqlx::PgPool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Settings every new connection gets. SQLite: durable commits, readers beside one
/// writer, deleted ciphertexts and keys overwritten in the file (erasure); `attach`
/// names the audit index file, attached as `audit_index` (see `audit_index.rs`).
///
/// SQLite reads through its own page cache, not a memory map of the file: the file
/// grows with every checkpoint of the trail, and each connection then mapped it again
/// on its next read, unmapping the old map (a TLB shootdown on every core) and faulting
/// its pages back in. Measured at 64 connections: a read the subject cache cannot
/// answer 5,400-5,700 -> 7,000-7,700 req/s, a lookup by ID number 6,900-7,600 -> 9,000-11,700.
async fn configure(
    conn: &mut AnyConnection,
    backend: Backend,
    attach: Option<&str>,
) -> Result<(), sqlx::Error> {
    if backend == Backend::Sqlite {
        conn.execute(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
             PRAGMA secure_delete = ON; PRAGMA mmap_size = 0; \
             PRAGMA cache_size = -16384;",
        )
        .await?;
        if let Some(path) = attach {
            audit_index::attach(conn, path).await?;
        }
    }
    Ok(())
}

/// A time in milliseconds as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Store {
    /// Connects, configures durability (SQLite: WAL, synchronous=FULL, secure_delete)
    /// and applies the backend's migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let index_file = match backend {
            Backend::Sqlite => {
                let path = sqlite_path(url);
                create_private_file(path)?;
                audit_index::file_for(path)
            }
            Backend::Postgres => None,
        };
        if let Some(index) = &index_file {
            create_private_file(index)?;
        }
        // sqlx warns of a statement slower than a second with its whole text: for a batch
        // of an import, tens of kilobytes of placeholders on one log line. Slowness is
        // measured by the commit-latency metrics; the statements go to DEBUG.
        let options = AnyConnectOptions::from_str(url)?
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        let attach = index_file.clone();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // A ping before each use finds a PostgreSQL connection the server dropped
            // (a restart) before a request fails on it. On SQLite it only asks the
            // connection's own thread whether it is alive: one more hand-off to that
            // thread and back for every pooled query (lookups, reads the subject cache
            // cannot answer). A connection whose thread died is still found and closed
            // when it is handed back (sqlx pings it then, off the request's path).
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _meta| {
                let attach = attach.clone();
                Box::pin(async move { configure(conn, backend, attach.as_deref()).await })
            })
            .connect_with(options.clone())
            .await?;
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        let bulk = match backend {
            Backend::Postgres => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(crate::audit::VERIFY_READERS as u32)
                    .idle_timeout(Duration::from_secs(30))
                    .connect_lazy_with(
                        sqlx::postgres::PgConnectOptions::from_str(url)?
                            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1))
                            // These connections only read pages of the trail in `seq`
                            // order. Left to itself the planner, misled by statistics
                            // that lag the appends, took a bitmap scan and then sorted
                            // every page: a fifth of the server's work in `audit verify`.
                            // Pinned, it walks the primary key, already in order.
                            .options([
                                ("enable_bitmapscan", "off"),
                                ("enable_seqscan", "off"),
                                ("enable_sort", "off"),
                            ]),
                    ),
            ),
            Backend::Sqlite => None,
        };
        let store = Self {
            pool,
            backend,
            bulk,
            write_conn: Arc::new(Dedicated::new(options.clone(), backend, None)),
            audit_conn: Arc::new(Dedicated::new(options.clone(), backend, None)),
            index_conn: Arc::new(Dedicated::new(options, backend, index_file)),
        };
        store.open_audit_index().await?;
        Ok(store)
    }

    /// Whether `close` was called. It closes the writers' own connections before the
    /// pool, so this is true from the moment they refuse work: a background task that
    /// fails then (the checkpoint signer of a CLI command that is ending) sees why.
    pub fn is_closed(&self) -> bool {
        self.write_conn.is_closed() || self.pool.is_closed()
    }

    /// Pooled connections in use and idle.
    pub fn pool_use(&self) -> (u32, usize) {
        let idle = self.pool.num_idle();
        (self.pool.size().saturating_sub(idle as u32), idle)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the store answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// SQLite: copies the WAL back into the database every quarter second from a task of
    /// its own, with a passive checkpoint (which never holds up the writer), instead of
    /// letting the writer do it inside a commit once the WAL reaches a size: that commit
    /// then took tens of milliseconds, and every audited request queued behind it waited.
    /// Stops when the store is closed.
    pub fn spawn_wal_checkpointer(&self) {
        if self.backend != Backend::Sqlite {
            return;
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if pool.is_closed() {
                    return;
                }
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&pool)
                    .await
                {
                    tracing::debug!(error = %e, "WAL checkpoint did not complete; trying again");
                }
            }
        });
    }

    /// After an erasure on SQLite, moves the WAL into the database file and truncates
    /// it, so that old page images holding the destroyed key do not linger in the WAL.
    /// Best effort: a busy checkpoint is retried by SQLite's own automatic checkpoints.
    pub async fn checkpoint(&self) {
        if self.backend == Backend::Sqlite {
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await
            {
                tracing::warn!(error = %e, "WAL checkpoint after erasure did not complete");
            }
        }
    }

    pub async fn close(&self) {
        self.write_conn.close().await;
        self.audit_conn.close().await;
        self.index_conn.close().await;
        if let Some(bulk) = &self.bulk {
            bulk.close().await;
        }
        self.pool.close().await;
    }

    pub async fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM vault_meta WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

/// The file a SQLite URL names (empty or `:memory:` for none).
fn sqlite_path(url: &str) -> &str {
    url.trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default()
}

/// Creates a new SQLite database file readable by its owner only; SQLite gives its
/// WAL and shared-memory files the same permissions.
fn create_private_file(path: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.is_empty() || path == ":memory:" || std::path::Path::new(path).exists() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(|_| ())
        .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))
}

/// Is this a unique-constraint violation (a concurrent writer got there first)?
fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_is_closed_as_soon_as_its_writer_refuses_work() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/v.db?mode=rwc", dir.path().display());
        let store = Store::connect(&url, 2).await.unwrap();
        assert!(!store.is_closed());
        // `close` shuts the writers' connections first; the pool still answers then.
        store.write_conn.close().await;
        assert!(store.begin_write(Writer::Shared, false).await.is_err());
        store.ping().await.unwrap();
        assert!(store.is_closed());
        store.close().await;
        assert!(store.is_closed());
    }
}
