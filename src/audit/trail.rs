//! Appending to the trail: callers hand over events, and optionally the change they
//! describe, and wait until they are durable. A single writer task commits whatever has
//! queued up in one transaction (group commit): each change (in a savepoint of its own
//! only if one of them failed: see `commit_batch`), then every event of the batch in
//! multi-row inserts, then one commit, so one fsync covers
//! many requests and a change never lands without its events (nor its events without
//! it). The writer runs in a task of its own, on a connection of its own: a client that
//! hangs up cannot cut a batch short. When the store fails, the batch's callers get an
//! error (and fail closed); the next batch starts on a fresh connection, so the trail
//! opens again by itself once the store answers. A separate task signs checkpoints.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

use super::event::{chain_hash, Event};
use crate::crypto::AuditKey;
use crate::store::{now_ms, Appended, AuditRow, CheckpointRow, Store, StoreError, WriteOp};

/// Most changes (savepoints) in one batch on PostgreSQL (see `writer`).
const MAX_CHANGES_PER_BATCH_POSTGRES: usize = 48;

/// How often the indexer brings the subject index up to the trail's head, and most
/// events it takes in one transaction (see `store/audit_index.rs`).
const INDEX_EVERY: Duration = Duration::from_secs(1);
const INDEX_STEP: i64 = 50_000;

/// Checkpoints triggered by the event count are at least this far apart.
const MIN_CHECKPOINT_GAP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Sign a checkpoint after this many new events…
    pub checkpoint_every_events: i64,
    /// …or this long after the last one, whichever comes first.
    pub checkpoint_every: Duration,
    /// Most events committed in one transaction.
    pub max_batch: usize,
    /// Append-only file that receives every checkpoint too.
    pub checkpoint_file: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every_events: 1000,
            checkpoint_every: Duration::from_secs(10),
            max_batch: 1024,
            checkpoint_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit trail cannot be written: {0}")]
    Unavailable(String),
    #[error("audit checkpoint: {0}")]
    Checkpoint(String),
}

/// Why a change handed to [`Audit::record_with`] was not made.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Neither the change nor its events were written (the trail is unavailable).
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The change itself failed and was undone; its events were not written either.
    #[error(transparent)]
    Change(StoreError),
}

type Answer = Result<(), CommitError>;

struct Pending {
    rows: Vec<AuditRow>,
    op: Option<WriteOp>,
    /// A readiness probe: try an insert, keep nothing.
    probe: bool,
    /// Set when this job's change failed inside the batch.
    failed: Option<StoreError>,
    done: oneshot::Sender<Answer>,
}

struct CheckpointState {
    last: Option<(i64, Vec<u8>)>,
    at: Instant,
}

