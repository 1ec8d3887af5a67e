//! Keys and ciphers. Nothing outside this module touches key bytes.
//!
//! Key hierarchy (see SECURITY.md):
//! - the master key (KEK), one or more versions, held outside the database
//!   (key file, environment, or an argon2id-stretched passphrase);
//! - system keys generated at initialisation and stored only wrapped by the KEK:
//!   the blind-index key and the token-hash key;
//! - one data key (DEK) per subject and DEK version, stored only wrapped by the KEK.

mod aad;
mod audit_key;
mod cipher;
mod keyset;
mod master;
mod random;

pub use aad::Aad;
pub use audit_key::{AuditKey, AuditPublicKey};
pub use cipher::{DataKey, Sealed};
pub use keyset::{load_ring, source_file, KeyError, Keys, SystemKeys};
pub use master::{MasterKeyRing, MasterKeySource, KEY_FILE_HEADER};
pub use random::{random_bytes, random_id};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// Errors from the crypto layer. None of them carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("authenticated decryption failed: the ciphertext does not belong here or was altered")]
    Decrypt,
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("master key version {0} is not loaded")]
    UnknownKekVersion(i64),
    #[error("master key does not match this database (check value mismatch for version {0})")]
    WrongMasterKey(i64),
    #[error("master key: {0}")]
    MasterKey(String),
}

/// Names of the system keys wrapped by the KEK and stored in the database.
pub const BLIND_INDEX_KEY: &str = "blind_index";
pub const TOKEN_HASH_KEY: &str = "token_hash";

/// A 256-bit key used only for HMAC-SHA256 (blind indexes, token hashes).
pub struct MacKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

impl MacKey {
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(CryptoError::Malformed);
        }
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // new_from_slice cannot fail for HMAC: any key length is accepted.
        let mut mac = match <HmacSha256 as Mac>::new_from_slice(self.0.as_slice()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// Blind index: keyed HMAC-SHA256 of a field's normalised value. The field name is
/// part of the input, so equal values in different fields do not collide.
fn blind_index(key: &MacKey, field: &str, normalised: &str) -> Vec<u8> {
    key.mac(&[
        b"piivault/blind-index/v1",
        field.as_bytes(),
        normalised.as_bytes(),
    ])
    .to_vec()
}

/// Token hash: keyed HMAC-SHA256 of a bearer secret. Keyed, so that someone who can
/// write to the database cannot mint a token without the master key.
fn token_hash(key: &MacKey, secret: &str) -> Vec<u8> {
    key.mac(&[b"piivault/token/v1", secret.as_bytes()]).to_vec()
}

/// Constant-time equality for secrets and digests.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
