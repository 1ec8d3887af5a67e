//! The key inventory: every key version the vault has, with its algorithm and state,
//! and no key material. The CLI (`piivault keys list`) and the admin endpoint
//! (`GET /v1/keys`) both show this.

use crate::crypto::AuditPublicKey;
use crate::store::{KeyVersionRow, Store, StoreError};

/// One key version as shown.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyVersion {
    /// `master`, `data`, `blind_index`, `token_hash`.
    pub kind: String,
    pub version: i64,
    pub algorithm: &'static str,
    /// Master versions: `active` (wraps new keys), `decrypt-only` (still unwraps what
    /// it wraps), `destroyed`. Other keys: `active`.
    pub state: &'static str,
    /// The master-key version that wraps it (none for a master key).
    pub wrapped_by: Option<i64>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    pub destroyed_at: Option<i64>,
    /// Master keys: the keys it wraps; data keys: the subjects' keys at this version and
    /// wrapping; system keys: 1.
    pub keys: i64,
    /// Values encrypted (data keys; 0 where not counted).
    pub encryptions: i64,
}

/// The whole inventory, ordered master, system keys, data keys; and the audit signing
/// keys trusted here, by key id.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inventory {
    pub keys: Vec<KeyVersion>,
    pub audit: Vec<AuditKeyInfo>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditKeyInfo {
    pub kind: &'static str,
    pub key_id: String,
    pub algorithm: &'static str,
}

fn algorithm(kind: &str) -> &'static str {
    match kind {
        "master" | "data" => "AES-256-GCM",
        _ => "HMAC-SHA256",
    }
}

fn order(kind: &str) -> u8 {
    match kind {
        "master" => 0,
        "data" => 2,
        _ => 1,
    }
}

/// Reads the inventory from the store (no master key needed).
pub async fn inventory(
    store: &Store,
    audit_keys: &[AuditPublicKey],
) -> Result<Inventory, StoreError> {
    let mut rows = store.key_inventory().await?;
    rows.sort_by(|a, b| {
        order(&a.kind)
            .cmp(&order(&b.kind))
            .then(a.version.cmp(&b.version))
            .then(a.wrapped_by.cmp(&b.wrapped_by))
    });
    let active = rows
        .iter()
        .filter(|r| r.kind == "master" && r.destroyed_at.is_none())
        .map(|r| r.version)
        .max();
    let state = |r: &KeyVersionRow| match r.kind.as_str() {
        "master" if r.destroyed_at.is_some() => "destroyed",
        "master" if Some(r.version) == active => "active",
        "master" => "decrypt-only",
        _ => "active",
    };
    let keys = rows
        .iter()
        .map(|r| KeyVersion {
            kind: r.kind.clone(),
            version: r.version,
            algorithm: algorithm(&r.kind),
            state: state(r),
            wrapped_by: r.wrapped_by,
            created_at: r.created_at,
            destroyed_at: r.destroyed_at,
            keys: r.keys,
            encryptions: r.encryptions,
        })
        .collect();
    let audit = audit_keys
        .iter()
        .map(|k| AuditKeyInfo {
            kind: "audit_signing",
            key_id: k.key_id().to_owned(),
            algorithm: "Ed25519",
        })
        .collect();
    Ok(Inventory { keys, audit })
}
