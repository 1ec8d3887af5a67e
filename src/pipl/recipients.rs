//! Recipients of personal information (PIPL Art. 21, 23, 25, 38–39) and the personal
//! information protection impact assessments (PIPIA, Art. 55–56) that back them.
//!
//! The registry is part of the policy: `policies/recipients.toml` and
//! `policies/pipia.toml`, reviewed like the rest, loaded and reloaded with it (the
//! policy digest covers them), and refused whole, with the reason, if any entry is not
//! sound. A provision to a recipient is allowed only for the purposes, fields and
//! collections it is registered for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::authz::PurposeSpec;
use crate::classify::Catalogue;

/// The mainland, where a recipient's processing is not a transfer abroad (Hong Kong,
/// Macao and Taiwan count as outside it for PIPL Chapter III).
pub const MAINLAND: &str = "CN";

/// What a recipient is to the vault's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientKind {
    /// Processes on the operator's behalf under a contract (Art. 21).
    Entrusted,
    /// Decides its own purposes (Art. 23): needs the subject's separate consent.
    Independent,
}

/// How a transfer abroad is made lawful (Art. 38).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferMechanism {
    StandardContract,
    Certification,
    SecurityAssessment,
}

/// One registered recipient.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    /// Its legal name.
    pub name: String,
    pub kind: RecipientKind,
    /// Where it processes: `CN` (the mainland) or another ISO 3166 code (abroad).
    pub region: String,
    /// The purposes it may receive personal information for.
    pub purposes: Vec<String>,
    /// The fields it may receive.
    #[serde(default)]
    pub fields: Vec<String>,
    /// The record collections it may receive.
    #[serde(default)]
    pub collections: Vec<String>,
    /// The contract (data processing agreement, sharing agreement) reference.
    pub contract: String,
    /// The PIPIA that assessed this provision (required for an entrusted processor and
    /// for a recipient abroad).
    pub pipia: Option<String>,
    /// Abroad only: how the transfer is made lawful, and its reference (filing number,
    /// certificate, assessment approval).
    pub transfer_mechanism: Option<TransferMechanism>,
    pub transfer_reference: Option<String>,
}

impl Recipient {
    /// Whether its processing is a transfer abroad.
    pub fn abroad(&self) -> bool {
        self.region != MAINLAND
    }

    /// Whether a provision to it needs the subject's separate consent to this recipient
    /// (Art. 23 for an independent recipient, Art. 39 for one abroad).
    pub fn needs_separate_consent(&self) -> bool {
        self.kind == RecipientKind::Independent || self.abroad()
    }
}

/// A PIPIA record (Art. 55–56): kept at least three years.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pipia {
    /// When it was concluded, `YYYY-MM-DD`.
    pub date: String,
    pub conclusion: String,
    pub reviewer: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipientsFile {
    #[serde(default)]
    recipients: BTreeMap<String, Recipient>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipiaFile {
    #[serde(default)]
    pipia: BTreeMap<String, Pipia>,
}

/// The registry: recipients by id, and the PIPIA records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recipients {
    pub recipients: BTreeMap<String, Recipient>,
    pub pipia: BTreeMap<String, Pipia>,
}

/// The consent purpose under which a subject consents, separately, to provision to
/// `recipient`.
pub fn consent_purpose(recipient: &str) -> String {
    format!("recipient:{recipient}")
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn valid_date(s: &str) -> bool {
    time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).is_ok()
}

