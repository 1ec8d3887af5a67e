//! The data ciphers: AES-256-GCM (the default) or SM4-GCM (GB/T 32907 in the GCM mode
//! of NIST SP 800-38D, as RFC 8998 uses it), with random 96-bit nonces; ciphertext
//! layout `nonce || ciphertext || tag`.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, AesGcm, Nonce};
use zeroize::Zeroizing;

use super::{random_bytes, Aad, CryptoError};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// SM4 in GCM mode with 96-bit nonces.
type Sm4Gcm = AesGcm<sm4::Sm4, U12>;

/// Marks an SM4 key where a data key is stored wrapped (an AES-256 key is its 32 bytes
/// alone, as since the first version).
const SM4_TAG: u8 = 0x02;

/// A sealed value as stored: nonce, ciphertext and tag.
pub type Sealed = Vec<u8>;

/// The cipher a data key is for. It is recorded with the key itself (inside what the
/// master key wraps), so each data-key version has its own, and a store moves from one
/// to the other by re-encryption while both read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataCipher {
    #[default]
    Aes256Gcm,
    Sm4Gcm,
}

impl DataCipher {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aes256Gcm => "AES-256-GCM",
            Self::Sm4Gcm => "SM4-GCM",
        }
    }

    /// The cipher of a data key from the length of its wrapped form (nonce, key in its
    /// wrapped form, tag), as the inventory sees it without unwrapping.
    pub fn of_wrapped_len(len: usize) -> Option<Self> {
        match len.checked_sub(NONCE_LEN + TAG_LEN)? {
            32 => Some(Self::Aes256Gcm),
            17 => Some(Self::Sm4Gcm),
            _ => None,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Self::Aes256Gcm => 32,
            Self::Sm4Gcm => 16,
        }
    }
}

/// A data key (a subject's DEK, or a wrapping key derived from the KEK): 256-bit
/// AES-GCM or 128-bit SM4-GCM.
pub struct DataKey {
    cipher: DataCipher,
    /// The key in its first `cipher.key_len()` bytes.
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({}, <redacted>)", self.cipher.as_str())
    }
}

impl DataKey {
    /// A fresh random AES-256-GCM key.
    pub fn generate() -> Self {
        Self::generate_for(DataCipher::Aes256Gcm)
    }

    /// A fresh random key for `cipher`.
    pub fn generate_for(cipher: DataCipher) -> Self {
        let mut key = Zeroizing::new(random_bytes::<32>());
        key[cipher.key_len()..].fill(0);
        Self { cipher, key }
    }

    pub fn cipher(&self) -> DataCipher {
        self.cipher
    }

