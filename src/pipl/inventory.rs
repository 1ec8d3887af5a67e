//! The record of processing activities (PIPL Art. 54–56; GB/T 35273 §11): for each
//! declared purpose, its legal basis, which categories and fields it uses (from the
//! policy), how long each is kept (from the classification), to which recipients they
//! may go and whether abroad (from the registry), and the impact assessment behind it.
//! Built from the policy files alone, so the CLI (`piivault inventory`) and the
//! auditor's endpoint (`GET /v1/inventory`) answer the same.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Pipia, Recipient};
use crate::authz::{LegalBasis, PolicySet};
use crate::classify::Catalogue;

/// The whole record.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessingRecord {
    /// The policy digest it was made from.
    pub policy: String,
    pub purposes: Vec<PurposeRecord>,
}

/// One purpose.
#[derive(Debug, Clone, Serialize)]
pub struct PurposeRecord {
    pub purpose: String,
    pub description: String,
    pub legal_basis: LegalBasis,
    pub automated_decision: bool,
    pub refusable: bool,
    /// The impact assessment behind it, with its record.
    pub pipia: Option<PipiaRecord>,
    /// The categories it uses, each with its fields and collections.
    pub categories: Vec<CategoryUse>,
    /// The recipients registered for it.
    pub recipients: Vec<RecipientUse>,
    /// Regions outside the mainland its data may go to.
    pub abroad: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipiaRecord {
    pub id: String,
    #[serde(flatten)]
    pub record: Pipia,
}

#[derive(Debug, Clone, Serialize)]
pub struct CategoryUse {
    pub category: String,
    /// Whether any of it is sensitive personal information (Art. 28).
    pub sensitive: bool,
    pub items: Vec<ItemUse>,
}

/// A field or collection a purpose uses.
#[derive(Debug, Clone, Serialize)]
pub struct ItemUse {
    pub name: String,
    /// `field` or `collection`.
    pub kind: &'static str,
    pub sensitive: bool,
    pub derived: bool,
    pub retention_days: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecipientUse {
    pub id: String,
    #[serde(flatten)]
    pub recipient: Recipient,
}

/// The record of processing for the policy in force.
pub fn processing_record(policy: &PolicySet, catalogue: &Catalogue) -> ProcessingRecord {
    let registry = policy.recipients();
    let purposes = policy
        .purposes()
        .iter()
        .map(|(name, spec)| {
            let used = policy.objects_used_for(name);
            let mut categories: BTreeMap<String, Vec<ItemUse>> = BTreeMap::new();
            for f in catalogue.fields().filter(|f| used.contains(&f.name)) {
                categories
                    .entry(f.category.as_str().to_owned())
                    .or_default()
                    .push(ItemUse {
                        name: f.name.clone(),
                        kind: "field",
                        sensitive: f.sensitive,
                        derived: f.derived,
                        retention_days: f.retention.days,
                    });
            }
            for c in catalogue.collections().filter(|c| used.contains(&c.name)) {
                categories
                    .entry(c.category.as_str().to_owned())
                    .or_default()
                    .push(ItemUse {
                        name: c.name.clone(),
                        kind: "collection",
                        sensitive: c.sensitive,
                        derived: false,
                        retention_days: c.retention.days,
                    });
            }
            let recipients: Vec<RecipientUse> = registry
                .recipients
                .iter()
                .filter(|(_, r)| r.purposes.contains(name))
                .map(|(id, r)| RecipientUse {
                    id: id.clone(),
                    recipient: r.clone(),
                })
                .collect();
            let mut abroad: Vec<String> = recipients
                .iter()
                .filter(|r| r.recipient.abroad())
                .map(|r| r.recipient.region.clone())
                .collect();
            abroad.sort();
            abroad.dedup();
            PurposeRecord {
                purpose: name.clone(),
                description: spec.description.clone(),
                legal_basis: spec.legal_basis,
                automated_decision: spec.automated_decision,
                refusable: spec.refusable,
                pipia: spec.pipia.as_ref().and_then(|id| {
                    registry.pipia.get(id).map(|p| PipiaRecord {
                        id: id.clone(),
                        record: p.clone(),
                    })
                }),
                categories: categories
                    .into_iter()
                    .map(|(category, items)| CategoryUse {
                        sensitive: items.iter().any(|i| i.sensitive),
                        category,
                        items,
                    })
                    .collect(),
                recipients,
                abroad,
            }
        })
        .collect();
    ProcessingRecord {
        policy: policy.digest().to_owned(),
        purposes,
    }
}

/// A value's name as serialised (`entrusted`, `standard_contract`, `legal_obligation`).
fn serde_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl ProcessingRecord {
    /// The record as text for a person: one block per purpose.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!("Record of processing activities (policy {})\n", self.policy);
        for p in &self.purposes {
            let _ = writeln!(out, "\n{} — {}", p.purpose, p.description);
            let _ = writeln!(out, "  legal basis: {}", serde_name(&p.legal_basis));
            if p.automated_decision {
                let _ = writeln!(out, "  decides by automated evaluation (Art. 24)");
            }
            if p.refusable {
                let _ = writeln!(out, "  the subject may refuse it (opt_out:{})", p.purpose);
            }
            match &p.pipia {
                Some(r) => {
                    let _ = writeln!(
                        out,
                        "  PIPIA: {} ({}, {}): {}",
                        r.id, r.record.date, r.record.reviewer, r.record.conclusion
                    );
                }
                None => {
                    let _ = writeln!(out, "  PIPIA: none");
                }
            }
            if p.categories.is_empty() {
                let _ = writeln!(out, "  uses no personal information");
            }
            for c in &p.categories {
                let items: Vec<String> = c
                    .items
                    .iter()
                    .map(|i| {
                        let mut flags = Vec::new();
                        if i.sensitive {
                            flags.push("sensitive");
                        }
                        if i.derived {
                            flags.push("derived");
                        }
                        let flags = if flags.is_empty() {
                            String::new()
                        } else {
                            format!(", {}", flags.join(", "))
                        };
                        format!("{} ({} days{flags})", i.name, i.retention_days)
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "  {}{}: {}",
                    c.category,
                    if c.sensitive { " [sensitive]" } else { "" },
                    items.join("; ")
                );
            }
            for r in &p.recipients {
                let what: Vec<&str> = r
                    .recipient
                    .fields
                    .iter()
                    .chain(&r.recipient.collections)
                    .map(String::as_str)
                    .collect();
                let _ = writeln!(
                    out,
                    "  provided to {} ({}, {}, {}{}): {}",
                    r.recipient.name,
                    r.id,
                    serde_name(&r.recipient.kind),
                    r.recipient.region,
                    match (
                        &r.recipient.transfer_mechanism,
                        &r.recipient.transfer_reference
                    ) {
                        (Some(m), Some(reference)) => {
                            format!(", abroad under {} {reference}", serde_name(m))
                        }
                        _ => String::new(),
                    },
                    what.join(", ")
                );
            }
        }
        out
    }
}
