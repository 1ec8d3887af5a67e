//! Write transactions that no client can poison.
//!
//! sqlx 0.8.6 counts transaction depth per connection and gets it wrong in two cases we
//! meet in practice: a `Transaction` future dropped while its `BEGIN` waits for SQLite's
//! write lock (sqlx #3980), and a custom `BEGIN IMMEDIATE` that fails (#3981). Either
//! leaves a pooled connection that believes it is inside a transaction, and every later
//! `begin` on it fails, for good. Both are fixed in sqlx 0.9, but upgrading alone would
//! not give us what we need anyway, so we do not use sqlx transactions at all:
//!
//! - [`WriteTx`] issues `BEGIN`, `COMMIT` and `ROLLBACK` as plain statements on a
//!   connection it leases. sqlx's depth counter never moves. A `WriteTx` that is dropped
//!   while open (its future was cancelled, or a statement failed and the rollback failed
//!   too) discards its connection instead of returning it: the database rolls the
//!   transaction back when the connection closes, and no one else ever sees it.
//! - SQLite allows one writer at a time. All of this process's write transactions go
//!   through one dedicated writer connection, taken in FIFO order behind an async mutex,
//!   so writers queue in memory instead of sleeping in SQLite's busy handler.
//!   PostgreSQL writes use the pool, except the audit writer, which has a dedicated
//!   connection that no handler can spoil or starve.
//! - A dedicated connection that failed is dropped and reconnected on next use, so the
//!   vault recovers by itself once the store answers again.
//! - Work that must not be cut half-way runs in a spawned task ([`Store::transact`], the
//!   audit writer), so a client hanging up never cancels a commit it already started.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sqlx::any::AnyConnectOptions;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, ConnectOptions, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{Backend, Store, StoreError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

type OpFn =
    dyn for<'c> Fn(&'c mut AnyConnection) -> BoxFuture<'c, Result<(), StoreError>> + Send + Sync;

/// A change to make inside a write transaction. Built only by the store (SQL lives
/// here); the domain prepares one and hands it to the audit trail, which commits it in
/// the same transaction as the events that describe it. It can be made more than once
/// (each run starts from its own copy of the data): the audit writer first runs a
/// batch's changes without savepoints and, only if one fails, rolls the batch back and
/// runs it again with each change in a savepoint of its own.
pub struct WriteOp(Box<OpFn>);

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteOp")
    }
}

/// Builds a [`WriteOp`] from a closure (a function, so that the closure's higher-ranked
/// signature is inferred).
pub(super) fn op<F>(f: F) -> WriteOp
where
    F: for<'c> Fn(&'c mut AnyConnection) -> BoxFuture<'c, Result<(), StoreError>>
        + Send
        + Sync
        + 'static,
{
    WriteOp(Box::new(f))
}

impl WriteOp {
    /// Several changes, made in order, as one.
    pub fn chain(ops: Vec<WriteOp>) -> WriteOp {
        let ops = Arc::new(ops);
        op(move |conn| {
            let ops = ops.clone();
            Box::pin(async move {
                for o in ops.iter() {
                    (o.0)(conn).await?;
                }
                Ok(())
            })
        })
    }
}

/// How long a SQLite write waits for another process's write lock (as the busy timeout
/// of the pooled connections).
const SQLITE_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// SQLite's "database is locked" (`SQLITE_BUSY` and its extended codes).
pub(super) fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == 5),
        _ => false,
    }
}

/// A connection held for one write transaction.
pub(super) enum Lease {
    Pooled(PoolConnection<Any>),
    Dedicated(OwnedMutexGuard<Option<AnyConnection>>),
}

impl Lease {
    pub(super) fn conn(&mut self) -> &mut AnyConnection {
        match self {
            Lease::Pooled(c) => c,
            // A dedicated lease is only made with a connection in the slot.
            Lease::Dedicated(g) => match g.as_mut() {
                Some(c) => c,
                None => unreachable!("a dedicated lease always holds a connection"),
            },
        }
    }

    /// Never hand this connection to anyone again.
    pub(super) fn discard(&mut self) {
        match self {
            Lease::Pooled(c) => c.close_on_drop(),
            Lease::Dedicated(g) => {
                // Dropping a connection closes it; the database rolls back what was open.
                g.take();
            }
        }
    }
}

