//! The compliance audit pack (PIPL Art. 54; the Measures for Personal Information
//! Protection Compliance Audits): for a period, every report in `audit/` that takes no
//! parameter (accesses by purpose, sensitive reads, denied accesses, consents given and
//! withdrawn, requests and their timeliness, exports and erasures, retention sweeps,
//! provisions, token lifecycle), as CSV and JSON, the count of subjects transferred
//! abroad, and a manifest of every file's SHA-256 signed with the audit key.
//!
//! Reproducible: nothing in it depends on when it was made, rows come in the reports'
//! order, JSON keys are sorted, and Ed25519 signs deterministically, so the same period
//! over the same trail gives the same bytes (until `audit prune` removes events of it).

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{ReportError, Reports};
use crate::crypto::{AuditKey, AuditPublicKey};
use crate::store::{rfc3339, Store};

/// The manifest's file name, and its signature's.
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.sig";

/// One file of a pack.
#[derive(Debug, Clone)]
pub struct PackFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Makes the pack for `[from, to)` (milliseconds): its files, the manifest last, then
/// the signature.
pub async fn compliance_pack(
    store: &Store,
    reports: &Reports,
    key: &AuditKey,
    from: i64,
    to: i64,
) -> Result<Vec<PackFile>, ReportError> {
    let mut files = Vec::new();
    let none = std::collections::BTreeMap::new();
    for def in reports.list().filter(|d| d.parameters.is_empty()) {
        let result = reports.run(store, &def.name, from, to, &none).await?;
        files.push(PackFile {
            name: format!("{}.csv", def.name),
            bytes: result.to_csv().into_bytes(),
        });
        files.push(PackFile {
            name: format!("{}.json", def.name),
            bytes: pretty(&result.to_json()),
        });
    }
    let (sensitive, all) = store.subjects_transferred_abroad(from, to).await?;
    files.push(PackFile {
        name: "transfers_abroad.json".into(),
        bytes: pretty(&json!({
            "from": rfc3339(from),
            "to": rfc3339(to),
            "subjects": all,
            "subjects_sensitive": sensitive,
            "subjects_non_sensitive": all - sensitive,
        })),
    });
    let listed: Vec<Value> = files
        .iter()
        .map(|f| json!({ "name": f.name, "sha256": hex::encode(Sha256::digest(&f.bytes)) }))
        .collect();
    let manifest = pretty(&json!({
        "format": "piivault-audit-pack/1",
        "from": rfc3339(from),
        "to": rfc3339(to),
        "files": listed,
    }));
    let signature = format!(
        "ed25519 {} {}\n",
        key.public().key_id(),
        B64.encode(key.sign_pack(&manifest))
    );
    files.push(PackFile {
        name: MANIFEST.into(),
        bytes: manifest,
    });
    files.push(PackFile {
        name: SIGNATURE.into(),
        bytes: signature.into_bytes(),
    });
    Ok(files)
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Checks a pack in `dir`: the manifest's signature by one of `trusted`, and every
/// file's hash. Returns the key id that signed it, or what is wrong.
pub fn verify_pack(dir: &Path, trusted: &[AuditPublicKey]) -> Result<String, String> {
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let manifest = read(MANIFEST)?;
    let signature =
        String::from_utf8(read(SIGNATURE)?).map_err(|_| "manifest.sig is not text".to_owned())?;
    let mut parts = signature.split_whitespace();
    let (Some("ed25519"), Some(key_id), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("manifest.sig must read: ed25519 KEY_ID BASE64".into());
    };
    let key = trusted
        .iter()
        .find(|k| k.key_id() == key_id)
        .ok_or_else(|| format!("signed by key {key_id}, which is not trusted here"))?;
    let sig = B64
        .decode(sig)
        .map_err(|_| "the signature is not base64".to_owned())?;
    if !key.verify_pack(&manifest, &sig) {
        return Err("the manifest's signature does not verify: it was altered".into());
    }
    let manifest: Value =
        serde_json::from_slice(&manifest).map_err(|_| "manifest.json is not JSON".to_owned())?;
    let files = manifest["files"]
        .as_array()
        .ok_or_else(|| "manifest.json lists no files".to_owned())?;
    for f in files {
        let (Some(name), Some(want)) = (f["name"].as_str(), f["sha256"].as_str()) else {
            return Err("manifest.json has a malformed entry".into());
        };
        if name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(format!(
                "manifest.json names {name:?}, not a file of the pack"
            ));
        }
        let got = hex::encode(Sha256::digest(read(name)?));
        if got != want {
            return Err(format!(
                "{name} does not match its hash in the manifest: it was altered"
            ));
        }
    }
    Ok(key_id.to_owned())
}
