use crate::crypto::random_id;

/// An opaque subject id, `sub_` and 32 hex digits. Random (or, in an import, derived
/// from a random secret and a line number); never derived from PI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectId(String);

impl SubjectId {
    pub fn generate() -> Self {
        Self(random_id("sub"))
    }

    /// The id of line `line` of an import run: the run's 4-byte prefix, the line number
    /// (6 bytes) and 6 bytes derived from the run's secret and the line. Ids of one run
    /// sort in line order, so an import appends to every index keyed by subject instead
    /// of writing all over them; the same run and line always give the same id, so a
    /// resumed import recognises the subjects it already created. Knowing one id of a
    /// run, another cannot be guessed without the secret (48 bits of it).
    pub fn for_import(run_secret: &[u8; 16], line: u64) -> Self {
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
