//! AES-256-GCM with random 96-bit nonces; ciphertext layout `nonce || ciphertext || tag`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use super::{random_bytes, Aad, CryptoError};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A sealed value as stored: nonce, ciphertext and tag.
pub type Sealed = Vec<u8>;

/// A 256-bit AES-GCM key: a subject's DEK, or a wrapping key derived from the KEK.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(Zeroizing::new(random_bytes::<32>()))
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != 32 {
            return Err(CryptoError::Malformed);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.as_slice().into())
    }

    /// Encrypts `plaintext` bound to `aad` under a fresh random nonce.
    pub fn seal(&self, aad: &Aad, plaintext: &[u8]) -> Sealed {
        let nonce = random_bytes::<NONCE_LEN>();
        let payload = Payload {
            msg: plaintext,
            aad: aad.as_bytes(),
        };
        // Encryption with a valid key and in-memory buffer only fails for inputs
        // larger than GCM's 64 GiB limit, which request limits rule out.
        let ct = match self.cipher().encrypt(Nonce::from_slice(&nonce), payload) {
            Ok(ct) => ct,
            Err(_) => unreachable!("AES-GCM encryption of a bounded buffer cannot fail"),
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
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), payload)
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
