//! The keys a running vault holds: the master keyring and the unwrapped system keys.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use super::{random_bytes, CryptoError, MacKey, MasterKeyRing, MasterKeySource};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Setup(String),
    /// A master-key version that wraps stored keys is not loaded here (for instance a
    /// rotation on another node added it to a key file this node has not got yet).
    #[error("master key version {0} is not loaded on this node")]
    Unavailable(i64),
}

/// The live versions of the system MAC keys, newest first: several only while a
/// rotation of one is under way (`piivault keys rotate --token-hash`).
#[derive(Debug)]
pub struct SystemKeys {
    pub blind: Vec<(i64, MacKey)>,
    pub token: Vec<(i64, MacKey)>,
}

impl SystemKeys {
    /// The blind-index digest under the newest key, with that key's version.
    pub fn blind_index(&self, field: &str, normalised: &str) -> (i64, Vec<u8>) {
        match self.blind.first() {
            Some((v, key)) => (*v, super::blind_index(key, field, normalised)),
            None => (0, Vec::new()),
        }
    }
}

/// Everything key-related a running vault needs. The master keyring and the system
/// keys can be replaced while the vault runs (a rotation added a version, a retirement
/// removed one).
pub struct Keys {
    master: RwLock<Arc<MasterKeyRing>>,
    /// The key file the ring was read from, if it came from one.
    file: Option<PathBuf>,
    system: RwLock<Arc<SystemKeys>>,
    /// The algorithms new keys are made for.
    suite: super::Suite,
    /// The external key source the master keys are wrapped by, if any.
    external: Option<Arc<super::ExternalKey>>,
    /// Set while the external key source has not confirmed the master keys for longer
    /// than the vault may hold them: nothing is served (`key_unavailable`).
    sealed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("master", &self.master())
            .field("file", &self.file)
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
    write_key_file(path, &MasterKeyRing::generate_key_file_text(), true)?;
    tracing::info!(path = %path.display(), "created a new master key file");
    Ok(())
}

