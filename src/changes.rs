//! Keeping caches honest across processes. Every change that a cache could hide (a token
//! revoked; a consent granted or withdrawn, a hold placed, a subject erased) writes a row
//! to the store's change feed in the transaction that makes it. Each vault process
//! (a server node, or the CLI beside it) polls the feed every `every` (default 250 ms)
//! and forgets what it cached about each key it reads there. So a change made on one
//! node is honoured on every other node within one poll interval plus one query
//! (stated bound: 1 second with the defaults); on the node that made it, at once.
//!
//! If the feed cannot be read, the caches are switched off (every lookup goes to the
//! store) until it can again: a missed change can never be served from a cache.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::authz::Tokens;
use crate::pipl::Consents;
use crate::store::{changes, Store, StoreError};
use crate::vault::Vault;

/// How often the change feed is read by default.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// How long change rows are kept (every live process has read them long before).
const KEEP_CHANGES_MS: i64 = 3_600_000;

/// The caches the change feed keeps honest.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    store: Store,
    tokens: Tokens,
    consents: Consents,
    vault: Vault,
    /// The audit trail whose signing key is read again after a rotation.
    audit: Option<crate::audit::Audit>,
    seen: Arc<AtomicI64>,
    sync: Arc<tokio::sync::Mutex<()>>,
}

impl ChangeFeed {
    pub fn new(store: Store, tokens: Tokens, consents: Consents, vault: Vault) -> Self {
        Self {
            store,
            tokens,
            consents,
            vault,
            audit: None,
            seen: Arc::new(AtomicI64::new(-1)),
            sync: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Reads the audit signing key file again when a rotation says so.
    pub fn with_audit(mut self, audit: crate::audit::Audit) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Reads the feed once and applies it. On error the caches are switched off.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.sync.lock().await;
        match self.apply().await {
            Ok(()) => {
                self.switch_caches(true);
                Ok(())
            }
            Err(e) => {
                self.switch_caches(false);
                Err(e)
            }
        }
    }

    fn switch_caches(&self, on: bool) {
        self.tokens.cache_enabled(on);
        self.consents.cache_enabled(on);
        self.vault.cache_enabled(on);
    }

    async fn apply(&self) -> Result<(), StoreError> {
        let seen = self.seen.load(Ordering::Acquire);
        if seen < 0 {
            // First read: nothing is cached yet, so only the position matters.
            let head = self.store.changes_head().await?;
            self.seen.store(head, Ordering::Release);
            metrics::gauge!(crate::metrics::CHANGE_FEED_SEEN).set(head as f64);
            return Ok(());
        }
        let rows = self.store.changes_since(seen).await?;
        let mut last = seen;
        for (seq, kind, key) in rows {
            match kind.as_str() {
                changes::TOKEN => self.tokens.forget(&key),
                changes::SUBJECT => {
                    self.consents.forget_subject(&key);
                    self.vault.forget(&key);
                }
                changes::KEYS if key == "audit" => {
                    if let Some(Err(e)) = self.audit.as_ref().map(|a| a.reload_key()) {
                        tracing::error!(error = %e, "the audit signing key was rotated, but its file could not be read again");
                    }
                }
                changes::KEYS => {
                    if let Err(e) = self.vault.reload_keys().await {
                        tracing::error!(error = %e, "master key versions changed, but the key source could not be read again");
                    }
                    // Tokens are looked up again, so that one hashed under an older
                    // token-hash key moves to a new one as it is used.
                    self.tokens.cache_enabled(false);
                    self.tokens.cache_enabled(true);
                }
                _ => {
                    // A kind this version does not know: forget everything to be safe.
                    self.switch_caches(false);
                    self.switch_caches(true);
                }
            }
            last = seq;
        }
        self.seen.store(last, Ordering::Release);
        metrics::gauge!(crate::metrics::CHANGE_FEED_SEEN).set(last as f64);
        Ok(())
    }

    /// Polls the feed every `every` for as long as the runtime lives, and prunes old
    /// change rows once an hour.
    pub fn start(self, every: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            let mut polls: u64 = 0;
            loop {
                tick.tick().await;
                match self.sync().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::warn!("change feed readable again; caches back on");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::error!(error = %e, "change feed unreadable; caches off until it is");
                    }
                    Err(_) => {}
                }
                polls += 1;
                if polls % (3_600_000 / every.as_millis().max(1) as u64).max(1) == 0 {
                    let before = crate::store::now_ms() - KEEP_CHANGES_MS;
                    if let Err(e) = self.store.prune_changes(before).await {
                        tracing::warn!(error = %e, "old change rows could not be pruned");
                    }
                }
            }
        });
    }
}