    /// An AES-256-GCM key from its 32 bytes.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        Self::from_parts(DataCipher::Aes256Gcm, bytes)
    }

    /// An SM4 key from its 16 bytes.
    pub(crate) fn sm4_from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        Self::from_parts(DataCipher::Sm4Gcm, bytes)
    }

    fn from_parts(cipher: DataCipher, bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != cipher.key_len() {
            return Err(CryptoError::Malformed);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key[..bytes.len()].copy_from_slice(bytes);
        Ok(Self { cipher, key })
    }

    /// The key as the master key wraps it: an AES-256 key's 32 bytes, or the SM4 tag
    /// and the SM4 key's 16.
    pub(crate) fn to_wrapped_form(&self) -> Zeroizing<Vec<u8>> {
        let key = &self.key[..self.cipher.key_len()];
        Zeroizing::new(match self.cipher {
            DataCipher::Aes256Gcm => key.to_vec(),
            DataCipher::Sm4Gcm => [&[SM4_TAG][..], key].concat(),
        })
    }

    /// The key from what the master key wrapped (see [`DataKey::to_wrapped_form`]).
    pub(crate) fn from_wrapped_form(bytes: &[u8]) -> Result<Self, CryptoError> {
        match bytes {
            [SM4_TAG, key @ ..] if key.len() == 16 => Self::from_parts(DataCipher::Sm4Gcm, key),
            key => Self::from_parts(DataCipher::Aes256Gcm, key),
        }
    }

    /// Encrypts `plaintext` bound to `aad` under a fresh random nonce.
    pub fn seal(&self, aad: &Aad, plaintext: &[u8]) -> Sealed {
        let nonce = random_bytes::<NONCE_LEN>();
        let payload = Payload {
            msg: plaintext,
            aad: aad.as_bytes(),
        };
        let nonce_ref = Nonce::from_slice(&nonce);
        let key = &self.key[..self.cipher.key_len()];
        // Encryption with a valid key and in-memory buffer only fails for inputs
        // larger than GCM's 64 GiB limit, which request limits rule out.
        let ct = match self.cipher {
            DataCipher::Aes256Gcm => Aes256Gcm::new(key.into()).encrypt(nonce_ref, payload),
            DataCipher::Sm4Gcm => Sm4Gcm::new(key.into()).encrypt(nonce_ref, payload),
        };
        let ct = match ct {
            Ok(ct) => ct,
            Err(_) => unreachable!("GCM encryption of a bounded buffer cannot fail"),
        };
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts and authenticates; fails if the ciphertext or its context differ.
    pub fn open(&self, aad: &Aad, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ct,
            aad: aad.as_bytes(),
        };
        let nonce = Nonce::from_slice(nonce);
        let key = &self.key[..self.cipher.key_len()];
        match self.cipher {
            DataCipher::Aes256Gcm => Aes256Gcm::new(key.into()).decrypt(nonce, payload),
            DataCipher::Sm4Gcm => Sm4Gcm::new(key.into()).decrypt(nonce, payload),
        }
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let key = DataKey::generate();
        let aad = Aad::field("sub_a", "phone", 1);
        let sealed = key.seal(&aad, b"13812345678");
        assert_eq!(key.open(&aad, &sealed).unwrap().as_slice(), b"13812345678");
        assert!(matches!(
            key.open(&Aad::field("sub_b", "phone", 1), &sealed),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            key.open(&Aad::field("sub_a", "email", 1), &sealed),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            key.open(&Aad::field("sub_a", "phone", 2), &sealed),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            DataKey::generate().open(&aad, &sealed),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            key.open(&aad, &sealed[..10]),
            Err(CryptoError::Malformed)
        ));
    }

    /// GB/T 32907-2016, appendix A, example 1: one block under SM4.
    #[test]
    fn sm4_matches_gb_t_32907() {
        use sm4::cipher::{BlockEncrypt, KeyInit as _};
        let key = hex::decode("0123456789abcdeffedcba9876543210").unwrap();
        let cipher = sm4::Sm4::new_from_slice(&key).unwrap();
        let mut block = sm4::cipher::generic_array::GenericArray::clone_from_slice(&key);
        cipher.encrypt_block(&mut block);
        assert_eq!(hex::encode(block), "681edf34d206965e86b3e94f536e4246");
        // Example 2: the same block encrypted 1,000,000 times.
        let mut block = sm4::cipher::generic_array::GenericArray::clone_from_slice(&key);
        for _ in 0..1_000_000 {
            cipher.encrypt_block(&mut block);
        }
        assert_eq!(hex::encode(block), "595298c7c6fd271f0402f804c33d3f66");
    }

    /// RFC 8998, appendix A.1: SM4-GCM.
    #[test]
    fn sm4_gcm_matches_rfc_8998() {
        let key = hex::decode("0123456789abcdeffedcba9876543210").unwrap();
        let nonce = hex::decode("00001234567800000000abcd").unwrap();
        let aad = hex::decode("feedfacedeadbeeffeedfacedeadbeefabaddad2").unwrap();
        let plain = hex::decode(concat!(
            "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccdddddddddddddddd",
            "eeeeeeeeeeeeeeeeffffffffffffffffeeeeeeeeeeeeeeeeaaaaaaaaaaaaaaaa"
        ))
        .unwrap();
        let out = Sm4Gcm::new_from_slice(&key)
            .unwrap()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .unwrap();
        let (ct, tag) = out.split_at(plain.len());
        assert_eq!(
            hex::encode(ct),
            concat!(
                "17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735",
                "d82710ca5c22f0ccfa7cbf93d496ac15a56834cbcf98c397b4024a2691233b8d"
            )
        );
        assert_eq!(hex::encode(tag), "83de3541e4c2b58177e065a9bf7b62ec");
    }

    #[test]
    fn sm4_data_keys_round_trip_and_keep_their_cipher_through_wrapping() {
        let key = DataKey::generate_for(DataCipher::Sm4Gcm);
        let aad = Aad::field("sub_a", "phone", 1);
        let sealed = key.seal(&aad, b"13812345678");
        assert_eq!(key.open(&aad, &sealed).unwrap().as_slice(), b"13812345678");
        let again = DataKey::from_wrapped_form(&key.to_wrapped_form()).unwrap();
        assert_eq!(again.cipher(), DataCipher::Sm4Gcm);
        assert_eq!(
            again.open(&aad, &sealed).unwrap().as_slice(),
            b"13812345678"
        );
        // An AES key in its original 32-byte form is still read as one.
        let aes = DataKey::generate();
        assert_eq!(aes.to_wrapped_form().len(), 32);
        let back = DataKey::from_wrapped_form(&aes.to_wrapped_form()).unwrap();
        assert_eq!(back.cipher(), DataCipher::Aes256Gcm);
        // A value sealed under one cipher does not open under the other.
        assert!(back.open(&aad, &sealed).is_err());
        assert!(DataKey::from_wrapped_form(&[SM4_TAG; 10]).is_err());
    }

    #[test]
    fn nonces_differ() {
        let key = DataKey::generate();
        let aad = Aad::field("sub_a", "phone", 1);
        assert_ne!(key.seal(&aad, b"x")[..12], key.seal(&aad, b"x")[..12]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn aad_parts() -> impl Strategy<Value = (String, String, i64)> {
            ("[a-z0-9_]{1,40}", "\\PC{0,20}", 0i64..1_000_000)
        }

        proptest! {
            // Any value comes back from its own AAD, and from no other: changing the
            // subject, the field or the key version, or any one bit of the stored bytes,
            // makes it unreadable.
            #[test]
            fn sealed_values_open_only_where_they_were_sealed(
                plaintext in proptest::collection::vec(any::<u8>(), 0..512),
                (subject, field, version) in aad_parts(),
                (other_subject, other_field, other_version) in aad_parts(),
                flip in any::<prop::sample::Index>(),
                bit in 0u8..8,
            ) {
                let key = DataKey::generate();
                let aad = Aad::field(&subject, &field, version);
                let sealed = key.seal(&aad, &plaintext);
                let opened = key.open(&aad, &sealed).unwrap();
                prop_assert_eq!(opened.as_slice(), plaintext.as_slice());
                let other = Aad::field(&other_subject, &other_field, other_version);
                if (other_subject, other_field, other_version) != (subject.clone(), field.clone(), version) {
                    prop_assert!(key.open(&other, &sealed).is_err());
                }
                let record = Aad::record(&subject, &field, "rec_1", version);
                prop_assert!(key.open(&record, &sealed).is_err());
                let mut tampered = sealed.clone();
                let i = flip.index(tampered.len());
                tampered[i] ^= 1 << bit;
                prop_assert!(key.open(&aad, &tampered).is_err());
                prop_assert!(DataKey::generate().open(&aad, &sealed).is_err());
            }

            // Stored bytes of any shape are refused, never a panic.
            #[test]
            fn arbitrary_stored_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
                let key = DataKey::generate();
                prop_assert!(key.open(&Aad::field("sub_a", "phone", 1), &bytes).is_err());
            }
        }
    }
}
