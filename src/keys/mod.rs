//! The key lifecycle: loading the master keyring and checking it against the store,
//! picking up versions added or destroyed while the vault runs, rotating the master key
//! (every stored key wrapped again under a new version), retiring an old version, and
//! re-encrypting every value under new data keys.
//! Key bytes stay in `crypto`; this module decides what to wrap, when, and records it.

mod audit_key;
mod inventory;
pub mod nodes;
mod reencrypt;
mod rotate;
mod system;

pub use audit_key::{rotate_audit, AuditRotation};
pub use inventory::{inventory, AuditKeyInfo, Inventory, KeyVersion};

pub use reencrypt::{reencrypt_data, ReencryptReport};
pub use rotate::{retire_master, rotate_master, Pace, Progress, RotateError, RotateReport};
pub use system::{retire_system_key, rotate_blind_index, rotate_token_hash, BlindIndexReport};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::crypto::{
    load_ring, source_file, DataCipher, ExternalKey, KeyError, Keys, MasterKeyRing,
    MasterKeySource, SystemKeys, BLIND_INDEX_KEY, TOKEN_HASH_KEY,
};
use crate::store::{MasterKeyRow, Store, StoreError, SystemKeyRow};

/// Loads the master key from `source`, initialising an empty vault (check values,
/// system keys made for `suite`) or checking that the key matches an existing one.
/// Returns the keys and whether this call initialised the vault.
pub async fn open(
    store: &Store,
    source: &MasterKeySource,
    suite: crate::crypto::Suite,
) -> Result<(Keys, bool), KeyError> {
    let initialised = store.get_meta("initialised_at").await?.is_some();
    let external = match source {
        MasterKeySource::External(config) => Some(Arc::new(ExternalKey::connect(config).await?)),
        _ => None,
    };
    let (ring, new_salt, wrapped) = match &external {
        Some(ext) => {
            let rows = store.master_keys().await?;
            if initialised {
                (read_external(ext, &rows).await?, None, None)
            } else {
                let (wrapped, _) = ext.new_version(1, true).await?;
                let ring = ext.unwrap_ring(&[(1, wrapped.clone())]).await?;
                (ring, None, Some(wrapped))
            }
        }
        None => {
            if initialised && held_externally(&store.master_keys().await?) {
                return Err(KeyError::Setup(
                    "this vault's master key is held by an external key source (PKCS#11 or transit); configure it in the [master_key] section of the config file".into(),
                ));
            }
            let salt = match (source, store.get_meta("kdf_salt").await?) {
                (MasterKeySource::Passphrase(_), Some(hex_salt)) => Some(
                    hex::decode(hex_salt)
                        .map_err(|_| KeyError::Setup("stored kdf_salt is not hex".into()))?,
                ),
                _ => None,
            };
            let (ring, new_salt) = load_ring(source, !initialised, salt)?;
            (ring, new_salt, None)
        }
    };

    let mut created = false;
    if !initialised {
        // A new vault's first version wraps with the suite's cipher.
        let ring = ring.clone().with_ciphers(|_| suite.data_cipher());
        let masters = ring
            .versions()
            .into_iter()
            .map(|version| {
                Ok(MasterKeyRow {
                    version,
                    check_value: ring.check_value(version)?,
                    destroyed_at: None,
                    wrapped: wrapped.clone(),
                    algorithm: Some(suite.data_cipher().as_str().into()),
                })
            })
            .collect::<Result<Vec<_>, crate::crypto::CryptoError>>()?;
        let mut system = Vec::new();
        for name in [BLIND_INDEX_KEY, TOKEN_HASH_KEY] {
            let (kek_version, wrapped) = ring.new_system_key(name, 1, suite.mac())?;
            system.push(SystemKeyRow {
                name: name.into(),
                version: 1,
                kek_version,
                wrapped,
            });
        }
        let mut meta = Vec::new();
        if let Some(salt) = new_salt {
            meta.push(("kdf_salt", hex::encode(salt)));
        }
        match store.initialise(&masters, &system, &meta).await {
            Ok(()) => created = true,
            // Another vault node initialised the same database first: use its keys.
            Err(StoreError::Conflict) => {}
            Err(e) => return Err(e.into()),
        }
    }

    let ring = reconcile(store, ring, suite).await?;
    let system = load_system(store, &ring).await?;
    let keys = Keys::new(ring, source_file(source), system, suite).with_external(external);
    Ok((keys, created))
}

/// Whether the store's live master-key versions are wrapped by an external source.
fn held_externally(rows: &[MasterKeyRow]) -> bool {
    rows.iter()
        .any(|r| r.destroyed_at.is_none() && r.wrapped.is_some())
}

/// The live versions an external source wraps, as `(version, wrapped)`.
fn live_wrapped(rows: &[MasterKeyRow]) -> Vec<(i64, Vec<u8>)> {
    rows.iter()
        .filter(|r| r.destroyed_at.is_none())
        .filter_map(|r| r.wrapped.clone().map(|w| (r.version, w)))
        .collect()
}

/// Unwraps every live stored version through the external source.
async fn read_external(
    ext: &ExternalKey,
    rows: &[MasterKeyRow],
) -> Result<MasterKeyRing, KeyError> {
    let live = live_wrapped(rows);
    if live.is_empty() {
        return Err(KeyError::Setup(format!(
            "this vault's master key is not held by {} (it comes from a key file, the environment or a passphrase); remove the [master_key] section",
            ext.name()
        )));
    }
    Ok(ext.unwrap_ring(&live).await?)
}

