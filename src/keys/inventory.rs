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
    /// it wraps), `destroyed`. Data keys: `retired` if made before the newest
    /// re-encryption (`keys rotate --data`) started (it replaces them; once it has
    /// finished there are none), else `active`. System keys: `active` (the newest
    /// version), `verify-only` (an older token-hash key, still checked for tokens
    /// hashed under it) or `lookup-only` (an older blind-index key, still searched).
    pub state: &'static str,
    /// The master-key version that wraps it (none for a master key).
    pub wrapped_by: Option<i64>,
    /// Master keys: held by the external key source (PKCS#11, transit), stored wrapped
    /// by it; false when the key is outside the database (file, environment, passphrase).
    pub in_key_source: bool,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    pub destroyed_at: Option<i64>,
    /// Master keys: the keys it wraps; data keys: the subjects' keys at this version and
    /// wrapping; system keys: 1.
    pub keys: i64,
    /// Values encrypted (data keys; 0 where not counted).
    pub encryptions: i64,
    /// Data keys: the field values and records they protect now. Token-hash keys: the
    /// live tokens hashed under them. Blind-index keys: the index entries made under
    /// them.
    pub items: i64,
}

/// The whole inventory, ordered master, system keys, data keys; and the audit signing
/// keys trusted here, by key id.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inventory {
    pub keys: Vec<KeyVersion>,
    pub audit: Vec<AuditKeyInfo>,
    /// Data keys retired by a re-encryption that still exist, and the items under
    /// them: 0 and 0 once `keys rotate --data` has finished.
    pub retired_data_keys: i64,
    pub items_under_retired_keys: i64,
    /// The last subject id an unfinished re-encryption reached ("" before the first
    /// batch); absent when none is under way.
    pub reencryption_cursor: Option<String>,
    /// The serving nodes seen lately, with the master-key versions each has loaded.
    pub nodes: Vec<crate::store::NodeRow>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditKeyInfo {
    pub kind: &'static str,
    pub key_id: String,
    pub algorithm: &'static str,
}

/// A key's algorithm: master keys wrap with the cipher recorded for them (AES-256-GCM
/// when none is); data and system keys carry theirs in their wrapped form, whose length
/// tells it.
fn algorithm(r: &KeyVersionRow) -> &'static str {
    use crate::crypto::{DataCipher, MacAlgorithm};
    let len = usize::try_from(r.wrapped_len).unwrap_or(0);
    match r.kind.as_str() {
        "master" if r.cipher.as_deref() == Some(DataCipher::Sm4Gcm.as_str()) => "SM4-GCM",
        "master" => "AES-256-GCM",
        "data" => DataCipher::of_wrapped_len(len).map_or("unknown", DataCipher::as_str),
        _ => MacAlgorithm::of_wrapped_len(len).map_or("unknown", MacAlgorithm::as_str),
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
    use super::reencrypt::{CURSOR, RETIRED_BEFORE, SINCE};
    let retired_before = match store.get_meta(SINCE).await? {
        Some(since) => Some(since),
        None => store.get_meta(RETIRED_BEFORE).await?,
    }
    .and_then(|v| v.parse::<i64>().ok())
    .unwrap_or(i64::MIN);
    let mut rows = store.key_inventory(retired_before).await?;
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
    let newest_system = |kind: &str| {
        rows.iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.version)
            .max()
    };
    let state = |r: &KeyVersionRow| match r.kind.as_str() {
        "master" if r.destroyed_at.is_some() => "destroyed",
        "master" if Some(r.version) == active => "active",
        "master" => "decrypt-only",
        "data" if r.retired => "retired",
        "data" => "active",
        kind if Some(r.version) == newest_system(kind) => "active",
        // An older system key: still searched (index entries made under it) or
        // checked (tokens hashed under it), never used for anything new.
        crate::crypto::BLIND_INDEX_KEY => "lookup-only",
        _ => "verify-only",
    };
    let live_tokens = store.tokens_per_hash_key(crate::store::now_ms()).await?;
    let mut entries = std::collections::BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.kind == crate::crypto::BLIND_INDEX_KEY)
    {
        entries.insert(
            r.version,
            store
                .system_key_users(crate::crypto::BLIND_INDEX_KEY, r.version, 0)
                .await?,
        );
    }
    let retired = rows.iter().filter(|r| r.kind == "data" && r.retired);
    let (retired_data_keys, items_under_retired_keys) =
        retired.fold((0, 0), |(k, i), r| (k + r.keys, i + r.items));
    let keys = rows
        .iter()
        .map(|r| KeyVersion {
            kind: r.kind.clone(),
            version: r.version,
            algorithm: algorithm(r),
            state: state(r),
            wrapped_by: r.wrapped_by,
            in_key_source: r.external,
            created_at: r.created_at,
            destroyed_at: r.destroyed_at,
            keys: r.keys,
            encryptions: r.encryptions,
            items: match r.kind.as_str() {
                // The live tokens hashed under it.
                crate::crypto::TOKEN_HASH_KEY => live_tokens
                    .iter()
                    .find(|(v, _, _)| *v == r.version)
                    .map_or(0, |(_, live, _)| *live),
                // The index entries made under it.
                crate::crypto::BLIND_INDEX_KEY => entries.get(&r.version).copied().unwrap_or(0),
                _ => r.items,
            },
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
    Ok(Inventory {
        keys,
        audit,
        retired_data_keys,
        items_under_retired_keys,
        reencryption_cursor: store.get_meta(CURSOR).await?,
        nodes: super::nodes::nodes_seen_lately(store).await?,
    })
}
