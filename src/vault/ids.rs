use crate::crypto::random_id;

/// An opaque subject id, `sub_` and 32 hex digits. Random (or, in an import, derived
/// from a random secret and a line number); never derived from PI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectId(String);

impl SubjectId {
    pub fn generate() -> Self {
        Self(random_id("sub"))
    }

    /// Number `line` of a run of ids: the run's 4-byte prefix, the number (6 bytes) and
    /// 6 bytes derived from the run's secret and the number. Ids of one run sort in
    /// number order, so subjects created one after another are appended to every index
    /// keyed by subject instead of being written all over them. An import is a run (the
    /// number is the line, and the same run and line always give the same id, so a
    /// resumed import recognises the subjects it already created); so is each server
    /// process ([`IdSequence`]). Knowing one id of a run, another cannot be guessed
    /// without the secret (48 bits of it).
    pub fn in_run(run_secret: &[u8; 16], line: u64) -> Self {
        use sha2::{Digest, Sha256};
        let derive = |what: &[u8]| {
            let mut h = Sha256::new();
            h.update(b"piivault/import/v1");
            h.update(run_secret);
            h.update(what);
            h.finalize()
        };
        let prefix = derive(b"prefix");
        let tag = derive(&line.to_be_bytes());
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&prefix[..4]);
        id[4..10].copy_from_slice(&line.to_be_bytes()[2..]);
        id[10..].copy_from_slice(&tag[..6]);
        Self(format!("sub_{}", hex::encode(id)))
    }

    /// Accepts only the shape the vault generates.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sub_")?;
        (hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SubjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ids for the subjects one process creates: a run of its own (a random secret made at
/// start), numbered from a random point below 2^47, so that ids made one after another
/// sort together (see [`SubjectId::in_run`]) and the numbers do not tell how many
/// subjects this process made before.
pub struct IdSequence {
    secret: zeroize::Zeroizing<[u8; 16]>,
    next: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for IdSequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdSequence")
    }
}

impl Default for IdSequence {
    fn default() -> Self {
        let start = u64::from_be_bytes(crate::crypto::random_bytes::<8>()) >> 17;
        Self {
            secret: zeroize::Zeroizing::new(crate::crypto::random_bytes::<16>()),
            next: std::sync::atomic::AtomicU64::new(start),
        }
    }
}

impl IdSequence {
    pub fn next(&self) -> SubjectId {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SubjectId::in_run(&self.secret, n)
    }
}

/// A record id, `rec_` and 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordId(pub(crate) String);

impl RecordId {
    pub fn generate() -> Self {
        Self(random_id("rec"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_makes_ids_that_sort_in_order_and_differ_between_processes() {
        let (a, b) = (IdSequence::default(), IdSequence::default());
        let ids: Vec<SubjectId> = (0..100).map(|_| a.next()).collect();
        assert!(ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
        assert!(ids.iter().all(|id| SubjectId::parse(id.as_str()).is_some()));
        let other = b.next();
        assert!(ids.iter().all(|id| id != &other));
        // Another run's ids do not share its prefix (but for a 2^-32 chance).
        assert_ne!(ids[0].as_str()[..12], other.as_str()[..12]);
    }

    #[test]
    fn subject_ids() {
        let id = SubjectId::generate();
        assert_eq!(SubjectId::parse(id.as_str()), Some(id));
        assert_eq!(SubjectId::parse("sub_xyz"), None);
        assert_eq!(
            SubjectId::parse("rec_0123456789abcdef0123456789abcdef"),
            None
        );
        assert_eq!(
            SubjectId::parse("sub_0123456789ABCDEF0123456789abcdef"),
            None
        );
    }
}
