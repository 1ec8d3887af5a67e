//! The serving nodes of a vault, as each reports itself in the store every second with
//! the master-key versions it has loaded. A master-key rotation waits, before it wraps
//! anything under a new version, until every node seen lately has loaded it: a node
//! without it would answer `503 key_unavailable` for every re-wrapped subject.

use std::time::Duration;

use crate::store::{NodeRow, Store, StoreError};

/// How often a serving node reports itself.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A node not heard from for this long is taken to have stopped.
const ALIVE_WITHIN_MS: i64 = 5_000;
/// How long a rotation waits for every node to load a new version (each reads its key
/// source again within the change feed's bound of the version being recorded).
const WAIT_FOR_NODES: Duration = Duration::from_secs(10);

/// Which key a node's loaded versions are asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Master,
    BlindIndex,
}

fn list(versions: &[i64]) -> String {
    versions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Reports this node every [`HEARTBEAT_EVERY`] until aborted: `listen` is the address it
/// serves on, `versions` the master-key and blind-index key versions it has loaded.
/// Returns the task and the node's id.
pub fn spawn_heartbeat(
    store: Store,
    listen: String,
    versions: impl Fn() -> (Vec<i64>, Vec<i64>) + Send + 'static,
) -> (tokio::task::AbortHandle, String) {
    let id = crate::crypto::random_id("node");
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let started_at = crate::store::now_ms();
    let me = id.clone();
    let task = tokio::spawn(async move {
        let mut failing = false;
        loop {
            let (master, blind) = versions();
            let row = NodeRow {
                id: me.clone(),
                host: host.clone(),
                listen: listen.clone(),
                pid: i64::from(std::process::id()),
                started_at,
                seen_at: crate::store::now_ms(),
                master_versions: list(&master),
                blind_versions: list(&blind),
            };
            match store.heartbeat(row).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "this node could not report itself in the store");
                }
                Err(_) => {}
            }
            tokio::time::sleep(HEARTBEAT_EVERY).await;
        }
    });
    (task.abort_handle(), id)
}

/// The nodes seen lately (taken to be serving).
pub async fn nodes_seen_lately(store: &Store) -> Result<Vec<NodeRow>, StoreError> {
    store
        .nodes_seen_since(crate::store::now_ms() - ALIVE_WITHIN_MS)
        .await
}

/// The nodes seen lately that have not loaded `version` of key `key`.
pub async fn nodes_without(
    store: &Store,
    key: Loaded,
    version: i64,
) -> Result<Vec<NodeRow>, StoreError> {
    Ok(nodes_seen_lately(store)
        .await?
        .into_iter()
        .filter(|n| {
            let loaded = match key {
                Loaded::Master => &n.master_versions,
                Loaded::BlindIndex => &n.blind_versions,
            };
            !loaded
                .split(',')
                .any(|v| v.parse::<i64>().ok() == Some(version))
        })
        .collect())
}

/// Waits (up to ten seconds) until every node seen lately has loaded `version` of key
/// `key`; returns those that still have not.
pub async fn wait_for_nodes(
    store: &Store,
    key: Loaded,
    version: i64,
) -> Result<Vec<NodeRow>, StoreError> {
    let deadline = tokio::time::Instant::now() + WAIT_FOR_NODES;
    loop {
        let missing = nodes_without(store, key, version).await?;
        if missing.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(missing);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `Refused` naming the nodes in `missing` that lack `version` of `what`, unless there are
/// none; `how` says what to do about it.
pub(super) fn refuse_unless_all(
    missing: &[NodeRow],
    what: &str,
    version: i64,
    how: &str,
) -> Result<(), super::RotateError> {
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing
        .iter()
        .map(|n| {
            format!(
                "{} (host {}, pid {}, listening on {})",
                n.id, n.host, n.pid, n.listen
            )
        })
        .collect();
    Err(super::RotateError::Refused(format!(
        "{} serving node(s) have not loaded {what} version {version}: {}. {how}",
        missing.len(),
        names.join("; ")
    )))
}
