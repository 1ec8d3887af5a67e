//! The master key (KEK): loaded from a key file, an environment variable or a
//! passphrase; several versions may be loaded at once so that rotation can re-wrap.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::cipher::{DataCipher, DataKey};
use super::{random_bytes, Aad, CryptoError, MacKey, Sealed};

/// First line of a key file written by piivault.
pub const KEY_FILE_HEADER: &str =
    "# piivault master key file: keep it secret (mode 0600) and back it up apart from the database.";

/// Where the master key comes from. Secrets are held in zeroizing strings.
pub enum MasterKeySource {
    /// A key file (`vN:BASE64` lines). Created on first start when `create` is set.
    File { path: PathBuf, create: bool },
    /// Key text given directly (environment variable), same syntax as the file.
    Inline(Zeroizing<String>),
    /// A passphrase stretched with argon2id and the database's salt.
    Passphrase(Zeroizing<String>),
    /// Versions wrapped by an external key source (PKCS#11 module, transit service) and
    /// stored wrapped in the database.
    External(super::ExternalKeyConfig),
}

impl std::fmt::Debug for MasterKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File { path, create } => f
                .debug_struct("File")
                .field("path", path)
                .field("create", create)
                .finish(),
            Self::Inline(_) => f.write_str("Inline(<redacted>)"),
            Self::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
            Self::External(c) => write!(f, "External({})", c.describe()),
        }
    }
}

/// The keys derived from one master key version: a wrapping key for each cipher a
/// version may wrap with, and the check-value key.
struct KekVersion {
    aes: DataKey,
    sm4: DataKey,
    check: MacKey,
}

/// All loaded master key versions; the highest is current and wraps new keys. Each
/// version wraps with AES-256-GCM, or SM4-GCM if it was made for the `sm` suite (as the
/// store records).
#[derive(Clone)]
pub struct MasterKeyRing {
    versions: BTreeMap<i64, Arc<KekVersion>>,
    sm4: std::collections::BTreeSet<i64>,
}

impl std::fmt::Debug for MasterKeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeyRing")
            .field("versions", &self.versions.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn derive(raw: &[u8], info: &str) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(b"piivault/kek/v1"), raw);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
    if hk.expand(info.as_bytes(), out.as_mut_slice()).is_err() {
        unreachable!("HKDF expand of 32 bytes cannot fail");
    }
    out
}

/// One `vN:BASE64` key-file line holding a fresh random key.
fn new_version_line(version: i64) -> Zeroizing<String> {
    let key = Zeroizing::new(random_bytes::<32>());
    let b64 = Zeroizing::new(B64.encode(key.as_slice()));
    Zeroizing::new(format!("v{version}:{}\n", b64.as_str()))
}

impl MasterKeyRing {
    /// A keyring from each version's 32 bytes of key material.
    pub(crate) fn from_versions(
        raw: BTreeMap<i64, Zeroizing<Vec<u8>>>,
    ) -> Result<Self, CryptoError> {
        if raw.is_empty() {
            return Err(CryptoError::MasterKey("no key found".into()));
        }
        let mut versions = BTreeMap::new();
        for (version, bytes) in raw {
            if bytes.len() != 32 {
                return Err(CryptoError::MasterKey(format!(
                    "version {version} is not 32 bytes of base64"
                )));
            }
            let aes = DataKey::from_bytes(derive(&bytes, "wrap").as_slice())?;
            let sm4 = DataKey::sm4_from_bytes(&derive(&bytes, "wrap-sm4")[..16])?;
            let check = MacKey::from_bytes(derive(&bytes, "check").as_slice())?;
            versions.insert(version, Arc::new(KekVersion { aes, sm4, check }));
        }
        Ok(Self {
            versions,
            sm4: Default::default(),
        })
    }