impl Recipients {
    /// Parses and checks `recipients.toml` and `pipia.toml` against the purposes and the
    /// classification. The first problem found is the error.
    pub fn parse(
        recipients_text: &str,
        pipia_text: &str,
        purposes: &BTreeMap<String, PurposeSpec>,
        catalogue: &Catalogue,
    ) -> Result<Self, String> {
        let recipients = toml::from_str::<RecipientsFile>(recipients_text)
            .map_err(|e| format!("recipients.toml: {e}"))?
            .recipients;
        let pipia = toml::from_str::<PipiaFile>(pipia_text)
            .map_err(|e| format!("pipia.toml: {e}"))?
            .pipia;
        for (id, p) in &pipia {
            if !valid_date(&p.date) {
                return Err(format!(
                    "pipia.toml: {id:?}: date must be YYYY-MM-DD, not {:?}",
                    p.date
                ));
            }
            if p.conclusion.trim().is_empty() || p.reviewer.trim().is_empty() {
                return Err(format!(
                    "pipia.toml: {id:?}: conclusion and reviewer must not be empty"
                ));
            }
        }
        for (id, r) in &recipients {
            let bad = |what: String| Err(format!("recipients.toml: recipient {id:?}: {what}"));
            if !valid_id(id) {
                return bad("the id must be lower_snake_case".into());
            }
            if r.name.trim().is_empty() || r.contract.trim().is_empty() {
                return bad("name and contract must not be empty".into());
            }
            let region_ok = r.region.len() == 2 && r.region.chars().all(|c| c.is_ascii_uppercase());
            if !region_ok {
                return bad(format!(
                    "region must be an ISO 3166 code in capitals (CN for the mainland), not {:?}",
                    r.region
                ));
            }
            if r.purposes.is_empty() {
                return bad("it must be registered for at least one purpose".into());
            }
            for p in &r.purposes {
                if !purposes.contains_key(p) {
                    return bad(format!("purpose {p:?} is not declared in purposes.toml"));
                }
            }
            if r.fields.is_empty() && r.collections.is_empty() {
                return bad("it must be registered for at least one field or collection".into());
            }
            for f in &r.fields {
                if catalogue.field(f).is_err() {
                    return bad(format!("field {f:?} is not in classification.toml"));
                }
            }
            for c in &r.collections {
                if catalogue.collection(c).is_none() {
                    return bad(format!("collection {c:?} is not in classification.toml"));
                }
            }
            // Art. 55: providing to an entrusted processor or abroad needs a PIPIA first.
            let needs_pipia = r.kind == RecipientKind::Entrusted || r.abroad();
            match &r.pipia {
                Some(p) if !pipia.contains_key(p) => {
                    return bad(format!("PIPIA {p:?} is not recorded in pipia.toml"))
                }
                None if needs_pipia => {
                    return bad(format!(
                        "{} needs a PIPIA (PIPL Art. 55): record one in pipia.toml and name it with pipia = \"...\"",
                        if r.abroad() {
                            "a recipient abroad"
                        } else {
                            "an entrusted processor"
                        }
                    ))
                }
                _ => {}
            }
            if r.abroad() {
                let reference = r
                    .transfer_reference
                    .as_deref()
                    .is_some_and(|s| !s.trim().is_empty());
                if r.transfer_mechanism.is_none() || !reference {
                    return bad(
                        "a recipient abroad needs transfer_mechanism (standard_contract, certification or security_assessment) and transfer_reference (PIPL Art. 38)".into(),
                    );
                }
            } else if r.transfer_mechanism.is_some() || r.transfer_reference.is_some() {
                return bad("transfer_mechanism applies only to a recipient abroad".into());
            }
        }
        Ok(Self { recipients, pipia })
    }

    pub fn get(&self, id: &str) -> Option<&Recipient> {
        self.recipients.get(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn purposes() -> BTreeMap<String, PurposeSpec> {
        crate::authz::parse_purposes(include_str!("../../policies/purposes.toml")).unwrap()
    }

    fn parse(recipients: &str, pipia: &str) -> Result<Recipients, String> {
        Recipients::parse(
            recipients,
            pipia,
            &purposes(),
            &Catalogue::builtin().unwrap(),
        )
    }

    const PIPIA: &str = "[pipia.pia_1]\ndate = \"2026-06-30\"\nconclusion = \"risks acceptable with the DPA's controls\"\nreviewer = \"DPO Wang\"\n";

    #[test]
    fn the_shipped_registry_loads() {
        let r = parse(
            include_str!("../../policies/recipients.toml"),
            include_str!("../../policies/pipia.toml"),
        )
        .unwrap();
        assert!(!r.recipients.is_empty());
        assert!(r.recipients.values().any(Recipient::abroad));
    }

    #[test]
    fn unsound_entries_are_refused_with_the_reason() {
        let ok = "[recipients.courier]\nname = \"Courier Ltd\"\nkind = \"entrusted\"\nregion = \"CN\"\npurposes = [\"service\"]\nfields = [\"name\", \"phone\"]\ncontract = \"DPA-1\"\npipia = \"pia_1\"\n";
        assert!(parse(ok, PIPIA).is_ok());
        let cases = [
            (ok.replace("pipia = \"pia_1\"\n", ""), "needs a PIPIA"),
            (
                ok.replace("pia_1\"\n", "pia_9\"\n"),
                "not recorded in pipia.toml",
            ),
            (ok.replace("\"service\"", "\"spying\""), "not declared"),
            (
                ok.replace("\"phone\"", "\"shoe_size\""),
                "not in classification",
            ),
            (
                ok.replace("region = \"CN\"", "region = \"mainland\""),
                "ISO 3166",
            ),
            (
                ok.replace("region = \"CN\"", "region = \"SG\""),
                "transfer_mechanism",
            ),
            (
                ok.replace("kind = \"entrusted\"", "kind = \"friend\""),
                "kind",
            ),
            (
                ok.replace("[recipients.courier]", "[recipients.Courier]"),
                "lower_snake_case",
            ),
        ];
        for (text, says) in cases {
            let e = parse(&text, PIPIA).unwrap_err();
            assert!(e.contains(says), "{e} should say {says}");
        }
        let bad_date = PIPIA.replace("2026-06-30", "30/06/2026");
        assert!(parse(ok, &bad_date).unwrap_err().contains("YYYY-MM-DD"));
        // Abroad with its mechanism: sound, and it needs separate consent.
        let abroad = ok.replace("region = \"CN\"", "region = \"SG\"")
            + "transfer_mechanism = \"standard_contract\"\ntransfer_reference = \"SC-2026-1\"\n";
        let r = parse(&abroad, PIPIA).unwrap();
        assert!(r.get("courier").unwrap().needs_separate_consent());
        assert!(!parse(ok, PIPIA)
            .unwrap()
            .get("courier")
            .unwrap()
            .needs_separate_consent());
    }
}
