use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::mask::Mask;
use super::types::FieldType;
use super::ValidationError;

/// The shipped classification, used when no policy directory is present.
pub const BUILTIN_CLASSIFICATION: &str = include_str!("../../policies/classification.toml");

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("classification is not valid TOML: {0}")]
    Toml(String),
    #[error("classification: {0}")]
    Invalid(String),
}

/// PIPL-oriented category of a field or collection; policies grant by category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Identity,
    Contact,
    Payment,
    Profile,
    Service,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Contact => "contact",
            Self::Payment => "payment",
            Self::Profile => "profile",
            Self::Service => "service",
        }
    }
}

/// How long data may be kept, in days, e.g. `"3y"`, `"180d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub days: u32,
}

impl Retention {
    fn parse(text: &str) -> Option<Self> {
        // By suffix, not by byte position: a last character of several bytes ("5年")
        // is an error to report, not a panic (found by the `classification` fuzz target).
        let text = text.trim();
        let (num, per) = if let Some(num) = text.strip_suffix('d') {
            (num, 1)
        } else if let Some(num) = text.strip_suffix('y') {
            (num, 365)
        } else {
            return None;
        };
        let n: u32 = num.parse().ok().filter(|n| *n > 0)?;
        Some(Self {
            days: n.checked_mul(per)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    fields: BTreeMap<String, RawField>,
    #[serde(default)]
    collections: BTreeMap<String, RawCollection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(rename = "type")]
    kind: String,
    max_chars: Option<usize>,
    max_items: Option<usize>,
    values: Option<Vec<String>>,
    #[serde(default)]
    not_future: bool,
    category: Category,
    #[serde(default)]
    sensitive: bool,
    #[serde(default)]
    derived: bool,
    #[serde(default)]
    searchable: bool,
    mask: Mask,
    retention: String,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollection {
    category: Category,
    #[serde(default)]
    sensitive: bool,
    max_bytes: usize,
    retention: String,
    #[serde(default)]
    description: String,
}

/// One declared field.
#[derive(Debug, Clone)]
pub struct FieldSpec {
    pub name: String,
    pub kind: FieldType,
    pub category: Category,
    /// Sensitive PI under PIPL Art. 28.
    pub sensitive: bool,
    /// Has a blind index, so `lookup` can find subjects by it.
    pub searchable: bool,
    /// Made by automated evaluation of the subject (a tier, a churn-risk tag), not given
    /// by them (PIPL Art. 24): the export and explanations say so.
    pub derived: bool,
    pub mask: Mask,
    pub retention: Retention,
    pub description: String,
}

/// One declared record collection; each document is a JSON object.
#[derive(Debug, Clone)]
pub struct CollectionSpec {
    pub name: String,
    pub category: Category,
    pub sensitive: bool,
    pub max_bytes: usize,
    pub retention: Retention,
    pub description: String,
}

/// Every field and collection the vault accepts. Unknown names are rejected.
#[derive(Debug, Clone)]
pub struct Catalogue {
    fields: BTreeMap<String, FieldSpec>,
    collections: BTreeMap<String, CollectionSpec>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Catalogue {
    pub fn load(path: &Path) -> Result<Self, CatalogueError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn builtin() -> Result<Self, CatalogueError> {
        Self::parse(BUILTIN_CLASSIFICATION)
    }

    pub fn parse(text: &str) -> Result<Self, CatalogueError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| CatalogueError::Toml(e.to_string()))?;
        let retention = |owner: &str, text: &str| {
            Retention::parse(text).ok_or_else(|| {
                CatalogueError::Invalid(format!(
                    "{owner}: retention must be a number followed by d or y, e.g. \"3y\""
                ))
            })
        };
        let mut fields = BTreeMap::new();
        for (name, f) in raw.fields {
            if !valid_name(&name) {
                return Err(CatalogueError::Invalid(format!(
                    "field name {name:?} must be lower_snake_case"
                )));
            }
            let kind = FieldType::build(&f.kind, f.max_chars, f.max_items, f.values, f.not_future)
                .map_err(|e| CatalogueError::Invalid(format!("field {name}: {e}")))?;
            if f.searchable && !kind.indexable() {
                return Err(CatalogueError::Invalid(format!(
                    "field {name}: type {} cannot be searchable",
                    kind.name()
                )));
            }
            let spec = FieldSpec {
                retention: retention(&name, &f.retention)?,
                name: name.clone(),
                kind,
                category: f.category,
                sensitive: f.sensitive,
                searchable: f.searchable,
                derived: f.derived,
                mask: f.mask,
                description: f.description,
            };
            fields.insert(name, spec);
        }
        let mut collections = BTreeMap::new();
        for (name, c) in raw.collections {
            if !valid_name(&name) {
                return Err(CatalogueError::Invalid(format!(
                    "collection name {name:?} must be lower_snake_case"
                )));
            }
            if fields.contains_key(&name) {
                return Err(CatalogueError::Invalid(format!(
                    "{name} is declared both as a field and as a collection"
                )));
            }
            if c.max_bytes == 0 || c.max_bytes > 1024 * 1024 {
                return Err(CatalogueError::Invalid(format!(
                    "collection {name}: max_bytes must be between 1 and 1048576"
                )));
            }
            let spec = CollectionSpec {
                retention: retention(&name, &c.retention)?,
                name: name.clone(),
                category: c.category,
                sensitive: c.sensitive,
                max_bytes: c.max_bytes,
                description: c.description,
            };
            collections.insert(name, spec);
        }
        if fields.is_empty() {
            return Err(CatalogueError::Invalid("no fields are declared".into()));
        }
        Ok(Self {
            fields,
            collections,
        })
    }

    pub fn field(&self, name: &str) -> Result<&FieldSpec, ValidationError> {
        self.fields.get(name).ok_or_else(|| {
            ValidationError::new(
                name,
                "unknown_field",
                "this field is not in the classification",
            )
        })
    }

    pub fn collection(&self, name: &str) -> Option<&CollectionSpec> {
        self.collections.get(name)
    }

    /// The names of the fields that have a blind index.
    pub fn searchable_fields(&self) -> std::collections::BTreeSet<String> {
        self.fields()
            .filter(|f| f.searchable)
            .map(|f| f.name.clone())
            .collect()
    }

    pub fn fields(&self) -> impl Iterator<Item = &FieldSpec> {
        self.fields.values()
    }

    pub fn collections(&self) -> impl Iterator<Item = &CollectionSpec> {
        self.collections.values()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Regression: a retention ending in a character of several bytes panicked (the
    /// `classification` fuzz target found it; its input is kept in the corpus).
    #[test]
    fn retention_periods_parse_or_are_refused() {
        assert_eq!(Retention::parse("180d"), Some(Retention { days: 180 }));
        assert_eq!(Retention::parse(" 3y "), Some(Retention { days: 1095 }));
        for bad in [
            "5年",
            "0\u{fffd}",
            "0d",
            "",
            "y",
            "d",
            "-1y",
            "99999999999y",
            "5 y",
        ] {
            assert_eq!(Retention::parse(bad), None, "{bad:?}");
        }
        let text = "[fields.name]\ntype = \"text\"\nmax_chars = 10\ncategory = \"identity\"\nmask = \"none\"\nretention = \"5年\"\ndescription = \"x\"\n";
        assert!(Catalogue::parse(text).is_err());
    }

    #[test]
    fn shipped_classification_loads() {
        let cat = Catalogue::builtin().unwrap();
        for f in [
            "name",
            "id_number",
            "phone",
            "email",
            "address",
            "birth_date",
            "bank_card",
            "tags",
            "tier",
        ] {
            assert!(cat.field(f).is_ok(), "{f} missing");
        }
        for c in ["payments", "service_tickets", "feedback"] {
            assert!(cat.collection(c).is_some(), "{c} missing");
        }
        assert!(cat.field("id_number").unwrap().sensitive);
        assert!(cat.field("id_number").unwrap().searchable);
        assert!(cat.field("phone").unwrap().searchable);
        assert_eq!(cat.field("nickname").unwrap_err().rule, "unknown_field");
    }

    #[test]
    fn broken_classification_is_refused() {
        assert!(Catalogue::parse("[fields.x]\ntype = \"text\"").is_err());
        let bad_retention = r#"[fields.x]
type = "text"
max_chars = 10
category = "profile"
mask = "redact"
retention = "forever""#;
        assert!(matches!(
            Catalogue::parse(bad_retention),
            Err(CatalogueError::Invalid(_))
        ));
        let bad_search = r#"[fields.x]
type = "tags"
max_items = 3
max_chars = 10
category = "profile"
searchable = true
mask = "redact"
retention = "1y""#;
        assert!(Catalogue::parse(bad_search).is_err());
    }
}