    /// Parses key text: lines (or comma-separated entries) `vN:BASE64`; a single bare
    /// `BASE64` entry is version 1. `#` starts a comment line.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let mut raw = BTreeMap::new();
        let entries: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        let single = entries.len() == 1;
        for entry in entries {
            let (version, b64) = match entry.split_once(':') {
                Some((v, b64)) => {
                    let version = v
                        .strip_prefix('v')
                        .and_then(|n| n.parse::<i64>().ok())
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| {
                            CryptoError::MasterKey(
                                "entries must look like v1:BASE64 (version 1 or more)".into(),
                            )
                        })?;
                    (version, b64)
                }
                None if single => (1, entry),
                None => {
                    return Err(CryptoError::MasterKey(
                        "with several keys, each entry must be vN:BASE64".into(),
                    ))
                }
            };
            let bytes = Zeroizing::new(B64.decode(b64.trim()).map_err(|_| {
                CryptoError::MasterKey(format!("version {version} is not valid base64"))
            })?);
            if raw.insert(version, bytes).is_some() {
                return Err(CryptoError::MasterKey(format!(
                    "version {version} appears twice"
                )));
            }
        }
        Self::from_versions(raw)
    }

    /// Stretches a passphrase with argon2id (default parameters) and `salt` into version 1.
    pub fn from_passphrase(passphrase: &str, salt: &[u8]) -> Result<Self, CryptoError> {
        if passphrase.chars().count() < 12 {
            return Err(CryptoError::MasterKey(
                "the passphrase must be at least 12 characters".into(),
            ));
        }
        let mut out = Zeroizing::new(vec![0u8; 32]);
        argon2::Argon2::default()
            .hash_password_into(passphrase.as_bytes(), salt, out.as_mut_slice())
            .map_err(|e| CryptoError::MasterKey(format!("argon2id: {e}")))?;
        Self::from_versions(BTreeMap::from([(1, out)]))
    }

    /// Text of a new key file holding one fresh random version-1 key.
    pub fn generate_key_file_text() -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{KEY_FILE_HEADER}\n{}",
            new_version_line(1).as_str()
        ))
    }

    /// Key file `text` with a fresh random key added as `version` (comments and the
    /// other versions kept as they are).
    pub fn key_file_with_version(text: &str, version: i64) -> Zeroizing<String> {
        let mut out = Zeroizing::new(text.to_owned());
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&new_version_line(version));
        out
    }

    /// Key file `text` without `version`'s line. A file whose keys are not written one
    /// `vN:BASE64` a line (a single bare key, or comma-separated entries) is refused.
    pub fn key_file_without_version(
        text: &str,
        version: i64,
    ) -> Result<Zeroizing<String>, CryptoError> {
        let prefix = format!("v{version}:");
        let mut out = Zeroizing::new(String::with_capacity(text.len()));
        let mut removed = false;
        for line in text.lines() {
            let entry = line.trim();
            if !entry.is_empty()
                && !entry.starts_with('#')
                && (entry.contains(',') || !entry.contains(':'))
            {
                return Err(CryptoError::MasterKey(
                    "the key file must hold one vN:BASE64 entry a line to have a version removed"
                        .into(),
                ));
            }
            if entry.starts_with(&prefix) {
                removed = true;
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        if !removed {
            return Err(CryptoError::UnknownKekVersion(version));
        }
        Ok(out)
    }

    /// A keyring with no version (a sealed vault's).
    pub fn empty() -> Self {
        Self {
            versions: BTreeMap::new(),
            sm4: Default::default(),
        }
    }

    /// The same keyring, each version wrapping with the cipher `cipher_of` names for
    /// it (the store records it per version).
    pub fn with_ciphers(mut self, cipher_of: impl Fn(i64) -> DataCipher) -> Self {
        self.sm4 = self
            .versions
            .keys()
            .copied()
            .filter(|v| cipher_of(*v) == DataCipher::Sm4Gcm)
            .collect();
        self
    }

    /// The cipher version `v` wraps with.
    pub fn cipher(&self, v: i64) -> DataCipher {
        if self.sm4.contains(&v) {
            DataCipher::Sm4Gcm
        } else {
            DataCipher::Aes256Gcm
        }
    }

    pub fn contains(&self, version: i64) -> bool {
        self.versions.contains_key(&version)
    }

    /// The ring without the versions `keep` refuses.
    pub fn retain(&self, keep: impl Fn(i64) -> bool) -> Self {
        Self {
            versions: self
                .versions
                .iter()
                .filter(|(v, _)| keep(**v))
                .map(|(v, k)| (*v, k.clone()))
                .collect(),
            sm4: self.sm4.iter().copied().filter(|v| keep(*v)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    pub fn current_version(&self) -> i64 {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }

    pub fn versions(&self) -> Vec<i64> {
        self.versions.keys().copied().collect()
    }

    fn version(&self, v: i64) -> Result<&KekVersion, CryptoError> {
        self.versions
            .get(&v)
            .map(|k| k.as_ref())
            .ok_or(CryptoError::UnknownKekVersion(v))
    }

    /// The key version `v` wraps with.
    fn wrapper(&self, v: i64) -> Result<&DataKey, CryptoError> {
        let k = self.version(v)?;
        Ok(match self.cipher(v) {
            DataCipher::Sm4Gcm => &k.sm4,
            DataCipher::Aes256Gcm => &k.aes,
        })
    }

    fn current(&self) -> Result<(i64, &DataKey), CryptoError> {
        let v = self.current_version();
        Ok((v, self.wrapper(v)?))
    }

    /// Key check value stored in the database, to detect a wrong master key at start.
    pub fn check_value(&self, version: i64) -> Result<Vec<u8>, CryptoError> {
        Ok(self
            .version(version)?
            .check
            .mac(&[b"piivault/kek-check/v1"])
            .to_vec())
    }

    pub fn verify_check_value(&self, version: i64, stored: &[u8]) -> Result<(), CryptoError> {
        if super::ct_eq(&self.check_value(version)?, stored) {
            Ok(())
        } else {
            Err(CryptoError::WrongMasterKey(version))
        }
    }

    /// Wraps a subject's DEK under the current KEK; returns the KEK version used.
    pub fn wrap_subject_key(
        &self,
        subject: &str,
        dek_version: i64,
        dek: &DataKey,
    ) -> Result<(i64, Sealed), CryptoError> {
        let (kek_version, kek) = self.current()?;
        let aad = Aad::subject_key(subject, dek_version, kek_version);
        Ok((kek_version, kek.seal(&aad, &dek.to_wrapped_form())))
    }

    pub fn unwrap_subject_key(
        &self,
        subject: &str,
        dek_version: i64,
        kek_version: i64,
        wrapped: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let aad = Aad::subject_key(subject, dek_version, kek_version);
        let bytes = self.wrapper(kek_version)?.open(&aad, wrapped)?;
        DataKey::from_wrapped_form(&bytes)
    }

    /// Unwraps a subject's DEK from `kek_version` and wraps it again under the current
    /// version; the key itself never leaves this module.
    pub fn rewrap_subject_key(
        &self,
        subject: &str,
        dek_version: i64,
        kek_version: i64,
        wrapped: &[u8],
    ) -> Result<(i64, Sealed), CryptoError> {
        let dek = self.unwrap_subject_key(subject, dek_version, kek_version, wrapped)?;
        self.wrap_subject_key(subject, dek_version, &dek)
    }

    /// As [`Self::rewrap_subject_key`], for a system key.
    pub fn rewrap_system_key(
        &self,
        name: &str,
        version: i64,
        kek_version: i64,
        wrapped: &[u8],
    ) -> Result<(i64, Sealed), CryptoError> {
        let aad = Aad::system_key(name, version, kek_version);
        let bytes = self.wrapper(kek_version)?.open(&aad, wrapped)?;
        let (current, kek) = self.current()?;
        let aad = Aad::system_key(name, version, current);
        Ok((current, kek.seal(&aad, &bytes)))
    }

    /// Generates and wraps a new system MAC key (blind index, token hash) for
    /// `algorithm`.
    pub fn new_system_key(
        &self,
        name: &str,
        version: i64,
        algorithm: super::MacAlgorithm,
    ) -> Result<(i64, Sealed), CryptoError> {
        let (kek_version, kek) = self.current()?;
        let key = MacKey::generate_wrapped_form(algorithm);
        let aad = Aad::system_key(name, version, kek_version);
        Ok((kek_version, kek.seal(&aad, key.as_slice())))
    }

    pub fn unwrap_system_key(
        &self,
        name: &str,
        version: i64,
        kek_version: i64,
        wrapped: &[u8],
    ) -> Result<MacKey, CryptoError> {
        let aad = Aad::system_key(name, version, kek_version);
        let bytes = self.wrapper(kek_version)?.open(&aad, wrapped)?;
        MacKey::from_wrapped_form(&bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn generated_file_parses_and_wraps() {
        let ring = MasterKeyRing::parse(&MasterKeyRing::generate_key_file_text()).unwrap();
        assert_eq!(ring.current_version(), 1);
        let dek = DataKey::generate();
        let (kv, wrapped) = ring.wrap_subject_key("sub_a", 1, &dek).unwrap();
        let back = ring.unwrap_subject_key("sub_a", 1, kv, &wrapped).unwrap();
        assert_eq!(*back.to_wrapped_form(), *dek.to_wrapped_form());
        assert!(ring.unwrap_subject_key("sub_b", 1, kv, &wrapped).is_err());
        assert!(ring.unwrap_subject_key("sub_a", 2, kv, &wrapped).is_err());
    }

    #[test]
    fn versions_are_added_to_and_removed_from_key_file_text() {
        let text = MasterKeyRing::generate_key_file_text();
        let two = MasterKeyRing::key_file_with_version(&text, 2);
        assert!(two.starts_with(KEY_FILE_HEADER), "the comment is kept");
        let ring = MasterKeyRing::parse(&two).unwrap();
        assert_eq!(ring.versions(), [1, 2]);
        let dek = DataKey::generate();
        let (kv, wrapped) = MasterKeyRing::parse(&text)
            .unwrap()
            .wrap_subject_key("sub_a", 1, &dek)
            .unwrap();
        assert_eq!(kv, 1);
        // Wrapped again under the newest version, the same key comes back.
        let (kv2, rewrapped) = ring.rewrap_subject_key("sub_a", 1, kv, &wrapped).unwrap();
        assert_eq!(kv2, 2);
        let back = ring.unwrap_subject_key("sub_a", 1, 2, &rewrapped).unwrap();
        assert_eq!(*back.to_wrapped_form(), *dek.to_wrapped_form());
        // Bound to its place: the version number is part of what was sealed.
        assert!(ring.unwrap_subject_key("sub_a", 1, 1, &rewrapped).is_err());

        let one_left = MasterKeyRing::key_file_without_version(&two, 1).unwrap();
        let left = MasterKeyRing::parse(&one_left).unwrap();
        assert_eq!(left.versions(), [2]);
        assert!(left.unwrap_subject_key("sub_a", 1, 2, &rewrapped).is_ok());
        assert!(matches!(
            left.unwrap_subject_key("sub_a", 1, 1, &wrapped),
            Err(CryptoError::UnknownKekVersion(1))
        ));
        assert!(matches!(
            MasterKeyRing::key_file_without_version(&one_left, 1),
            Err(CryptoError::UnknownKekVersion(1))
        ));
        // A bare key or a comma list cannot have one version taken out line by line.
        let k = B64.encode([7u8; 32]);
        assert!(MasterKeyRing::key_file_without_version(&k, 1).is_err());
        assert!(MasterKeyRing::key_file_without_version(&format!("v1:{k},v2:{k}"), 1).is_err());
    }

    #[test]
    fn a_version_made_for_sm4_wraps_with_sm4_and_only_opens_so() {
        let text = MasterKeyRing::generate_key_file_text();
        let aes = MasterKeyRing::parse(&text).unwrap();
        let sm4 = MasterKeyRing::parse(&text)
            .unwrap()
            .with_ciphers(|_| DataCipher::Sm4Gcm);
        assert_eq!(aes.cipher(1), DataCipher::Aes256Gcm);
        assert_eq!(sm4.cipher(1), DataCipher::Sm4Gcm);
        let dek = DataKey::generate_for(DataCipher::Sm4Gcm);
        let (_, wrapped) = sm4.wrap_subject_key("sub_a", 1, &dek).unwrap();
        let back = sm4.unwrap_subject_key("sub_a", 1, 1, &wrapped).unwrap();
        assert_eq!(*back.to_wrapped_form(), *dek.to_wrapped_form());
        // The same version's material under the other cipher does not open it.
        assert!(aes.unwrap_subject_key("sub_a", 1, 1, &wrapped).is_err());
        let (_, wrapped) = aes.wrap_subject_key("sub_a", 1, &dek).unwrap();
        assert!(sm4.unwrap_subject_key("sub_a", 1, 1, &wrapped).is_err());
        // Re-wrapped from an AES version to an SM4 one, the key is the same.
        let text2 = MasterKeyRing::key_file_with_version(&text, 2);
        let mixed = MasterKeyRing::parse(&text2).unwrap().with_ciphers(|v| {
            if v == 2 {
                DataCipher::Sm4Gcm
            } else {
                DataCipher::Aes256Gcm
            }
        });
        let (kv, rewrapped) = mixed.rewrap_subject_key("sub_a", 1, 1, &wrapped).unwrap();
        assert_eq!(kv, 2);
        let back = mixed.unwrap_subject_key("sub_a", 1, 2, &rewrapped).unwrap();
        assert_eq!(*back.to_wrapped_form(), *dek.to_wrapped_form());
    }

    #[test]
    fn check_value_detects_other_key() {
        let a = MasterKeyRing::parse(&MasterKeyRing::generate_key_file_text()).unwrap();
        let b = MasterKeyRing::parse(&MasterKeyRing::generate_key_file_text()).unwrap();
        let cv = a.check_value(1).unwrap();
        assert!(a.verify_check_value(1, &cv).is_ok());
        assert!(matches!(
            b.verify_check_value(1, &cv),
            Err(CryptoError::WrongMasterKey(1))
        ));
    }

    #[test]
    fn rejects_bad_key_text() {
        assert!(MasterKeyRing::parse("").is_err());
        assert!(MasterKeyRing::parse("not base64!").is_err());
        assert!(MasterKeyRing::parse("v1:AAAA").is_err());
        assert!(MasterKeyRing::parse("x1:AAAA").is_err());
        let k = B64.encode([7u8; 32]);
        assert!(MasterKeyRing::parse(&format!("v1:{k},v1:{k}")).is_err());
        let two = MasterKeyRing::parse(&format!("v1:{k}\nv2:{k}")).unwrap();
        assert_eq!(two.current_version(), 2);
        assert_eq!(MasterKeyRing::parse(&k).unwrap().current_version(), 1);
    }

    #[test]
    fn passphrase_is_deterministic_per_salt() {
        assert!(MasterKeyRing::from_passphrase("short", &[0u8; 16]).is_err());
        let a = MasterKeyRing::from_passphrase("correct horse battery", &[1u8; 16]).unwrap();
        let b = MasterKeyRing::from_passphrase("correct horse battery", &[1u8; 16]).unwrap();
        let c = MasterKeyRing::from_passphrase("correct horse battery", &[2u8; 16]).unwrap();
        let cv = a.check_value(1).unwrap();
        assert!(b.verify_check_value(1, &cv).is_ok());
        assert!(c.verify_check_value(1, &cv).is_err());
    }
}
