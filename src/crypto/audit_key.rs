//! The audit signing key (Ed25519): signs checkpoints of the audit chain. It is kept
//! outside the database (a 0600 file, or the environment), so that someone who can
//! rewrite the database cannot re-sign a rewritten trail. Auditors verify with the
//! public key alone.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{random_bytes, CryptoError};

const SECRET_PREFIX: &str = "ed25519-secret:";
const PUBLIC_PREFIX: &str = "ed25519:";

fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

fn checkpoint_message(seq: i64, ts: i64, hash: &[u8]) -> Vec<u8> {
    let mut m = b"piivault/audit-checkpoint/v1".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&ts.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// What an audit-pack signature covers: the pack's manifest, under a domain of its own.
fn pack_message(manifest: &[u8]) -> Vec<u8> {
    let mut m = b"piivault/audit-pack/v1".to_vec();
    m.extend_from_slice(manifest);
    m
}

/// The private half; never printed, never stored in the database.
pub struct AuditKey {
    key: SigningKey,
    public: AuditPublicKey,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("key_id", &self.public.key_id)
            .finish_non_exhaustive()
    }
}

impl AuditKey {
    /// Parses `ed25519-secret:BASE64` (a 32-byte seed).
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let b64 = text.trim().strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            CryptoError::MasterKey("audit key must start with ed25519-secret:".into())
        })?;
        let bytes = Zeroizing::new(
            B64.decode(b64)
                .map_err(|_| CryptoError::MasterKey("audit key is not valid base64".into()))?,
        );
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| CryptoError::MasterKey("audit key must be 32 bytes".into()))?,
        );
        let key = SigningKey::from_bytes(&seed);
        let public = AuditPublicKey::from_key(key.verifying_key());
        Ok(Self { key, public })
    }

    /// Loads the key file, creating it (0600) with a fresh key if it does not exist;
    /// writes the public key beside it (`.pub`) for auditors.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        let io = |e: std::io::Error| {
            CryptoError::MasterKey(format!("audit key {}: {e}", path.display()))
        };
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let seed = Zeroizing::new(random_bytes::<32>());
            let text = Zeroizing::new(format!("{SECRET_PREFIX}{}\n", B64.encode(seed.as_slice())));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        let key = Self::parse(&text)?;
        // Written when missing, and again when it holds another key (a rotation cut
        // short between replacing the key and its public half).
        let public_path = path.with_extension("pub");
        let current = std::fs::read_to_string(&public_path)
            .ok()
            .and_then(|t| AuditPublicKey::parse(&t).ok());
        if current.is_none_or(|p| p.key_id != key.public.key_id) {
            std::fs::write(&public_path, format!("{}\n", key.public.to_text())).map_err(io)?;
        }
        Ok(key)
    }

    pub fn public(&self) -> &AuditPublicKey {
        &self.public
    }

    /// Replaces the key in `path` with a fresh one. The old public key is kept beside
    /// it as `<stem>-<key id>.pub` (checkpoints it signed still verify; the private half
    /// is gone), and `<stem>.pub` gets the new one. Each file is written beside its
    /// place and renamed over it, so a crash leaves the old key or the new, never half.
    /// Returns the old public key, the file it is kept in, and the new key.
    pub fn rotate_file(
        path: &Path,
    ) -> Result<(AuditPublicKey, std::path::PathBuf, Self), CryptoError> {
        let io = |e: std::io::Error| {
            CryptoError::MasterKey(format!("audit key {}: {e}", path.display()))
        };
        let write = |at: &Path, text: &str, create_new: bool| {
            super::keyset::write_key_file(at, text, create_new)
                .map_err(|e| CryptoError::MasterKey(e.to_string()))
        };
        let old = Self::parse(&Zeroizing::new(std::fs::read_to_string(path).map_err(io)?))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "audit".into());
        let kept = path.with_file_name(format!("{stem}-{}.pub", old.public.key_id));
        if !kept.exists() {
            write(&kept, &format!("{}\n", old.public.to_text()), true)?;
        }
        let seed = Zeroizing::new(random_bytes::<32>());
        let text = Zeroizing::new(format!("{SECRET_PREFIX}{}\n", B64.encode(seed.as_slice())));
        let new = Self::parse(&text)?;
        write(path, &text, false)?;
        write(
            &path.with_extension("pub"),
            &format!("{}\n", new.public.to_text()),
            false,
        )?;
        Ok((old.public, kept, new))
    }

    /// Signs a compliance audit pack's manifest (Ed25519 is deterministic: the same
    /// manifest gives the same signature).
    pub fn sign_pack(&self, manifest: &[u8]) -> Vec<u8> {
        self.key.sign(&pack_message(manifest)).to_bytes().to_vec()
    }

    pub fn sign_checkpoint(&self, seq: i64, ts: i64, hash: &[u8]) -> Vec<u8> {
        self.key
            .sign(&checkpoint_message(seq, ts, hash))
            .to_bytes()
            .to_vec()
    }
}

