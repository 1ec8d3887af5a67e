//! Appending to the trail: callers hand over events and wait until they are durable;
//! a single writer task commits whatever has queued up in one transaction (group
//! commit), so one fsync covers many requests. A separate task signs checkpoints.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

use super::event::{chain_hash, Event};
use crate::crypto::AuditKey;
use crate::store::{now_ms, AuditRow, CheckpointRow, Store};

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

struct Pending {
    rows: Vec<AuditRow>,
    done: oneshot::Sender<Result<(), String>>,
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
    key: Option<Arc<AuditKey>>,
    config: Arc<AuditConfig>,
    state: Arc<Mutex<CheckpointState>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// Starts the writer (and, with a key, the checkpoint signer) on the current runtime.
    pub fn start(store: Store, key: Option<Arc<AuditKey>>, config: AuditConfig) -> Self {
        let (queue, rx) = mpsc::channel(8192);
        let (head_tx, head_rx) = watch::channel(0i64);
        let audit = Self {
            queue,
            store: store.clone(),
            key,
            config: Arc::new(config),
            state: Arc::new(Mutex::new(CheckpointState {
                last: None,
                at: Instant::now(),
            })),
        };
        tokio::spawn(writer(store, rx, head_tx, audit.config.max_batch));
        if audit.key.is_some() {
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
        let (done, wait) = oneshot::channel();
        let rows = events.into_iter().map(Event::into_row).collect();
        self.queue
            .send(Pending { rows, done })
            .await
            .map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError::Unavailable(e)),
            Err(_) => Err(AuditError::Unavailable(
                "the audit writer has stopped".into(),
            )),
        }
    }

    pub async fn record_one(&self, event: Event) -> Result<(), AuditError> {
        self.record(vec![event]).await
    }

    pub fn key(&self) -> Option<&AuditKey> {
        self.key.as_deref()
    }

    /// Signs a checkpoint of the current head now (if it moved since the last one),
    /// after checking that the events since the last checkpoint link up.
    pub async fn checkpoint_now(&self) -> Result<Option<i64>, AuditError> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let mut state = self.state.lock().await;
        let fail = |e: String| AuditError::Checkpoint(e);
        if state.last.is_none() {
            // Resume from the newest checkpoint this key signed, if any.
            let mine = self
                .store
                .checkpoints()
                .await
                .map_err(|e| fail(e.to_string()))?
                .into_iter()
                .filter(|c| c.key_id == key.public().key_id())
                .filter(|c| {
                    key.public()
                        .verify_checkpoint(c.seq, c.ts, &c.hash, &c.signature)
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
        let (mut at, mut prev) = state.last.clone().unwrap_or((0, vec![0u8; 32]));
        if head <= at {
            return Ok(None);
        }
        while at < head {
            let rows = self
                .store
                .audit_events(at, 2000)
                .await
                .map_err(|e| fail(e.to_string()))?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                if row.seq > head {
                    break;
                }
                if row.seq != at + 1 || row.prev_hash != prev || chain_hash(&row) != row.hash {
                    tracing::error!(
                        seq = at + 1,
                        "audit chain is broken; refusing to sign a checkpoint"
                    );
                    return Err(fail(format!("the chain is broken at seq {}", at + 1)));
                }
                at = row.seq;
                prev = row.hash;
            }
        }
        if at != head || prev != head_hash {
            return Err(fail(format!(
                "the chain does not reach its head at seq {head}"
            )));
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
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut n = batch[0].rows.len();
        while n < max_batch {
            match rx.try_recv() {
                Ok(p) => {
                    n += p.rows.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let mut rows: Vec<AuditRow> = batch
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.rows))
            .collect();
        let result = store.append_audit(&mut rows, chain_hash).await;
        let answer = match &result {
            Ok(()) => {
                if let Some(last) = rows.last() {
                    let _ = head.send(last.seq);
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, events = rows.len(), "audit events could not be written");
                Err(e.to_string())
            }
        };
        for p in batch {
            let _ = p.done.send(answer.clone());
        }
    }
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
            (now_head - last >= audit.config.checkpoint_every_events)
                || (state.at.elapsed() >= audit.config.checkpoint_every && now_head > last)
                || state.last.is_none() && now_head > 0
        };
        if due {
            if let Err(e) = audit.checkpoint_now().await {
                tracing::error!(error = %e, "audit checkpoint failed");
            }
        }
    }
}
