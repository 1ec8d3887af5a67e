//! Re-encryption (`piivault keys rotate --data`): every subject gets a new data key
//! (for the suite configured now: a store moves between AES-256-GCM and SM4-GCM so),
//! every field value and record is sealed again under it, and the old keys are
//! deleted. A master-key rotation only wraps the same data keys again; this replaces
//! them, so values stop depending on keys that existed before it started.
//!
//! Subjects are walked in id order, in batches. Each batch is one transaction that
//! locks its subjects, reads them, seals them again and writes them back, with its
//! audit event and the walk's position (so an interrupted run resumes after the last
//! batch that landed). A write to one of those subjects waits for the batch, or, if it
//! sealed its values under a key the batch replaced, is made again with the new key.
//! The server keeps serving throughout; readers on other nodes forget what they cached
//! through the change feed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::audit::{Audit, Event};
use crate::crypto::{Aad, DataCipher, DataKey, Keys, MasterKeyRing, SystemKeys};
use crate::store::{
    IndexEntry, Resealed, SealedItem, SealedSubject, Store, SubjectKeyRow, WriteOp,
};

use super::{KeyWatch, Pace, Progress, RotateError};

/// The last subject id an unfinished re-encryption has done ("" before the first), in
/// `vault_meta`.
pub(crate) const CURSOR: &str = "data_rotation_cursor";
/// When the unfinished re-encryption started (ms); data keys made before then are
/// being retired.
pub(crate) const SINCE: &str = "data_rotation_since";
/// When the last finished re-encryption started (ms): every data key made before then
/// was retired by it.
pub(crate) const RETIRED_BEFORE: &str = "data_keys_retired_before";

/// What a re-encryption did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReencryptReport {
    /// Whether it continued a re-encryption an interruption had cut short.
    pub resumed: bool,
    /// Subjects given a new data key by this run.
    pub subjects: u64,
    /// Field values and records sealed again by this run.
    pub items: u64,
    /// Subjects left as they were: a key or a ciphertext of theirs could not be opened
    /// (logged by subject id). The re-encryption is not finished while any remain.
    pub failed: u64,
}

/// Seals one subject again under a new data key: `None` (and the reason logged) if one
/// of its keys or ciphertexts cannot be opened.
fn reseal(
    cipher: DataCipher,
    ring: &MasterKeyRing,
    system: &SystemKeys,
    searchable: &BTreeSet<String>,
    s: &SealedSubject,
) -> Option<Resealed> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(subject = %s.id, what, error = %e, "a subject cannot be re-encrypted");
    };
    let mut old: BTreeMap<i64, DataKey> = BTreeMap::new();
    for k in &s.keys {
        match ring.unwrap_subject_key(&s.id, k.version, k.kek_version, &k.wrapped) {
            Ok(key) => {
                old.insert(k.version, key);
            }
            Err(e) => {
                fail("data key", &e);
                return None;
            }
        }
    }
    let key = DataKey::generate_for(cipher);
    let (kek_version, wrapped) = match ring.wrap_subject_key(&s.id, s.new_version, &key) {
        Ok(w) => w,
        Err(e) => {
            fail("data key", &e);
            return None;
        }
    };
    let mut sealed = Vec::with_capacity(s.items.len());
    let mut index = Vec::new();
    for item in &s.items {
        let (version, was, now, bytes) = match item {
            SealedItem::Field {
                name,
                dek_version,
                sealed,
            } => (
                *dek_version,
                Aad::field(&s.id, name, *dek_version),
                Aad::field(&s.id, name, s.new_version),
                sealed,
            ),
            SealedItem::Record {
                id,
                collection,
                dek_version,
                sealed,
            } => (
                *dek_version,
                Aad::record(&s.id, collection, id, *dek_version),
                Aad::record(&s.id, collection, id, s.new_version),
                sealed,
            ),
        };
        let plain = match old.get(&version) {
            Some(k) => k.open(&was, bytes),
            None => Err(crate::crypto::CryptoError::Decrypt),
        };
        let plain = match plain {
            Ok(plain) => plain,
            Err(e) => {
                fail("ciphertext", &e);
                return None;
            }
        };
        if let SealedItem::Field { name, .. } = item {
            if searchable.contains(name) {
                // The sealed bytes are the value's canonical form, which is what the
                // blind index is made of.
                let Ok(canonical) = std::str::from_utf8(&plain) else {
                    fail("ciphertext", &"not UTF-8");
                    return None;
                };
                let (key_version, digest) = system.blind_index(name, canonical);
                index.push(IndexEntry {
                    field: name.clone(),
                    digest,
                    key_version,
                });
            }
        }
        sealed.push(key.seal(&now, &plain));
    }
    Some(Resealed {
        key: SubjectKeyRow {
            version: s.new_version,
            kek_version,
            wrapped,
            encryptions: s.items.len() as i64,
        },
        sealed,
        index,
    })
}