/// The public half, which is all an auditor needs.
#[derive(Debug, Clone)]
pub struct AuditPublicKey {
    key: VerifyingKey,
    key_id: String,
}

impl AuditPublicKey {
    fn from_key(key: VerifyingKey) -> Self {
        Self {
            key_id: key_id(&key),
            key,
        }
    }

    /// Parses `ed25519:BASE64`.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let b64 = text
            .trim()
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or_else(|| CryptoError::MasterKey("public key must start with ed25519:".into()))?;
        let bytes: [u8; 32] = B64
            .decode(b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                CryptoError::MasterKey("public key must be 32 bytes of base64".into())
            })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| CryptoError::MasterKey("not an Ed25519 public key".into()))?;
        Ok(Self::from_key(key))
    }

    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}", B64.encode(self.key.as_bytes()))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verify_pack(&self, manifest: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(signature) else {
            return false;
        };
        self.key.verify(&pack_message(manifest), &sig).is_ok()
    }

    pub fn verify_checkpoint(&self, seq: i64, ts: i64, hash: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(signature) else {
            return false;
        };
        self.key
            .verify(&checkpoint_message(seq, ts, hash), &sig)
            .is_ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let key = AuditKey::load_or_create(&dir.path().join("audit.key")).unwrap();
        let again = AuditKey::load_or_create(&dir.path().join("audit.key")).unwrap();
        assert_eq!(key.public().key_id(), again.public().key_id());
        let public =
            AuditPublicKey::parse(&std::fs::read_to_string(dir.path().join("audit.pub")).unwrap())
                .unwrap();
        let sig = key.sign_checkpoint(7, 100, &[1u8; 32]);
        assert!(public.verify_checkpoint(7, 100, &[1u8; 32], &sig));
        assert!(!public.verify_checkpoint(8, 100, &[1u8; 32], &sig));
        assert!(!public.verify_checkpoint(7, 100, &[2u8; 32], &sig));
        assert!(!public.verify_checkpoint(7, 100, &[1u8; 32], &sig[..10]));
    }

    #[test]
    fn a_rotated_key_is_new_and_the_old_public_half_stays_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let old = AuditKey::load_or_create(&path).unwrap();
        let sig = old.sign_checkpoint(1, 2, &[3u8; 32]);
        let (was, _, new) = AuditKey::rotate_file(&path).unwrap();
        assert_eq!(was.key_id(), old.public().key_id());
        assert_ne!(new.public().key_id(), old.public().key_id());
        let read = |name: String| {
            AuditPublicKey::parse(&std::fs::read_to_string(dir.path().join(name)).unwrap()).unwrap()
        };
        let kept = read(format!("audit-{}.pub", was.key_id()));
        assert!(kept.verify_checkpoint(1, 2, &[3u8; 32], &sig));
        assert_eq!(read("audit.pub".into()).key_id(), new.public().key_id());
        let loaded = AuditKey::load_or_create(&path).unwrap();
        assert_eq!(loaded.public().key_id(), new.public().key_id());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the key file stays private");
    }
}
