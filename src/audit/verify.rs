//! Verifying the trail: every link of the chain, and every signed checkpoint (from the
//! database and from the checkpoint file) against the public keys an auditor trusts.

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Serialize;

use super::event::chain_hash;
use crate::crypto::AuditPublicKey;
use crate::store::{CheckpointRow, Store, StoreError};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub ok: bool,
    /// Events that were walked (up to the first broken link).
    pub events: i64,
    /// Checkpoints whose signature verified under a trusted key.
    pub checkpoints: usize,
    /// Checkpoints signed by keys this verifier was not given.
    pub checkpoints_unknown_key: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Reads a checkpoint file (JSON lines); lines that do not parse are skipped.
pub fn read_checkpoint_file(path: &Path) -> std::io::Result<Vec<CheckpointRow>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(CheckpointRow {
                seq: v["seq"].as_i64()?,
                hash: hex::decode(v["hash"].as_str()?).ok()?,
                ts: v["ts"].as_i64()?,
                key_id: v["key_id"].as_str()?.to_owned(),
                signature: B64.decode(v["signature"].as_str()?).ok()?,
            })
        })
        .collect())
}

/// Walks the whole chain and checks every checkpoint. The report names the first bad
/// event: a broken link, or the start of a stretch that a signed checkpoint disowns.
pub async fn verify(
    store: &Store,
    trusted: &[AuditPublicKey],
    extra_checkpoints: &[CheckpointRow],
) -> Result<VerifyReport, StoreError> {
    let mut checkpoints = store.checkpoints().await?;
    for cp in extra_checkpoints {
        if !checkpoints.contains(cp) {
            checkpoints.push(cp.clone());
        }
    }
    checkpoints.sort_by_key(|c| c.seq);
    let mut hash_at: BTreeMap<i64, Option<Vec<u8>>> =
        checkpoints.iter().map(|c| (c.seq, None)).collect();

    let mut problems: Vec<(i64, String)> = Vec::new();
    let (mut at, mut prev) = (0i64, vec![0u8; 32]);
    let mut walk_complete = true;
    'walk: loop {
        let rows = store.audit_events(at, 5000).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let expected = at + 1;
            let broken = if row.seq != expected {
                Some(format!(
                    "sequence gap: expected event {expected}, found {}",
                    row.seq
                ))
            } else if row.prev_hash != prev {
                Some(format!(
                    "event {expected} does not link to the event before it"
                ))
            } else if chain_hash(&row) != row.hash {
                Some(format!(
                    "event {expected} does not match its hash (altered)"
                ))
            } else {
                None
            };
            if let Some(reason) = broken {
                problems.push((expected, reason));
                walk_complete = false;
                break 'walk;
            }
            if let Some(slot) = hash_at.get_mut(&row.seq) {
                *slot = Some(row.hash.clone());
            }
            at = row.seq;
            prev = row.hash;
        }
    }

    let mut verified = 0usize;
    let mut unknown = 0usize;
    let mut last_good = 0i64;
    for cp in &checkpoints {
        let Some(key) = trusted.iter().find(|k| k.key_id() == cp.key_id) else {
            unknown += 1;
            continue;
        };
        if !key.verify_checkpoint(cp.seq, cp.ts, &cp.hash, &cp.signature) {
            problems.push((
                cp.seq,
                format!(
                    "the checkpoint at event {} carries an invalid signature (forged)",
                    cp.seq
                ),
            ));
            continue;
        }
        verified += 1;
        match hash_at.get(&cp.seq).cloned().flatten() {
            Some(h) if h == cp.hash => last_good = last_good.max(cp.seq),
            Some(_) => problems.push((
                last_good + 1,
                format!(
                    "events {}..={} do not match the signed checkpoint at event {} (rewritten)",
                    last_good + 1,
                    cp.seq,
                    cp.seq
                ),
            )),
            None if walk_complete && cp.seq > at => problems.push((
                at + 1,
                format!(
                    "the trail ends at event {at}, but a signed checkpoint covers event {}: events were cut",
                    cp.seq
                ),
            )),
            None => {}
        }
    }
    let first = problems.into_iter().min_by_key(|(seq, _)| *seq);
    Ok(VerifyReport {
        ok: first.is_none(),
        events: at,
        checkpoints: verified,
        checkpoints_unknown_key: unknown,
        first_bad_seq: first.as_ref().map(|(s, _)| *s),
        reason: first.map(|(_, r)| r),
    })
}