/// Writes key file text durably: a new file (`create_new`), or a replacement written
/// beside it and renamed over it, so a crash leaves the old text or the new, never half.
pub(super) fn write_key_file(path: &Path, text: &str, create_new: bool) -> Result<(), KeyError> {
    let setup = |e: std::io::Error| {
        KeyError::Setup(format!("cannot write key file {}: {e}", path.display()))
    };
    let target = if create_new {
        path.to_owned()
    } else {
        let mut name = path.as_os_str().to_owned();
        name.push(".new");
        let staged = PathBuf::from(name);
        let _ = std::fs::remove_file(&staged);
        staged
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(setup)?;
    file.write_all(text.as_bytes()).map_err(setup)?;
    file.sync_all().map_err(setup)?;
    if !create_new {
        std::fs::rename(&target, path).map_err(setup)?;
    }
    if let Some(dir) = path.parent() {
        // Make the directory entry durable too.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl Keys {
    /// The keys of a running vault: `master` as loaded (from `file`, if it came from
    /// one) and the unwrapped system keys.
    pub fn new(
        master: MasterKeyRing,
        file: Option<PathBuf>,
        system: SystemKeys,
        suite: super::Suite,
    ) -> Self {
        Self {
            master: RwLock::new(Arc::new(master)),
            file,
            system: RwLock::new(Arc::new(system)),
            suite,
            external: None,
            sealed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The same keys, their master versions wrapped by `external`.
    pub fn with_external(mut self, external: Option<Arc<super::ExternalKey>>) -> Self {
        self.external = external;
        self
    }

    /// The external key source the master keys come from, if any.
    pub fn external(&self) -> Option<&Arc<super::ExternalKey>> {
        self.external.as_ref()
    }

    /// Whether the vault is sealed: its key source has not confirmed the master keys
    /// for too long, and the master keys are dropped from memory.
    pub fn is_sealed(&self) -> bool {
        self.sealed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Seals the vault: the master keyring is dropped (every version), and requests are
    /// refused until [`Self::unseal`]. The caller drops cached data keys too.
    pub fn seal(&self) {
        self.sealed
            .store(true, std::sync::atomic::Ordering::Release);
        self.set_master(MasterKeyRing::empty());
    }

    /// Serves again (the master keyring was just read from the key source again).
    pub fn unseal(&self) {
        self.sealed
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// The algorithms new keys are made for.
    pub fn suite(&self) -> super::Suite {
        self.suite
    }

    /// A fresh data key for the suite in use.
    pub fn new_data_key(&self) -> super::DataKey {
        super::DataKey::generate_for(self.suite.data_cipher())
    }

    fn system(&self) -> Arc<SystemKeys> {
        match self.system.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the system keys (after a version was added or destroyed).
    pub fn set_system(&self, system: SystemKeys) {
        let system = Arc::new(system);
        match self.system.write() {
            Ok(mut slot) => *slot = system,
            Err(poisoned) => *poisoned.into_inner() = system,
        }
    }

    /// The loaded versions of the blind-index and token-hash keys, newest first.
    pub fn system_versions(&self) -> (Vec<i64>, Vec<i64>) {
        let s = self.system();
        (
            s.blind.iter().map(|(v, _)| *v).collect(),
            s.token.iter().map(|(v, _)| *v).collect(),
        )
    }

    /// The master keyring as it is now.
    pub fn master(&self) -> Arc<MasterKeyRing> {
        match self.master.read() {
            Ok(ring) => ring.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the master keyring (after it was checked against the store).
    pub fn set_master(&self, ring: MasterKeyRing) {
        let ring = Arc::new(ring);
        match self.master.write() {
            Ok(mut slot) => *slot = ring,
            Err(poisoned) => *poisoned.into_inner() = ring,
        }
    }

    /// The key file the master keyring comes from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads the key file again; `None` when the keyring did not come from a file (an
    /// environment variable or a passphrase cannot change while the process runs).
    pub fn read_file(&self) -> Result<Option<MasterKeyRing>, KeyError> {
        match &self.file {
            Some(path) => Ok(Some(MasterKeyRing::parse(&read_key_file(path)?)?)),
            None => Ok(None),
        }
    }

    /// Adds a fresh random master-key `version` to the key file.
    pub fn add_file_version(&self, version: i64) -> Result<(), KeyError> {
        self.edit_file(|text| Ok(MasterKeyRing::key_file_with_version(text, version)))
    }

    /// Removes master-key `version` from the key file: the version is destroyed here.
    pub fn remove_file_version(&self, version: i64) -> Result<(), KeyError> {
        self.edit_file(|text| MasterKeyRing::key_file_without_version(text, version))
    }

    /// Replaces the key file's text with `change(text)`, durably (see `write_key_file`).
    fn edit_file(
        &self,
        change: impl FnOnce(&str) -> Result<Zeroizing<String>, CryptoError>,
    ) -> Result<(), KeyError> {
        let path = self.file.as_deref().ok_or_else(|| {
            KeyError::Setup("the master key does not come from a key file".into())
        })?;
        let text = read_key_file(path)?;
        write_key_file(path, &change(&text)?, false)
    }

    /// The blind-index digest under the newest key, with that key's version (what a
    /// write stores).
    pub fn blind_index(&self, field: &str, normalised: &str) -> (i64, Vec<u8>) {
        self.system().blind_index(field, normalised)
    }

    /// The keyed digest of a field's value as stored, for the audit trail of a
    /// correction (PIPL Art. 46): `bi<version>:<32 hex digits>` under the newest
    /// blind-index key. Equal values give equal digests under one key version; the value
    /// cannot be learnt from it without the key.
    pub fn correction_digest(&self, field: &str, canonical: &str) -> String {
        let system = self.system();
        match system.blind.first() {
            Some((v, key)) => format!(
                "bi{v}:{}",
                hex::encode(super::correction_digest(key, field, canonical))
            ),
            None => "-".into(),
        }
    }

    /// The blind-index digest under every live key, newest first (what a lookup
    /// searches for while the key is rotated).
    pub fn blind_indexes(&self, field: &str, normalised: &str) -> Vec<Vec<u8>> {
        self.system()
            .blind
            .iter()
            .map(|(_, key)| super::blind_index(key, field, normalised))
            .collect()
    }

    /// The system keys as they are now (a long task keeps using this set).
    pub fn system_keys(&self) -> Arc<SystemKeys> {
        self.system()
    }

    /// The token hash under the newest token-hash key, with that key's version (what
    /// issuing a token stores).
    pub fn token_hash(&self, secret: &str) -> (i64, Vec<u8>) {
        match self.system().token.first() {
            Some((v, key)) => (*v, super::token_hash(key, secret)),
            None => (0, Vec::new()),
        }
    }

    /// The token hash under every live token-hash key, newest first: a token issued
    /// before a rotation is found under the key it was hashed with.
    pub fn token_hashes(&self, secret: &str) -> Vec<(i64, Vec<u8>)> {
        self.system()
            .token
            .iter()
            .map(|(v, key)| (*v, super::token_hash(key, secret)))
            .collect()
    }
}

/// Loads the master keyring from `source`. A missing key file is created (one fresh
/// version) only when `may_create` and the source allows it. `salt` is the stored
/// passphrase salt, if any; a new one is generated for an uninitialised vault and
/// returned to be stored.
pub fn load_ring(
    source: &MasterKeySource,
    may_create: bool,
    salt: Option<Vec<u8>>,
) -> Result<(MasterKeyRing, Option<Vec<u8>>), KeyError> {
    match source {
        MasterKeySource::File { path, create } => {
            if !path.exists() {
                if !(may_create && *create) {
                    return Err(KeyError::Setup(format!(
                        "master key file {} not found; this vault is already initialised, so no new key is made (restore the key file or point --master-key-file at it)",
                        path.display()
                    )));
                }
                create_key_file(path)?;
            }
            Ok((MasterKeyRing::parse(&read_key_file(path)?)?, None))
        }
        MasterKeySource::Inline(text) => Ok((MasterKeyRing::parse(text)?, None)),
        MasterKeySource::Passphrase(pass) => match salt {
            Some(salt) => Ok((MasterKeyRing::from_passphrase(pass, &salt)?, None)),
            None if may_create => {
                let salt = random_bytes::<16>().to_vec();
                Ok((MasterKeyRing::from_passphrase(pass, &salt)?, Some(salt)))
            }
            None => Err(KeyError::Setup(
                "this vault was not initialised with a passphrase (no kdf_salt)".into(),
            )),
        },
        // Its versions are stored wrapped: `keys::open` unwraps them through the source.
        MasterKeySource::External(c) => Err(KeyError::Setup(format!(
            "{} is read through the store",
            c.describe()
        ))),
    }
}

/// The key file a source names, if it is one.
pub fn source_file(source: &MasterKeySource) -> Option<PathBuf> {
    match source {
        MasterKeySource::File { path, .. } => Some(path.clone()),
        _ => None,
    }
}
