//! Entry points for the fuzz targets in `fuzz/`: each parser of untrusted input, fed
//! raw bytes. None may panic, hang or allocate without bound; the targets add their own
//! checks of what comes back. The committed corpus (`fuzz/corpus/TARGET`, where inputs
//! that once failed are kept too) is replayed by an ordinary test on every `cargo test`.
//! Nothing in the vault calls it. A panic here is how a target reports a finding.
#![allow(clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use serde_json::Value;

use crate::classify::Catalogue;
use crate::crypto::{Aad, DataKey, MasterKeyRing};

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| Catalogue::builtin().expect("the built-in classification loads"))
}

/// Every field type of the built-in classification (ID number, mobile, bank card,
/// e-mail, date, text, enum, tags) on the input as a JSON string and, if it is JSON, as
/// that value. A value that validates is canonical: parsing its canonical form gives it
/// again, and masking it never panics.
pub fn field_values(data: &[u8]) {
    let s = text(data);
    let mut inputs = vec![Value::String(s)];
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        inputs.push(v);
    }
    for f in catalogue().fields() {
        for input in &inputs {
            if let Ok(parsed) = f.kind.parse(&f.name, input) {
                let canonical = parsed.canonical().to_owned();
                let json = f.kind.to_json(&canonical);
                let again = f.kind.parse(&f.name, &json).unwrap_or_else(|e| {
                    panic!("{}: its own output {json} is refused: {e:?}", f.name)
                });
                assert_eq!(again.canonical(), canonical, "{}: not canonical", f.name);
                let _ = f.mask.apply(&canonical, &json);
            }
        }
    }
}

/// A classification file.
pub fn classification(data: &[u8]) {
    let _ = Catalogue::parse(&text(data));
}

/// Policy files: model, policy, purposes, recipients and PIPIA records, separated by
/// 0xFF bytes. The recipient registry is checked against the shipped policy when the
/// fuzzed one does not load.
pub fn policy(data: &[u8]) {
    let mut parts = data.splitn(5, |b| *b == 0xFF).map(text);
    let (model, policy, purposes, recipients, pipia) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    });
    match rt.block_on(crate::authz::PolicySet::from_texts(
        &model,
        &policy,
        &purposes,
        catalogue(),
    )) {
        Ok(set) => {
            let _ = set.with_registry(&recipients, &pipia, catalogue());
        }
        // The registry alone, against the shipped purposes (cheap: no casbin model is
        // built for every input).
        Err(_) => {
            let _ = crate::pipl::Recipients::parse(
                &recipients,
                &pipia,
                shipped_purposes(),
                catalogue(),
            );
        }
    }
}

/// The purposes shipped in `policies/purposes.toml`, parsed once.
fn shipped_purposes() -> &'static std::collections::BTreeMap<String, crate::authz::PurposeSpec> {
    static PURPOSES: OnceLock<std::collections::BTreeMap<String, crate::authz::PurposeSpec>> =
        OnceLock::new();
    PURPOSES.get_or_init(|| {
        crate::authz::parse_purposes(include_str!("../policies/purposes.toml")).unwrap_or_default()
    })
}

/// Master-key text (a key file or `PIIVAULT_MASTER_KEY`).
pub fn master_key_text(data: &[u8]) {
    let _ = MasterKeyRing::parse(&text(data));
}

/// Audit signing and public key text.
pub fn audit_key_text(data: &[u8]) {
    let t = text(data);
    let _ = crate::crypto::AuditKey::parse(&t);
    let _ = crate::crypto::AuditPublicKey::parse(&t);
}

/// Stored bytes read back: a sealed value and a wrapped data key, under fixed keys.
/// Nothing but a sealed value made with the right key and associated data opens.
pub fn stored_ciphertext(data: &[u8]) {
    static RING: OnceLock<MasterKeyRing> = OnceLock::new();
    let ring = RING.get_or_init(|| {
        MasterKeyRing::parse("v1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").expect("key")
    });
    let key = DataKey::from_bytes(&[7u8; 32]).expect("key");
    assert!(
        key.open(&Aad::field("sub_fuzz", "name", 1), data).is_err(),
        "forged ciphertext opened"
    );
    assert!(
        ring.unwrap_subject_key("sub_fuzz", 1, 1, data).is_err(),
        "forged wrapped key opened"
    );
}

/// A presented bearer token: only well-formed secrets go on to the store.
pub fn token(data: &[u8]) {
    let _ = crate::authz::well_formed_secret(&text(data));
}

/// Every JSON request body the API takes.
pub fn json_bodies(data: &[u8]) {
    use crate::pipeline::{consents, dsr, subjects, tokens};
    let _ = serde_json::from_slice::<subjects::FieldsInput>(data);
    let _ = serde_json::from_slice::<subjects::LookupInput>(data);
    let _ = serde_json::from_slice::<tokens::IssueInput>(data);
    let _ = serde_json::from_slice::<dsr::CreateRequest>(data);
    let _ = serde_json::from_slice::<dsr::UpdateRequest>(data);
    let _ = serde_json::from_slice::<dsr::HoldRequest>(data);
    let _ = serde_json::from_slice::<consents::WithdrawRequest>(data);
    let _ = serde_json::from_slice::<Value>(data);
}

/// Query strings, as the HTTP layer extracts them.
pub fn query(data: &[u8]) {
    use axum::extract::Query;
    let Ok(uri) = format!("/v1/x?{}", text(data)).parse::<axum::http::Uri>() else {
        return;
    };
    let _ = Query::<crate::pipeline::subjects::ReadInput>::try_from_uri(&uri);
    let _ = Query::<crate::pipeline::dsr::ListQuery>::try_from_uri(&uri);
    let _ = Query::<std::collections::HashMap<String, String>>::try_from_uri(&uri);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    /// Every input in the committed corpus, through its target, on the stable toolchain.
    #[test]
    fn the_committed_corpus_replays_cleanly() {
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 9] = [
            ("field_values", super::field_values),
            ("classification", super::classification),
            ("policy", super::policy),
            ("master_key_text", super::master_key_text),
            ("audit_key_text", super::audit_key_text),
            ("stored_ciphertext", super::stored_ciphertext),
            ("token", super::token),
            ("json_bodies", super::json_bodies),
            ("query", super::query),
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut replayed = 0;
        for (name, run) in targets {
            let Ok(dir) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for entry in dir {
                let path = entry.unwrap().path();
                run(&std::fs::read(&path).unwrap());
                replayed += 1;
            }
        }
        assert!(replayed >= 15, "the corpus is missing ({replayed} inputs)");
    }
}