/// Reads the master keyring from its source again: the key file, the external source
/// (through the store), or, for the environment or a passphrase (which cannot change
/// while the process runs), the versions loaded now.
async fn read_source(keys: &Keys, store: &Store) -> Result<MasterKeyRing, KeyError> {
    if let Some(ext) = keys.external() {
        return read_external(ext, &store.master_keys().await?).await;
    }
    Ok(match keys.read_file()? {
        Some(ring) => ring,
        None => (*keys.master()).clone(),
    })
}

/// Unwraps every stored version of the system keys (newest first) with `ring`.
async fn load_system(store: &Store, ring: &MasterKeyRing) -> Result<SystemKeys, KeyError> {
    let mut rows = store.system_keys().await?;
    rows.sort_by_key(|r| std::cmp::Reverse(r.version));
    let mut system = SystemKeys {
        blind: Vec::new(),
        token: Vec::new(),
    };
    for row in &rows {
        if !ring.contains(row.kek_version) {
            return Err(KeyError::Unavailable(row.kek_version));
        }
        let key = ring.unwrap_system_key(&row.name, row.version, row.kek_version, &row.wrapped)?;
        match row.name.as_str() {
            BLIND_INDEX_KEY => system.blind.push((row.version, key)),
            TOKEN_HASH_KEY => system.token.push((row.version, key)),
            _ => {}
        }
    }
    for (name, versions) in [
        (BLIND_INDEX_KEY, &system.blind),
        (TOKEN_HASH_KEY, &system.token),
    ] {
        if versions.is_empty() {
            return Err(KeyError::Setup(format!("system key {name} is missing")));
        }
    }
    Ok(system)
}

/// Checks a keyring against the store: every version the store knows must match its
/// check value; versions it has not seen are recorded; destroyed versions are left out
/// (with a warning: they should be gone from the key source). At least one live
/// version must be one the store knows, so a key for another vault is refused.
/// Each version wraps with the cipher the store records for it (a version recorded
/// here, with `suite`'s).
async fn reconcile(
    store: &Store,
    ring: MasterKeyRing,
    suite: crate::crypto::Suite,
) -> Result<MasterKeyRing, KeyError> {
    let known = store.master_keys().await?;
    let mut ciphers = std::collections::BTreeMap::new();
    let mut matched = false;
    let mut destroyed = Vec::new();
    for version in ring.versions() {
        match known.iter().find(|k| k.version == version) {
            Some(row) => {
                ring.verify_check_value(version, &row.check_value)?;
                let sm4 = row.algorithm.as_deref() == Some(DataCipher::Sm4Gcm.as_str());
                ciphers.insert(
                    version,
                    if sm4 {
                        DataCipher::Sm4Gcm
                    } else {
                        DataCipher::Aes256Gcm
                    },
                );
                if row.destroyed_at.is_some() {
                    destroyed.push(version);
                } else {
                    matched = true;
                }
            }
            None => {
                store
                    .add_master_key(&MasterKeyRow {
                        version,
                        check_value: ring.check_value(version)?,
                        destroyed_at: None,
                        wrapped: None,
                        algorithm: Some(suite.data_cipher().as_str().into()),
                    })
                    .await?;
                ciphers.insert(version, suite.data_cipher());
                tracing::info!(version, "new master key version recorded");
            }
        }
    }
    if !matched {
        return Err(KeyError::Setup(
            "none of the loaded master key versions is a live version of this database".into(),
        ));
    }
    for version in &destroyed {
        tracing::warn!(
            version,
            "master key version {version} was destroyed by `keys retire`; it is not used (remove it from the key source)"
        );
    }
    Ok(ring
        .retain(|v| !destroyed.contains(&v))
        .with_ciphers(|v| ciphers.get(&v).copied().unwrap_or_default()))
}

/// How often at most a node reads its key source again because it met a version it
/// has not loaded (a damaged row must not turn every read into a file read).
const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Keeps a running vault's master keyring in step with the store: reads the key
/// source again when a version is added or destroyed (the change feed says so) or
/// when a stored key names a version it has not loaded.
#[derive(Debug)]
pub struct KeyWatch {
    last: Mutex<Option<Instant>>,
}

impl Default for KeyWatch {
    fn default() -> Self {
        Self {
            last: Mutex::new(None),
        }
    }
}

impl KeyWatch {
    /// Reads the key source again and checks it against the store. On error the keyring
    /// in use is kept.
    pub async fn reload(&self, keys: &Keys, store: &Store) -> Result<(), KeyError> {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Instant::now());
        }
        let ring = read_source(keys, store).await?;
        let ring = reconcile(store, ring, keys.suite()).await?;
        let before = keys.master().versions();
        if ring.versions() != before {
            tracing::info!(versions = ?ring.versions(), "master key versions reloaded");
        }
        let system = load_system(store, &ring).await?;
        keys.set_master(ring);
        let before = keys.system_versions();
        keys.set_system(system);
        if keys.system_versions() != before {
            tracing::info!(versions = ?keys.system_versions(), "system key versions reloaded");
        }
        Ok(())
    }

    /// Makes sure every version in `versions` is loaded, reading the key source again
    /// (at most once a second) if one is not. `Unavailable` if one still is not.
    pub async fn ensure(
        &self,
        keys: &Keys,
        store: &Store,
        versions: impl IntoIterator<Item = i64>,
    ) -> Result<(), KeyError> {
        let ring = keys.master();
        let Some(missing) = versions.into_iter().find(|v| !ring.contains(*v)) else {
            return Ok(());
        };
        let due = self
            .last
            .lock()
            .map(|last| last.is_none_or(|t| t.elapsed() >= RELOAD_AT_MOST_EVERY))
            .unwrap_or(true);
        if due {
            if let Err(e) = self.reload(keys, store).await {
                tracing::error!(error = %e, "the master key source could not be read again");
            }
        }
        if keys.master().contains(missing) {
            Ok(())
        } else {
            Err(KeyError::Unavailable(missing))
        }
    }
}