/// Handle to the trail. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    queue: mpsc::Sender<Pending>,
    store: Store,
    /// The signing key; replaced when it is rotated (`piivault keys rotate --audit`).
    key: Arc<std::sync::RwLock<Option<Arc<AuditKey>>>>,
    /// The file it was read from, if any (read again after a rotation).
    key_file: Option<std::path::PathBuf>,
    config: Arc<AuditConfig>,
    state: Arc<Mutex<CheckpointState>>,
    /// Whether the last batch committed (for `/readyz`).
    healthy: Arc<AtomicBool>,
    /// Batches committed since start.
    commits: Arc<AtomicU64>,
    /// Jobs submitted and not yet answered.
    in_flight: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("key", &self.key())
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// Starts the writer (and, with a key, the checkpoint signer) on the current runtime.
    pub fn start(store: Store, key: Option<Arc<AuditKey>>, config: AuditConfig) -> Self {
        Self::start_with_key_file(store, key, None, config)
    }

    /// As [`Audit::start`], with the key file `key` was read from: the key is read
    /// from it again by [`Audit::reload_key`].
    pub fn start_with_key_file(
        store: Store,
        key: Option<Arc<AuditKey>>,
        key_file: Option<std::path::PathBuf>,
        config: AuditConfig,
    ) -> Self {
        let signing = key.is_some();
        let (queue, rx) = mpsc::channel(8192);
        let (head_tx, head_rx) = watch::channel(0i64);
        let audit = Self {
            queue,
            store: store.clone(),
            key: Arc::new(std::sync::RwLock::new(key)),
            key_file,
            config: Arc::new(config),
            state: Arc::new(Mutex::new(CheckpointState {
                last: None,
                at: Instant::now(),
            })),
            healthy: Arc::new(AtomicBool::new(true)),
            commits: Arc::new(AtomicU64::new(0)),
            in_flight: Arc::new(AtomicUsize::new(0)),
        };
        spawn_writer(writer(
            store.clone(),
            rx,
            head_tx,
            audit.config.max_batch,
            audit.healthy.clone(),
            audit.commits.clone(),
        ));
        tokio::spawn(indexer(store, head_rx.clone()));
        if signing {
            tokio::spawn(signer(audit.clone(), head_rx));
        }
        audit
    }

    /// Appends events and returns once they are committed. An error means they were
    /// not written, and the caller must not hand out what they describe.
    pub async fn record(&self, events: Vec<Event>) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        match self.submit(events, None).await {
            Ok(()) => Ok(()),
            Err(CommitError::Audit(e)) => Err(e),
            // No change was handed over, so none can have failed.
            Err(CommitError::Change(e)) => Err(AuditError::Unavailable(e.to_string())),
        }
    }

    pub async fn record_one(&self, event: Event) -> Result<(), AuditError> {
        self.record(vec![event]).await
    }

    /// Makes `change` and appends `events` in one transaction, and returns once both are
    /// committed; on error neither was.
    pub async fn record_with(&self, events: Vec<Event>, change: WriteOp) -> Answer {
        self.submit(events, Some(change)).await
    }

    async fn submit(&self, events: Vec<Event>, op: Option<WriteOp>) -> Answer {
        self.enqueue(events, op, false).await
    }

    async fn enqueue(&self, events: Vec<Event>, op: Option<WriteOp>, probe: bool) -> Answer {
        let (done, wait) = oneshot::channel();
        let rows = events.into_iter().map(Event::into_row).collect();
        let stopped = || {
            CommitError::Audit(AuditError::Unavailable(
                "the audit writer has stopped".into(),
            ))
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _answered = InFlight(&self.in_flight);
        self.queue
            .send(Pending {
                rows,
                op,
                probe,
                failed: None,
                done,
            })
            .await
            .map_err(|_| stopped())?;
        wait.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Whether the trail can be written now: a batch through the writer that inserts an
    /// event and takes it back. Used by `/readyz`; a trail that failed is found open
    /// again here once the store answers.
    pub async fn probe(&self) -> bool {
        self.enqueue(Vec::new(), None, true).await.is_ok()
    }

    /// Whether the last batch committed.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Jobs handed to the writer and not yet answered: queued, or in the batch it is
    /// committing.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// How many batches the writer has committed since it started.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The signing key in use.
    pub fn key(&self) -> Option<Arc<AuditKey>> {
        match self.key.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Signs with `key` from now on. The checkpoint position is kept: the events up to
    /// it were checked by this process whichever key signed them.
    pub fn set_key(&self, key: Arc<AuditKey>) {
        match self.key.write() {
            Ok(mut slot) => *slot = Some(key),
            Err(poisoned) => *poisoned.into_inner() = Some(key),
        }
    }

    /// Reads the key file again (a rotation replaced it); `true` if the key changed.
    pub fn reload_key(&self) -> Result<bool, AuditError> {
        let (Some(path), Some(current)) = (&self.key_file, self.key()) else {
            return Ok(false);
        };
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| AuditError::Checkpoint(format!("{}: {e}", path.display())))?,
        );
        let key = AuditKey::parse(&text).map_err(|e| AuditError::Checkpoint(e.to_string()))?;
        if key.public().key_id() == current.public().key_id() {
            return Ok(false);
        }
        tracing::info!(
            old = current.public().key_id(),
            new = key.public().key_id(),
            "audit signing key replaced"
        );
        self.set_key(Arc::new(key));
        Ok(true)
    }

    /// The key file the signing key comes from, if any.
    pub fn key_file(&self) -> Option<&std::path::Path> {
        self.key_file.as_deref()
    }

    /// Signs a checkpoint of the current head now (if it moved since the last one),
    /// after checking that the events since the last checkpoint link up.
    pub async fn checkpoint_now(&self) -> Result<Option<i64>, AuditError> {
        let Some(key) = self.key() else {
            return Ok(None);
        };
        let mut state = self.state.lock().await;
        let fail = |e: String| AuditError::Checkpoint(e);
        if state.last.is_none() {
            // Resume from the newest checkpoint this key signed, or a key kept beside
            // its file (an earlier key of this node, rotated out), if any.
            let mut trusted = vec![key.public().clone()];
            if let Some(dir) = self.key_file.as_deref().and_then(std::path::Path::parent) {
                trusted.extend(crate::audit::public_keys_in(dir));
            }
            let mine = self
                .store
                .checkpoints()
                .await
                .map_err(|e| fail(e.to_string()))?
                .into_iter()
                .filter(|c| {
                    trusted.iter().any(|k| {
                        k.key_id() == c.key_id
                            && k.verify_checkpoint(c.seq, c.ts, &c.hash, &c.signature)
                    })
                })
                .max_by_key(|c| c.seq);
            state.last = match mine {
                Some(c) => Some((c.seq, c.hash)),
                // A pruned trail starts after its anchor.
                None => self
                    .store
                    .audit_anchor()
                    .await
                    .map_err(|e| fail(e.to_string()))?,
            };
        }
        let Some((head, head_hash)) = self
            .store
            .audit_head()
            .await
            .map_err(|e| fail(e.to_string()))?
        else {
            return Ok(None);
        };
        if state.last.as_ref().is_some_and(|(at, _)| head <= *at) {
            return Ok(None);
        }
        if let Some((seq, reason)) =
            super::verify::check_segment(&self.store, state.last.clone(), (head, &head_hash))
                .await
                .map_err(|e| fail(e.to_string()))?
        {
            tracing::error!(seq, "audit chain is broken; refusing to sign a checkpoint");
            return Err(fail(reason));
        }
        let ts = now_ms();
        let cp = CheckpointRow {
            seq: head,
            signature: key.sign_checkpoint(head, ts, &head_hash),
            hash: head_hash,
            ts,
            key_id: key.public().key_id().to_owned(),
        };
        if let Some(path) = &self.config.checkpoint_file {
            append_checkpoint_line(path, &cp)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        }
        self.store
            .insert_checkpoint(&cp)
            .await
            .map_err(|e| fail(e.to_string()))?;
        tracing::info!(
            target: "piivault::audit::checkpoint",
            seq = cp.seq,
            hash = %hex::encode(&cp.hash),
            ts = cp.ts,
            key_id = %cp.key_id,
            signature = %B64.encode(&cp.signature),
            "audit checkpoint"
        );
        state.last = Some((cp.seq, cp.hash));
        state.at = Instant::now();
        Ok(Some(head))
    }
}

