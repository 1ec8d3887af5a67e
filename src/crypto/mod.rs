//! Keys and ciphers. Nothing outside this module touches key bytes.
//!
//! Key hierarchy (see SECURITY.md):
//! - the master key (KEK), one or more versions, held outside the database
//!   (key file, environment, an argon2id-stretched passphrase, or stored wrapped by a
//!   PKCS#11 module or a transit key service);
//! - system keys generated at initialisation and stored only wrapped by the KEK:
//!   the blind-index key and the token-hash key;
//! - one data key (DEK) per subject and DEK version, stored only wrapped by the KEK.

mod aad;
mod audit_key;
mod cipher;
mod external;
mod keyset;
mod master;
mod random;

pub use aad::Aad;
pub use audit_key::{AuditKey, AuditPublicKey};
pub use cipher::{DataCipher, DataKey, Sealed};
pub use external::{ExternalKey, ExternalKeyConfig, Pkcs11Config, TransitConfig};
pub use keyset::{load_ring, source_file, KeyError, Keys, SystemKeys};
// `Suite`, `MacAlgorithm` and `MacKey` are defined below.
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
    /// The external key source failed or refused (named, without its secrets).
    #[error("the master key source is unavailable: {0}")]
    KeySource(String),
}

/// Names of the system keys wrapped by the KEK and stored in the database.
pub const BLIND_INDEX_KEY: &str = "blind_index";
pub const TOKEN_HASH_KEY: &str = "token_hash";

/// The MAC a system key (blind index, token hash) is for. Recorded with the key itself
/// (inside what the master key wraps), so each version has its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MacAlgorithm {
    #[default]
    HmacSha256,
    /// HMAC over SM3 (GB/T 32905-2016).
    HmacSm3,
}

impl MacAlgorithm {
    /// The algorithm of a system key from the length of its wrapped form (nonce, key
    /// in its wrapped form, tag), as the inventory sees it without unwrapping.
    pub fn of_wrapped_len(len: usize) -> Option<Self> {
        match len.checked_sub(12 + 16)? {
            32 => Some(Self::HmacSha256),
            33 => Some(Self::HmacSm3),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "HMAC-SHA256",
            Self::HmacSm3 => "HMAC-SM3",
        }
    }
}

/// Marks an HMAC-SM3 key where a system key is stored wrapped (an HMAC-SHA256 key is
/// its 32 bytes alone, as since the first version).
const SM3_TAG: u8 = 0x03;

/// The algorithms new keys are made for: the default (AES-256-GCM data keys,
/// HMAC-SHA256 system keys) or China's commercial cryptography (商用密码: SM4-GCM and
/// HMAC-SM3). Keys made earlier keep theirs; re-encryption and key rotation move a
/// store from one to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Suite {
    #[default]
    Standard,
    Commercial,
}

impl Suite {
    /// `aes` or `sm`, as a setting names it.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "aes" => Some(Self::Standard),
            "sm" => Some(Self::Commercial),
            _ => None,
        }
    }

    pub fn data_cipher(self) -> DataCipher {
        match self {
            Self::Standard => DataCipher::Aes256Gcm,
            Self::Commercial => DataCipher::Sm4Gcm,
        }
    }

    pub fn mac(self) -> MacAlgorithm {
        match self {
            Self::Standard => MacAlgorithm::HmacSha256,
            Self::Commercial => MacAlgorithm::HmacSm3,
        }
    }
}

/// A 256-bit key used only for a MAC (blind indexes, token hashes, the check value).
pub struct MacKey {
    algorithm: MacAlgorithm,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MacKey({}, <redacted>)", self.algorithm.as_str())
    }
}

