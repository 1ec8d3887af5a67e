//! The keys a running vault holds: the master keyring and the unwrapped system keys.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use super::{
    random_bytes, CryptoError, MacKey, MasterKeyRing, MasterKeySource, BLIND_INDEX_KEY,
    TOKEN_HASH_KEY,
};
use crate::store::{MasterKeyRow, Store, StoreError, SystemKeyRow};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Setup(String),
}

/// Everything key-related a running vault needs.
pub struct Keys {
    master: MasterKeyRing,
    blind: MacKey,
    token: MacKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

fn read_key_file(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| KeyError::Setup(format!("master key file {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "master key file is readable by group or others; chmod 600 it"
        );
    }
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| KeyError::Setup(format!("master key file {}: {e}", path.display())))
}

fn create_key_file(path: &Path) -> Result<(), KeyError> {
    let text = MasterKeyRing::generate_key_file_text();
    let setup = |e: std::io::Error| {
        KeyError::Setup(format!(
            "cannot create master key file {}: {e}",
            path.display()
        ))
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(setup)?;
    file.write_all(text.as_bytes()).map_err(setup)?;
    file.sync_all().map_err(setup)?;
    if let Some(dir) = path.parent() {
        // Make the new directory entry durable too.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    tracing::info!(path = %path.display(), "created a new master key file");
    Ok(())
}

impl Keys {
    /// Loads the master key from `source`, initialising an empty vault (check values,
    /// system keys) or verifying that the key matches an existing one.
    /// Returns the keys and whether this call initialised the vault.
    pub async fn open(store: &Store, source: &MasterKeySource) -> Result<(Self, bool), KeyError> {
        let initialised = store.get_meta("initialised_at").await?.is_some();
        let mut new_salt = None;
        let master = match source {
            MasterKeySource::File { path, create } => {
                if !path.exists() {
                    if initialised || !create {
                        return Err(KeyError::Setup(format!(
                            "master key file {} not found; this vault is already initialised, so no new key is made (restore the key file or point --master-key-file at it)",
                            path.display()
                        )));
                    }
                    create_key_file(path)?;
                }
                MasterKeyRing::parse(&read_key_file(path)?)?
            }
            MasterKeySource::Inline(text) => MasterKeyRing::parse(text)?,
            MasterKeySource::Passphrase(pass) => {
                let salt = match store.get_meta("kdf_salt").await? {
                    Some(hex_salt) => hex::decode(hex_salt)
                        .map_err(|_| KeyError::Setup("stored kdf_salt is not hex".into()))?,
                    None if !initialised => {
                        let salt = random_bytes::<16>().to_vec();
                        new_salt = Some(hex::encode(&salt));
                        salt
                    }
                    None => {
                        return Err(KeyError::Setup(
                            "this vault was not initialised with a passphrase (no kdf_salt)".into(),
                        ))
                    }
                };
                MasterKeyRing::from_passphrase(pass, &salt)?
            }
        };

        let mut created = false;
        if !initialised {
            let masters = master
                .versions()
                .into_iter()
                .map(|version| {
                    Ok(MasterKeyRow {
                        version,
                        check_value: master.check_value(version)?,
                    })
                })
                .collect::<Result<Vec<_>, CryptoError>>()?;
            let mut system = Vec::new();
            for name in [BLIND_INDEX_KEY, TOKEN_HASH_KEY] {
                let (kek_version, wrapped) = master.new_system_key(name, 1)?;
                system.push(SystemKeyRow {
                    name: name.into(),
                    version: 1,
                    kek_version,
                    wrapped,
                });
            }
            let mut meta = Vec::new();
            if let Some(salt) = new_salt {
                meta.push(("kdf_salt", salt));
            }
            match store.initialise(&masters, &system, &meta).await {
                Ok(()) => created = true,
                // Another vault node initialised the same database first: use its keys.
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }

        let known = store.master_keys().await?;
        let mut matched = false;
        for version in master.versions() {
            match known.iter().find(|k| k.version == version) {
                Some(row) => {
                    master.verify_check_value(version, &row.check_value)?;
                    matched = true;
                }
                None => {
                    store
                        .add_master_key(&MasterKeyRow {
                            version,
                            check_value: master.check_value(version)?,
                        })
                        .await?;
                    tracing::info!(version, "new master key version recorded");
                }
            }
        }
        if !matched {
            return Err(KeyError::Setup(
                "none of the loaded master key versions is known to this database".into(),
            ));
        }

        let system = store.system_keys().await?;
        let latest = |name: &str| {
            system
                .iter()
                .filter(|k| k.name == name)
                .max_by_key(|k| k.version)
                .ok_or_else(|| KeyError::Setup(format!("system key {name} is missing")))
        };
        let unwrap = |row: &SystemKeyRow| {
            master.unwrap_system_key(&row.name, row.version, row.kek_version, &row.wrapped)
        };
        let blind = unwrap(latest(BLIND_INDEX_KEY)?)?;
        let token = unwrap(latest(TOKEN_HASH_KEY)?)?;
        Ok((
            Self {
                master,
                blind,
                token,
            },
            created,
        ))
    }

    pub fn master(&self) -> &MasterKeyRing {
        &self.master
    }

    pub fn blind_index(&self, field: &str, normalised: &str) -> Vec<u8> {
        super::blind_index(&self.blind, field, normalised)
    }

    pub fn token_hash(&self, secret: &str) -> Vec<u8> {
        super::token_hash(&self.token, secret)
    }
}
