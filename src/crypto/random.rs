use rand::RngCore;

/// Random bytes from the thread-local CSPRNG (ChaCha, seeded and reseeded from the OS).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::thread_rng().fill_bytes(&mut out);
    out
}

/// An opaque random identifier: `prefix_` followed by 128 random bits in hex.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}_{}", hex::encode(random_bytes::<16>()))
}