/// Re-encrypts every subject: see the module's documentation. Each subject's blind
/// index is made again too, of its `searchable` fields, under the newest blind-index
/// key. `event` makes an audit event for an action (who does it, under which request
/// id).
#[allow(clippy::too_many_arguments)]
pub async fn reencrypt_data(
    store: &Store,
    audit: &Audit,
    keys: &Keys,
    watch: &KeyWatch,
    searchable: &BTreeSet<String>,
    pace: Pace,
    event: &(dyn Fn(&str) -> Event + Sync),
    progress: &(dyn Progress + Sync),
) -> Result<ReencryptReport, RotateError> {
    let batch = pace.batch.max(1);
    let mut report = ReencryptReport::default();
    // Every master-key version that wraps a data key must be loaded here.
    watch.reload(keys, store).await?;
    let mut cursor = match store.get_meta(CURSOR).await? {
        Some(cursor) => {
            report.resumed = true;
            cursor
        }
        None => {
            let since = crate::store::now_ms();
            audit
                .record_with(
                    vec![event("key.rotate")
                        .target("data")
                        .outcome(crate::audit::Decision::Allow, "started")],
                    WriteOp::chain(vec![
                        store.set_meta_op(CURSOR, Some(String::new())),
                        store.set_meta_op(SINCE, Some(since.to_string())),
                    ]),
                )
                .await?;
            String::new()
        }
    };
    let (total, before) = store.count_active_subjects(&cursor).await?;
    let (total, mut done) = (total.max(0) as u64, before.max(0) as u64);
    progress.set(done, total.max(done));
    let started = tokio::time::Instant::now();
    loop {
        let ids = store.active_subjects_after(&cursor, batch as i64).await?;
        let Some(last) = ids.last().cloned() else {
            break;
        };
        let (n, k, f) = reencrypt_batch(
            store,
            audit,
            keys,
            searchable,
            ids.clone(),
            Some(last.clone()),
            event,
        )
        .await?;
        report.subjects += n;
        report.items += k;
        report.failed += f;
        done += ids.len() as u64;
        progress.set(done, total.max(done));
        cursor = last;
        pace.keep(started, report.subjects).await;
    }
    if report.failed == 0 {
        let since = store.get_meta(SINCE).await?;
        audit
            .record_with(
                vec![event("key.rotate")
                    .target("data")
                    .outcome(crate::audit::Decision::Allow, "finished")],
                WriteOp::chain(vec![
                    store.set_meta_op(CURSOR, None),
                    store.set_meta_op(SINCE, None),
                    store.set_meta_op(RETIRED_BEFORE, since),
                ]),
            )
            .await?;
    } else {
        // Start again from the first subject next time: the failed ones lie behind.
        audit
            .record_with(
                vec![event("key.rotate").target("data").outcome(
                    crate::audit::Decision::Deny,
                    &format!("{} subjects could not be re-encrypted", report.failed),
                )],
                store.set_meta_op(CURSOR, Some(String::new())),
            )
            .await?;
    }
    Ok(report)
}

/// Re-encrypts (and indexes again) subjects `ids` in one transaction with its audit
/// event, moving the walk's position to `cursor` if given. Returns the subjects done,
/// the items sealed again, and the subjects that could not be.
pub(super) async fn reencrypt_batch(
    store: &Store,
    audit: &Audit,
    keys: &Keys,
    searchable: &BTreeSet<String>,
    ids: Vec<String>,
    cursor: Option<String>,
    event: &(dyn Fn(&str) -> Event + Sync),
) -> Result<(u64, u64, u64), RotateError> {
    let (ring, system) = (keys.master(), keys.system_keys());
    let cipher = keys.suite().data_cipher();
    let searchable = searchable.clone();
    // Filled by the batch's transaction (which may run more than once: keyed by
    // subject, so a second run counts nothing twice).
    let items = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let failed = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let (seen, broken) = (items.clone(), failed.clone());
    let n = ids.len();
    let change = store.reencrypt_subjects_op(
        ids,
        Arc::new(move |s: &SealedSubject| {
            let out = reseal(cipher, &ring, &system, &searchable, s);
            if let (Ok(mut seen), Ok(mut broken)) = (seen.lock(), broken.lock()) {
                match &out {
                    Some(_) => {
                        broken.remove(&s.id);
                        seen.insert(s.id.clone(), s.items.len() as u64);
                    }
                    None => {
                        seen.remove(&s.id);
                        broken.insert(s.id.clone());
                    }
                }
            }
            out
        }),
        cursor.map(|c| (CURSOR, c)),
    );
    audit
        .record_with(
            vec![event("key.reencrypt").target(&format!("data subjects:{n}"))],
            change,
        )
        .await?;
    let (done, sealed) = items
        .lock()
        .map(|m| (m.len() as u64, m.values().sum::<u64>()))
        .unwrap_or_default();
    let failed = failed.lock().map(|f| f.len() as u64).unwrap_or_default();
    Ok((done, sealed, failed))
}