impl MacKey {
    /// An HMAC-SHA256 key from its 32 bytes.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(CryptoError::Malformed);
        }
        key.copy_from_slice(bytes);
        Ok(Self {
            algorithm: MacAlgorithm::HmacSha256,
            key,
        })
    }

    /// A fresh random key for `algorithm`, in the form the master key wraps.
    pub(crate) fn generate_wrapped_form(algorithm: MacAlgorithm) -> Zeroizing<Vec<u8>> {
        let key = Zeroizing::new(random_bytes::<32>());
        Zeroizing::new(match algorithm {
            MacAlgorithm::HmacSha256 => key.to_vec(),
            MacAlgorithm::HmacSm3 => [&[SM3_TAG][..], key.as_slice()].concat(),
        })
    }

    /// The key from what the master key wrapped: 32 bytes (HMAC-SHA256), or the SM3
    /// tag and 32 bytes (HMAC-SM3).
    pub(crate) fn from_wrapped_form(bytes: &[u8]) -> Result<Self, CryptoError> {
        match bytes {
            [SM3_TAG, key @ ..] if key.len() == 32 => {
                let mut k = Self::from_bytes(key)?;
                k.algorithm = MacAlgorithm::HmacSm3;
                Ok(k)
            }
            key => Self::from_bytes(key),
        }
    }

    pub fn algorithm(&self) -> MacAlgorithm {
        self.algorithm
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
            // new_from_slice cannot fail for HMAC: any key length is accepted.
            let mut mac = match <M as hmac::digest::KeyInit>::new_from_slice(key) {
                Ok(mac) => mac,
                Err(_) => unreachable!("HMAC accepts keys of any length"),
            };
            for part in parts {
                mac.update(&(part.len() as u64).to_be_bytes());
                mac.update(part);
            }
            let mut out = [0u8; 32];
            out.copy_from_slice(&mac.finalize().into_bytes()[..32]);
            out
        }
        match self.algorithm {
            MacAlgorithm::HmacSha256 => run::<HmacSha256>(self.key.as_slice(), parts),
            MacAlgorithm::HmacSm3 => run::<Hmac<sm3::Sm3>>(self.key.as_slice(), parts),
        }
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

/// Correction digest: keyed HMAC of a field's value as stored, in a domain of its own
/// (it never equals a blind-index entry), truncated to 128 bits.
fn correction_digest(key: &MacKey, field: &str, canonical: &str) -> [u8; 16] {
    let mac = key.mac(&[
        b"piivault/correction/v1",
        field.as_bytes(),
        canonical.as_bytes(),
    ]);
    let mut out = [0u8; 16];
    out.copy_from_slice(&mac[..16]);
    out
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use sm3::Digest as _;

    /// GB/T 32905-2016, appendix A: SM3 of "abc" and of "abcd" sixteen times.
    #[test]
    fn sm3_matches_gb_t_32905() {
        assert_eq!(
            hex::encode(sm3::Sm3::digest(b"abc")),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
        assert_eq!(
            hex::encode(sm3::Sm3::digest("abcd".repeat(16).as_bytes())),
            "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
        );
    }

    #[test]
    fn an_hmac_sm3_key_keeps_its_algorithm_and_differs_from_hmac_sha256() {
        let wrapped = MacKey::generate_wrapped_form(MacAlgorithm::HmacSm3);
        let sm3 = MacKey::from_wrapped_form(&wrapped).unwrap();
        assert_eq!(sm3.algorithm(), MacAlgorithm::HmacSm3);
        let sha = MacKey::from_bytes(&wrapped[1..]).unwrap();
        assert_eq!(sha.algorithm(), MacAlgorithm::HmacSha256);
        // The same key bytes, two algorithms, two digests; each repeatable.
        assert_ne!(
            blind_index(&sm3, "phone", "13812345678"),
            blind_index(&sha, "phone", "13812345678")
        );
        assert_eq!(
            blind_index(&sm3, "phone", "13812345678"),
            blind_index(&sm3, "phone", "13812345678")
        );
        // RFC 2104 HMAC over SM3, against the digest crate's own SM3 (a key shorter
        // than the block is padded with zeros; inner and outer pads 0x36 and 0x5c).
        let key = [0x0bu8; 32];
        let mut inner = sm3::Sm3::new();
        let mut pad = [0x36u8; 64];
        pad.iter_mut().zip(key).for_each(|(p, k)| *p ^= k);
        inner.update(pad);
        inner.update(b"Hi There");
        let inner = inner.finalize();
        let mut outer = sm3::Sm3::new();
        let mut pad = [0x5cu8; 64];
        pad.iter_mut().zip(key).for_each(|(p, k)| *p ^= k);
        outer.update(pad);
        outer.update(inner);
        let mut mac = <Hmac<sm3::Sm3> as hmac::digest::KeyInit>::new_from_slice(&key).unwrap();
        mac.update(b"Hi There");
        assert_eq!(
            mac.finalize().into_bytes().as_slice(),
            outer.finalize().as_slice()
        );
    }
}