/// A connection of our own, outside the pool, made again after a failure.
pub(super) struct Dedicated {
    options: AnyConnectOptions,
    backend: Backend,
    /// SQLite: the audit index file to attach (see `audit_index.rs`), if this
    /// connection reads or writes it.
    attach: Option<String>,
    slot: Arc<Mutex<Option<AnyConnection>>>,
    /// Set by `close`: the store is shut, and no connection is made again (a background
    /// task still running would otherwise reopen the files after a shutdown).
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Dedicated {
    pub(super) fn new(
        options: AnyConnectOptions,
        backend: Backend,
        attach: Option<String>,
    ) -> Self {
        Self {
            options,
            backend,
            attach,
            slot: Arc::new(Mutex::new(None)),
            closed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    async fn lease(&self) -> Result<Lease, StoreError> {
        let mut guard = self.slot.clone().lock_owned().await;
        if guard.is_none() {
            if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                return Err(StoreError::Task("the store is closed".into()));
            }
            let mut conn = self.options.connect().await?;
            super::configure(&mut conn, self.backend, self.attach.as_deref()).await?;
            if self.attach.is_some() {
                super::audit_index::create_tables(&mut conn).await?;
            }
            if self.backend == Backend::Sqlite {
                // Another process writing the same file (an operator's command beside the
                // server) makes `BEGIN IMMEDIATE` busy. SQLite's own busy handler sleeps
                // in steps of up to 100 ms, which every queued request would wait out;
                // `begin_write` waits in short async steps instead.
                sqlx::Executor::execute(&mut conn, "PRAGMA busy_timeout = 0").await?;
            }
            if self.backend == Backend::Sqlite && self.attach.is_none() {
                // The one connection that writes keeps more of the indexes it writes to
                // in memory (the pooled readers keep 16 MB each). It does not copy the WAL
                // back into the database itself, inside a commit that every queued
                // request waits for: a background task does (`spawn_wal_checkpointer`).
                // Should that task stop, the writer still copies it back at 256 MB.
                sqlx::Executor::execute(
                    &mut conn,
                    "PRAGMA cache_size = -131072; PRAGMA wal_autocheckpoint = 65536;",
                )
                .await?;
            }
            *guard = Some(conn);
        }
        Ok(Lease::Dedicated(guard))
    }

    /// Opens the connection now if it is not open yet.
    pub(super) async fn ready(&self) -> Result<(), StoreError> {
        self.lease().await.map(drop)
    }

    /// Whether `close` has begun: no connection is made or lent from then on.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Closes the connection, if one is open, for good.
    pub(super) async fn close(&self) {
        let mut slot = self.slot.lock().await;
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(conn) = slot.take() {
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

/// Which connection a write transaction should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// Ordinary writes: SQLite's writer connection, or a pooled PostgreSQL connection.
    Shared,
    /// The audit writer: SQLite's writer connection, or PostgreSQL's audit connection.
    Audit,
    /// The audit indexer (`audit_index.rs`): on SQLite a connection of its own that
    /// writes only the index file, so it never holds the database's write lock; on
    /// PostgreSQL a pooled connection.
    Index,
}

/// An open write transaction. Commit it, roll it back, or drop it: dropping an open one
/// discards its connection.
pub struct WriteTx {
    backend: Backend,
    lease: Lease,
    open: bool,
    savepoint: bool,
}

impl std::fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx").field("open", &self.open).finish()
    }
}

impl WriteTx {
    pub(super) fn conn(&mut self) -> &mut AnyConnection {
        self.lease.conn()
    }

    pub(super) fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn commit(mut self) -> Result<(), StoreError> {
        match self.lease.conn().execute("COMMIT").await {
            Ok(_) => {
                self.committed();
                Ok(())
            }
            Err(e) => {
                // SQLite keeps the transaction open after a failed COMMIT; end it.
                self.end().await;
                Err(e.into())
            }
        }
    }

    /// A `COMMIT` sent some other way succeeded: the connection is free again.
    pub(super) fn committed(&mut self) {
        self.open = false;
    }

    pub async fn rollback(mut self) {
        self.end().await;
    }

    async fn end(&mut self) {
        if self.lease.conn().execute("ROLLBACK").await.is_ok() {
            self.open = false;
        } else {
            self.lease.discard();
            self.open = false;
        }
    }

    /// Makes one change inside a savepoint. The outer error means the transaction can no
    /// longer be used; the inner one that this change failed and was undone, and the
    /// transaction goes on without it.
    pub async fn apply(&mut self, op: &WriteOp) -> Result<Result<(), StoreError>, StoreError> {
        if !self.savepoint {
            return Ok((op.0)(self.lease.conn()).await);
        }
        self.lease.conn().execute("SAVEPOINT piivault_op").await?;
        match (op.0)(self.lease.conn()).await {
            Ok(()) => {
                self.lease
                    .conn()
                    .execute("RELEASE SAVEPOINT piivault_op")
                    .await?;
                Ok(Ok(()))
            }
            Err(e) => {
                self.lease
                    .conn()
                    .execute("ROLLBACK TO SAVEPOINT piivault_op")
                    .await?;
                self.lease
                    .conn()
                    .execute("RELEASE SAVEPOINT piivault_op")
                    .await?;
                Ok(Err(e))
            }
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open {
            tracing::warn!("a write transaction was abandoned; its connection is discarded");
            self.lease.discard();
        }
    }
}

impl Store {
    /// Starts a write transaction on the connection `writer` calls for. On SQLite it
    /// takes the write lock at once (`BEGIN IMMEDIATE`), so a transaction never fails
    /// half-way on lock upgrade. `savepoints`: each [`WriteTx::apply`] is undone alone
    /// if it fails.
    pub(crate) async fn begin_write(
        &self,
        writer: Writer,
        savepoints: bool,
    ) -> Result<WriteTx, StoreError> {
        let lease = self.lease_for(writer).await?;
        self.begin_on(lease, writer, savepoints).await
    }

    /// The connection `writer` writes on.
    pub(super) async fn lease_for(&self, writer: Writer) -> Result<Lease, StoreError> {
        Ok(match (self.backend, writer) {
            (Backend::Sqlite, Writer::Index) => self.index_conn.lease().await?,
            (Backend::Sqlite, _) => self.write_conn.lease().await?,
            (Backend::Postgres, Writer::Audit) => self.audit_conn.lease().await?,
            (Backend::Postgres, _) => Lease::Pooled(self.pool.acquire().await?),
        })
    }

    async fn begin_on(
        &self,
        mut lease: Lease,
        writer: Writer,
        savepoints: bool,
    ) -> Result<WriteTx, StoreError> {
        let begin = match (self.backend, writer) {
            // IMMEDIATE would take the write lock of every attached file, the main
            // database's included; a deferred transaction takes only the index file's,
            // on its first write there.
            (Backend::Sqlite, Writer::Index) => "BEGIN",
            (Backend::Sqlite, _) => "BEGIN IMMEDIATE",
            (Backend::Postgres, _) => "BEGIN",
        };
        // SQLite: the write lock is held by another process; try again in short steps
        // (a failed BEGIN leaves no transaction open) for as long as the busy timeout
        // every connection is given.
        let deadline = tokio::time::Instant::now() + SQLITE_BUSY_WAIT;
        let mut pause = std::time::Duration::from_micros(100);
        loop {
            match lease.conn().execute(begin).await {
                Ok(_) => break,
                Err(e)
                    if self.backend == Backend::Sqlite
                        && is_busy(&e)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(2));
                }
                Err(e) => {
                    lease.discard();
                    return Err(e.into());
                }
            }
        }
        Ok(self.opened(lease, savepoints))
    }

    /// The transaction just begun on `lease`.
    fn opened(&self, lease: Lease, savepoints: bool) -> WriteTx {
        WriteTx {
            backend: self.backend,
            lease,
            open: true,
            savepoint: savepoints,
        }
    }

    /// Starts the audit writer's transaction and takes the chain (see
    /// [`WriteTx::lock_chain`]), returning the chain head. On SQLite, `BEGIN IMMEDIATE`
    /// and the read of the head go to SQLite's worker thread as one statement list: one
    /// round trip instead of two for every batch. Should another process hold the write
    /// lock, it waits as [`Store::begin_write`] does.
    pub(crate) async fn begin_audit(
        &self,
        savepoints: bool,
    ) -> Result<(WriteTx, Option<(i64, Vec<u8>)>), StoreError> {
        let mut lease = self.lease_for(Writer::Audit).await?;
        if self.backend == Backend::Sqlite {
            // `fetch_all`: sqlx's `fetch_optional` would take the first result (the
            // BEGIN's), find no row in it, and stop.
            let first: Result<Vec<(i64, Vec<u8>)>, _> = sqlx::query_as(
                "BEGIN IMMEDIATE; SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            )
            .fetch_all(lease.conn())
            .await;
            match first {
                Ok(mut rows) => {
                    let head = rows.pop();
                    return Ok((self.opened(lease, savepoints), head));
                }
                Err(e) if is_busy(&e) => {
                    // Busy at BEGIN: no transaction is open, and this ROLLBACK only says
                    // so. (Should the read have been busy after a BEGIN that took the
                    // lock, it ends that transaction.) Then wait as every writer does.
                    let _ = lease.conn().execute("ROLLBACK").await;
                }
                Err(e) => {
                    lease.discard();
                    return Err(e.into());
                }
            }
        }
        let mut tx = self.begin_on(lease, Writer::Audit, savepoints).await?;
        let head = tx.lock_chain().await?;
        Ok((tx, head))
    }

    /// Makes one change in a transaction of its own, in a task of its own: once started
    /// it runs to its end even if the caller stops waiting.
    pub async fn transact(&self, op: WriteOp) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tx = store.begin_write(Writer::Shared, false).await?;
            match tx.apply(&op).await? {
                Ok(()) => tx.commit().await,
                Err(e) => {
                    tx.rollback().await;
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// Several statements run as one: on SQLite as a single multi-statement string (one
/// round trip to SQLite's worker thread; anonymous `?` parameters are bound in order
/// across the statements), on PostgreSQL one by one (its protocol takes one statement per
/// bound query). Statements are written with `?` placeholders.
pub(super) struct Script {
    postgres: bool,
    /// SQLite: the statements so far, and every argument in order.
    sql: String,
    args: sqlx::any::AnyArguments<'static>,
    /// PostgreSQL: each statement, numbered, with its own arguments.
    statements: Vec<(String, sqlx::any::AnyArguments<'static>)>,
}

impl Script {
    pub(super) fn new(conn: &AnyConnection) -> Self {
        Self {
            postgres: conn.backend_name() == "PostgreSQL",
            sql: String::new(),
            args: Default::default(),
            statements: Vec::new(),
        }
    }

    pub(super) fn postgres(&self) -> bool {
        self.postgres
    }

    /// `INSERT` for a many-row insert inside a write transaction. On SQLite it is
    /// `INSERT OR FAIL`: a plain `INSERT` (conflict action ABORT) must be able to undo
    /// itself half-way, so SQLite copies every page it touches into a statement journal
    /// first; with FAIL it does not. A failure still fails the statement, and every
    /// caller then rolls the whole transaction back (or undoes its savepoint), so no
    /// half of a statement ever lands.
    pub(super) fn insert_verb(&self) -> &'static str {
        if self.postgres {
            "INSERT"
        } else {
            "INSERT OR FAIL"
        }
    }

    /// Adds a many-row insert: `INSERT INTO {into} VALUES (?, …), …{then}`, `rows` tuples
    /// of `per_row` placeholders, with the verb of [`Script::insert_verb`].
    pub(super) fn insert_values(
        &mut self,
        into: &str,
        rows: usize,
        per_row: usize,
        then: &str,
    ) -> &mut Self {
        let sql = format!(
            "{} INTO {into} VALUES {}{then}",
            self.insert_verb(),
            tuples(rows, per_row)
        );
        self.sql(&sql)
    }

    /// Adds a statement.
    pub(super) fn sql(&mut self, template: &str) -> &mut Self {
        if self.postgres {
            let mut numbered = String::with_capacity(template.len() + 16);
            let mut n = 0;
            for c in template.chars() {
                if c == '?' {
                    n += 1;
                    numbered.push('$');
                    numbered.push_str(&n.to_string());
                } else {
                    numbered.push(c);
                }
            }
            self.statements.push((numbered, Default::default()));
        } else {
            if !self.sql.is_empty() {
                self.sql.push_str(";\n");
            }
            self.sql.push_str(template);
        }
        self
    }

    /// Binds the next `?` of the last statement added.
    pub(super) fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: sqlx::Encode<'static, sqlx::Any> + sqlx::Type<sqlx::Any> + Send + 'static,
    {
        let args = match self.statements.last_mut() {
            Some((_, a)) if self.postgres => a,
            _ => &mut self.args,
        };
        add_arg(args, value);
        self
    }

    /// Runs the statements in order, stopping at the first error (a unique violation
    /// comes back as `Conflict`).
    pub(super) async fn run(self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        self.execute(conn).await.map_err(|e| {
            if super::is_conflict(&e) {
                StoreError::Conflict
            } else {
                e.into()
            }
        })
    }

    /// As [`Script::run`], with the driver's own error.
    pub(super) async fn execute(self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        if self.postgres {
            let mut result = Ok(());
            for (sql, args) in self.statements {
                if let Err(e) = sqlx::query_with(&sql, args).execute(&mut *conn).await {
                    result = Err(e);
                    break;
                }
            }
            result
        } else if !self.sql.is_empty() {
            sqlx::query_with(&self.sql, self.args)
                .execute(&mut *conn)
                .await
                .map(|_| ())
        } else {
            Ok(())
        }
    }
}

/// Appends one argument to a bound query's list.
pub(super) fn add_arg<T>(args: &mut sqlx::any::AnyArguments<'static>, value: T)
where
    T: sqlx::Encode<'static, sqlx::Any> + sqlx::Type<sqlx::Any> + Send + 'static,
{
    use sqlx::Arguments;
    // Encoding an owned integer, text or byte buffer into an argument list cannot fail;
    // if it ever did, the statement fails on a missing argument.
    let _ = args.add(value);
}

/// `(?, ?), (?, ?)`: `rows` tuples of `per_row` placeholders, for a [`Script`].
pub(super) fn tuples(rows: usize, per_row: usize) -> String {
    let one = format!("({})", vec!["?"; per_row].join(", "));
    vec![one; rows].join(", ")
}