/// Runs the writer on a thread of its own, with a runtime of its own. Every request
/// that hands out a value waits for the writer's next commit, so the writer must not
/// queue behind the request tasks it serves: on the shared runtime each of its round
/// trips to the store waited for a worker busy with TLS and HTTP, and a commit took
/// about twice as long under load. If no runtime can be made for it, it runs on the
/// shared one; if its thread cannot start, every append fails closed.
fn spawn_writer(task: impl std::future::Future<Output = ()> + Send + 'static) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "audit writer runs on the shared runtime");
            tokio::spawn(task);
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || runtime.block_on(task));
    if let Err(e) = spawned {
        // The queue's receiver is gone with the task: every append fails closed.
        tracing::error!(error = %e, "the audit writer thread cannot start; nothing can be audited");
    }
}

/// Counts a job as answered when its caller stops waiting (answered, or gone).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One JSON line per checkpoint, fsynced.
fn append_checkpoint_line(path: &std::path::Path, cp: &CheckpointRow) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let line = serde_json::json!({
        "seq": cp.seq,
        "hash": hex::encode(&cp.hash),
        "ts": cp.ts,
        "key_id": cp.key_id,
        "signature": B64.encode(&cp.signature),
    });
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

async fn writer(
    store: Store,
    mut rx: mpsc::Receiver<Pending>,
    head: watch::Sender<i64>,
    max_batch: usize,
    healthy: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
) {
    // When a change fails, the batch is made again with each change in a savepoint.
    // PostgreSQL keeps at most 64 subtransactions of a transaction in its fast cache;
    // past that, every visibility check of the rows the transaction touched goes to
    // pg_subtrans, for every session. So a batch carries fewer changes than that on
    // PostgreSQL (SQLite has no such limit).
    let max_changes = match store.backend() {
        crate::store::Backend::Postgres => MAX_CHANGES_PER_BATCH_POSTGRES,
        crate::store::Backend::Sqlite => usize::MAX,
    };
    let mut held: Option<Pending> = None;
    let mut known: Option<Head> = None;
    loop {
        let first = match held.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut changes = usize::from(first.op.is_some());
        let mut n = first.rows.len();
        let mut batch = vec![first];
        while n < max_batch {
            match rx.try_recv() {
                Ok(p) if p.op.is_some() && changes >= max_changes => {
                    held = Some(p);
                    break;
                }
                Ok(p) => {
                    changes += usize::from(p.op.is_some());
                    n += p.rows.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        metrics::gauge!(crate::metrics::AUDIT_QUEUE).set(rx.len() as f64);
        metrics::histogram!(crate::metrics::AUDIT_BATCH_EVENTS).record(n as f64);
        let started = std::time::Instant::now();
        let committed = commit_batch(&store, &mut batch, &mut known).await;
        metrics::histogram!(crate::metrics::AUDIT_COMMIT).record(started.elapsed().as_secs_f64());
        match committed {
            Ok(last) => {
                commits.fetch_add(1, Ordering::Relaxed);
                if !healthy.swap(true, Ordering::Relaxed) {
                    tracing::warn!("audit trail writable again; serving");
                }
                if let Some(seq) = last {
                    let _ = head.send(seq);
                }
                for p in batch {
                    let answer = match p.failed {
                        None => Ok(()),
                        Some(e) => Err(CommitError::Change(e)),
                    };
                    let _ = p.done.send(answer);
                }
            }
            Err(e) => {
                healthy.store(false, Ordering::Relaxed);
                metrics::counter!(crate::metrics::AUDIT_FAILURES).increment(1);
                tracing::error!(error = %e, events = n, "audit events could not be written; failing closed");
                let message = e.to_string();
                for p in batch {
                    let _ = p
                        .done
                        .send(Err(AuditError::Unavailable(message.clone()).into()));
                }
            }
        }
    }
}

/// The chain's head: the last event's sequence number and hash.
type Head = (i64, Vec<u8>);

/// Commits one batch: each job's change, then the events of the jobs whose change was
/// made, chained after the head, in one transaction. Returns the new head's sequence
/// number, if events were written.
///
/// The changes are first made one after another with nothing around them: one round trip
/// each, and no page copied aside for an undo. If one fails, that attempt is rolled back
/// whole and the batch is made again with each change in a savepoint of its own, so the
/// failed change (and its events) is left out and the rest commit.
///
/// `known` is the head this writer committed last (SQLite only; kept across batches). A
/// batch of events alone is then chained after it and committed in one round trip,
/// without reading the head; should another process have appended meanwhile, that
/// append is refused and the batch goes the usual way (see
/// `Store::append_audit_after_known_head`). Any error forgets the head.
async fn commit_batch(
    store: &Store,
    batch: &mut [Pending],
    known: &mut Option<Head>,
) -> Result<Option<i64>, StoreError> {
    if let Some(head) = known.take() {
        if batch.iter().all(|p| p.op.is_none() && !p.probe) {
            let (rows, after) = chain(batch.iter().flat_map(|p| p.rows.iter().cloned()), head);
            if !rows.is_empty()
                && store.append_audit_after_known_head(rows).await? == Appended::Committed
            {
                let seq = after.0;
                *known = Some(after);
                return Ok(Some(seq));
            }
        }
    }
    let outcome = if batch.iter().any(|p| p.op.is_some()) {
        match attempt(store, batch, false).await? {
            Attempt::ChangeFailed => attempt(store, batch, true).await?,
            committed => committed,
        }
    } else {
        attempt(store, batch, true).await?
    };
    let Attempt::Committed { head, wrote } = outcome else {
        // With savepoints a failed change is recorded in its job, never returned.
        return Err(StoreError::Task(
            "a change failed outside its savepoint".into(),
        ));
    };
    let seq = head.0;
    if store.backend() == crate::store::Backend::Sqlite {
        *known = Some(head);
    }
    Ok(wrote.then_some(seq))
}

/// Numbers and chains `rows` after `head`; returns them and the new head.
fn chain(rows: impl Iterator<Item = AuditRow>, head: Head) -> (Vec<AuditRow>, Head) {
    let (mut seq, mut prev) = head;
    let mut out = Vec::with_capacity(rows.size_hint().0);
    for mut row in rows {
        seq += 1;
        row.seq = seq;
        row.prev_hash = prev;
        row.hash = chain_hash(row.borrowed()).to_vec();
        prev = row.hash.clone();
        out.push(row);
    }
    (out, (seq, prev))
}

enum Attempt {
    /// Committed: the head after it, and whether events were written.
    Committed { head: Head, wrote: bool },
    /// A change failed and, without savepoints, the attempt was rolled back.
    ChangeFailed,
}

async fn attempt(
    store: &Store,
    batch: &mut [Pending],
    savepoints: bool,
) -> Result<Attempt, StoreError> {
    let changes = batch.iter().any(|p| p.op.is_some());
    let (mut tx, head) = store.begin_audit(savepoints && changes).await?;
    let head = head.unwrap_or((0, vec![0u8; 32]));
    if batch.iter().any(|p| p.probe) {
        tx.probe_audit_insert(head.0).await?;
    }
    for p in batch.iter_mut() {
        p.failed = None;
        if let Some(op) = &p.op {
            if let Err(e) = tx.apply(op).await? {
                if !savepoints {
                    tx.rollback().await;
                    return Ok(Attempt::ChangeFailed);
                }
                p.failed = Some(e);
            }
        }
    }
    // Past every change: this attempt is the one that writes the events.
    let (rows, head) = chain(
        batch
            .iter_mut()
            .filter(|p| p.failed.is_none())
            .flat_map(|p| std::mem::take(&mut p.rows)),
        head,
    );
    let wrote = !rows.is_empty();
    tx.append_and_commit(rows).await?;
    Ok(Attempt::Committed { head, wrote })
}

async fn signer(audit: Audit, mut head: watch::Receiver<i64>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let due = {
            let state = audit.state.lock().await;
            let last = state.last.as_ref().map_or(0, |(s, _)| *s);
            let now_head = *head.borrow();
            // By count at most once a second, so a busy trail is not signed (and
            // re-walked) many times a second; by time whenever anything is new.
            (now_head - last >= audit.config.checkpoint_every_events
                && state.at.elapsed() >= MIN_CHECKPOINT_GAP)
                || (state.at.elapsed() >= audit.config.checkpoint_every && now_head > last)
                || state.last.is_none() && now_head > 0
        };
        if due {
            if let Err(e) = audit.checkpoint_now().await {
                if audit.store.is_closed() {
                    // The process is shutting its store (a CLI command that recorded
                    // events, then ended): the next start signs what is new.
                    return;
                }
                tracing::error!(error = %e, "audit checkpoint failed");
            }
        }
    }
}

/// Keeps the trail's subject index close behind the head (see `store/audit_index.rs`):
/// once a second, as many steps as it takes to catch up. Stops with the writer, or quietly
/// once the store is closed (a CLI command that recorded events is ending).
async fn indexer(store: Store, head: watch::Receiver<i64>) {
    let mut tick = tokio::time::interval(INDEX_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if head.has_changed().is_err() {
            return;
        }
        loop {
            match store.index_audit(INDEX_STEP).await {
                Ok(step) => {
                    metrics::gauge!(crate::metrics::AUDIT_INDEX_LAG).set(step.behind as f64);
                    if step.behind == 0 || step.indexed == 0 {
                        break;
                    }
                }
                Err(_) if store.is_closed() => return,
                Err(e) => {
                    // Lookups stay complete meanwhile (they scan what is not indexed).
                    tracing::warn!(error = %e, "audit index step failed; trying again in a second");
                    break;
                }
            }
        }
    }
}
