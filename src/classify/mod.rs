//! The field catalogue: what the vault accepts, how each value is validated,
//! normalised and masked. Loaded from `policies/classification.toml`.

mod catalogue;
mod mask;
mod types;

pub use catalogue::{Catalogue, CatalogueError, Category, CollectionSpec, FieldSpec, Retention};
pub use mask::Mask;
pub use types::{FieldType, FieldValue};

/// Why an input value was refused. Names the field and the rule; never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    /// A stable machine code for the rule that was broken, e.g. `id_number_checksum`.
    pub rule: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &str, rule: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            rule,
            message: message.into(),
        }
    }
}
