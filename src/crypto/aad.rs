//! Associated data: binds every ciphertext to the place it belongs.

/// Associated data for AES-GCM. Built from length-prefixed parts so that no two
/// different contexts can encode to the same bytes.
pub struct Aad(Vec<u8>);

impl Aad {
    fn build(kind: &str, parts: &[&[u8]]) -> Self {
        let mut out = Vec::with_capacity(64);
        for part in std::iter::once(kind.as_bytes()).chain(parts.iter().copied()) {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        Self(out)
    }

    /// A field value of a subject, encrypted under DEK version `dek_version`.
    pub fn field(subject: &str, field: &str, dek_version: i64) -> Self {
        Self::build(
            "piivault/field/v1",
            &[
                subject.as_bytes(),
                field.as_bytes(),
                &dek_version.to_be_bytes(),
            ],
        )
    }

    /// A record document of a subject's collection.
    pub fn record(subject: &str, collection: &str, record_id: &str, dek_version: i64) -> Self {
        Self::build(
            "piivault/record/v1",
            &[
                subject.as_bytes(),
                collection.as_bytes(),
                record_id.as_bytes(),
                &dek_version.to_be_bytes(),
            ],
        )
    }

    /// A subject's DEK wrapped by a KEK version.
    pub fn subject_key(subject: &str, dek_version: i64, kek_version: i64) -> Self {
        Self::build(
            "piivault/dek/v1",
            &[
                subject.as_bytes(),
                &dek_version.to_be_bytes(),
                &kek_version.to_be_bytes(),
            ],
        )
    }

    /// A system key (blind index, token hash) wrapped by a KEK version.
    pub fn system_key(name: &str, version: i64, kek_version: i64) -> Self {
        Self::build(
            "piivault/system-key/v1",
            &[
                name.as_bytes(),
                &version.to_be_bytes(),
                &kek_version.to_be_bytes(),
            ],
        )
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}
