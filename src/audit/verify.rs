//! Verifying the trail: every link of the chain, and every signed checkpoint (from the
//! database and from the checkpoint file) against the public keys an auditor trusts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::event::chain_hash;
use crate::crypto::AuditPublicKey;
use crate::store::{AuditRow, AuditRowRef, CheckpointRow, PackedEvents, Store, StoreError};

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

/// What is wrong with an event, judged against the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Not the next number: the number found.
    Gap(i64),
    /// Does not carry the hash of the event before it.
    Link,
    /// Does not match its own hash.
    Altered,
    /// Cannot be read at all.
    Unreadable,
}

impl Fault {
    /// Checks `row` against the event before it, `(seq, hash)` (`None`: the check of
    /// the link is left to whoever knows that event), then its own hash.
    fn of(before: Option<(i64, &[u8])>, row: AuditRowRef<'_>) -> Result<(), Fault> {
        Self::link(before, row.seq, row.prev_hash)?;
        if chain_hash(row).as_slice() != row.hash {
            return Err(Fault::Altered);
        }
        Ok(())
    }

    fn link(before: Option<(i64, &[u8])>, seq: i64, prev_hash: &[u8]) -> Result<(), Fault> {
        match before {
            Some((at, _)) if seq != at + 1 => Err(Fault::Gap(seq)),
            Some((_, hash)) if prev_hash != hash => Err(Fault::Link),
            _ => Ok(()),
        }
    }

    /// The reason given when the event expected at `expected` has this fault.
    fn reason(self, expected: i64) -> String {
        match self {
            Fault::Gap(found) => {
                format!("sequence gap: expected event {expected}, found {found}")
            }
            Fault::Link => format!("event {expected} does not link to the event before it"),
            Fault::Altered => format!("event {expected} does not match its hash (altered)"),
            Fault::Unreadable => {
                format!("event {expected} cannot be read (altered outside the vault)")
            }
        }
    }
}

/// One page of events checked apart from the rest of the chain: every event against
/// the one before it within the page, and against its own hash. The walker checks the
/// page's first event against the page before ([`Walker::take`]).
#[derive(Debug, Default)]
struct CheckedPage {
    /// The first event's number and the hash it links to.
    head: Option<(i64, Vec<u8>)>,
    /// The last event that passed, and its hash.
    last: Option<(i64, Vec<u8>)>,
    /// Hashes of passed events that checkpoints refer to.
    hashes: Vec<(i64, Vec<u8>)>,
    /// What is wrong with the event after `last` (or with the first), if anything.
    fault: Option<Fault>,
}

impl CheckedPage {
    fn check(page: &PackedEvents, wanted: &BTreeSet<i64>) -> Self {
        let mut out = Self::default();
        let mut before: Option<(i64, &[u8])> = None;
        for row in page.iter() {
            let Ok(row) = row else {
                out.fault = Some(Fault::Unreadable);
                break;
            };
            if out.head.is_none() {
                out.head = Some((row.seq, row.prev_hash.to_vec()));
            }
            if let Err(fault) = Fault::of(before, row) {
                out.fault = Some(fault);
                break;
            }
            if wanted.contains(&row.seq) {
                out.hashes.push((row.seq, row.hash.to_vec()));
            }
            before = Some((row.seq, row.hash));
        }
        out.last = before.map(|(seq, hash)| (seq, hash.to_vec()));
        out
    }
}

/// Checks links one event at a time, remembering the hashes checkpoints refer to.
struct Walker {
    at: i64,
    prev: Vec<u8>,
    hash_at: BTreeMap<i64, Option<Vec<u8>>>,
    problems: Vec<(i64, String)>,
    complete: bool,
}

impl Walker {
    fn new(checkpoints: &[CheckpointRow], start: Option<(i64, Vec<u8>)>) -> Self {
        let (at, prev) = start.unwrap_or((0, vec![0u8; 32]));
        Self {
            at,
            prev,
            hash_at: checkpoints.iter().map(|c| (c.seq, None)).collect(),
            problems: Vec::new(),
            complete: true,
        }
    }

    /// Checks the next event; false once the chain is broken (the walk stops there).
    fn push(&mut self, row: AuditRowRef<'_>) -> bool {
        if let Err(fault) = Fault::of(Some((self.at, &self.prev)), row) {
            self.broken(fault.reason(self.at + 1));
            return false;
        }
        if let Some(slot) = self.hash_at.get_mut(&row.seq) {
            *slot = Some(row.hash.to_vec());
        }
        self.at = row.seq;
        self.prev.clear();
        self.prev.extend_from_slice(row.hash);
        true
    }

    /// Takes a page checked on its own ([`CheckedPage`]): its first event must follow
    /// the last one taken; false once the chain is broken.
    fn take(&mut self, page: CheckedPage) -> bool {
        if let Some((seq, prev_hash)) = &page.head {
            let link = Fault::link(Some((self.at, &self.prev)), *seq, prev_hash);
            if let Err(fault) = link {
                self.broken(fault.reason(self.at + 1));
                return false;
            }
        }
        for (seq, hash) in page.hashes {
            if let Some(slot) = self.hash_at.get_mut(&seq) {
                *slot = Some(hash);
            }
        }
        if let Some((seq, hash)) = page.last {
            self.at = seq;
            self.prev = hash;
        }
        match page.fault {
            Some(fault) => {
                self.broken(fault.reason(self.at + 1));
                false
            }
            None => true,
        }
    }

    /// The chain is broken just after the last event checked.
    fn broken(&mut self, reason: String) {
        self.problems.push((self.at + 1, reason));
        self.complete = false;
    }

    /// Walks the stored chain from where the walker stands up to `head`. Pages are read
    /// and checked ahead, each by a task of its own (each on its own connection and, on
    /// SQLite, its own thread; the hashing on a blocking thread), so reading and hashing
    /// use every core; the walker only joins the pages. Stops at the first broken link.
    async fn walk(&mut self, store: &Store, head: i64) -> Result<(), StoreError> {
        let wanted: std::sync::Arc<BTreeSet<i64>> =
            std::sync::Arc::new(self.hash_at.keys().copied().collect());
        let fetch = |after: i64| {
            let (store, wanted) = (store.clone(), wanted.clone());
            let through = after.saturating_add(VERIFY_PAGE).min(head);
            let task = tokio::spawn(async move {
                let page = store.audit_packed(after, through).await?;
                tokio::task::spawn_blocking(move || CheckedPage::check(&page, &wanted))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))
            });
            (through, task)
        };
        let mut pending = VecDeque::new();
        let mut next = self.at;
        loop {
            while next < head && pending.len() < VERIFY_READERS {
                let (through, task) = fetch(next);
                next = through;
                pending.push_back(task);
            }
            let Some(page) = pending.pop_front() else {
                break;
            };
            let page = page.await.map_err(|e| StoreError::Task(e.to_string()))??;
            if !self.take(page) {
                return Ok(());
            }
        }
        if self.at < head {
            let reason = format!("sequence gap: events {}..={head} are missing", self.at + 1);
            self.broken(reason);
        }
        Ok(())
    }

    /// A pruned trail starts after an anchor, which must be a signed checkpoint.
    fn check_anchor(
        &mut self,
        anchor: Option<&(i64, Vec<u8>)>,
        checkpoints: &[CheckpointRow],
        trusted: &[AuditPublicKey],
    ) {
        let Some((seq, hash)) = anchor else { return };
        let signed = checkpoints.iter().any(|cp| {
            cp.seq == *seq
                && cp.hash == *hash
                && trusted.iter().any(|k| {
                    k.key_id() == cp.key_id
                        && k.verify_checkpoint(cp.seq, cp.ts, &cp.hash, &cp.signature)
                })
        });
        if !signed {
            self.problems.push((
                *seq,
                format!("the trail was pruned up to event {seq}, but no signed checkpoint vouches for that point (forged anchor)"),
            ));
        }
    }

    fn finish(mut self, checkpoints: &[CheckpointRow], trusted: &[AuditPublicKey]) -> VerifyReport {
        let mut verified = 0usize;
        let mut unknown = 0usize;
        let mut last_good = 0i64;
        for cp in checkpoints {
            let Some(key) = trusted.iter().find(|k| k.key_id() == cp.key_id) else {
                unknown += 1;
                continue;
            };
            if !key.verify_checkpoint(cp.seq, cp.ts, &cp.hash, &cp.signature) {
                self.problems.push((
                    cp.seq,
                    format!(
                        "the checkpoint at event {} carries an invalid signature (forged)",
                        cp.seq
                    ),
                ));
                continue;
            }
            verified += 1;
            match self.hash_at.get(&cp.seq).cloned().flatten() {
                Some(h) if h == cp.hash => last_good = last_good.max(cp.seq),
                Some(_) => self.problems.push((
                    last_good + 1,
                    format!(
                        "events {}..={} do not match the signed checkpoint at event {} (rewritten)",
                        last_good + 1,
                        cp.seq,
                        cp.seq
                    ),
                )),
                None if self.complete && cp.seq > self.at => self.problems.push((
                    self.at + 1,
                    format!(
                        "the trail ends at event {}, but a signed checkpoint covers event {}: events were cut",
                        self.at, cp.seq
                    ),
                )),
                None => {}
            }
        }
        let first = self.problems.into_iter().min_by_key(|(seq, _)| *seq);
        VerifyReport {
            ok: first.is_none(),
            events: self.at,
            checkpoints: verified,
            checkpoints_unknown_key: unknown,
            first_bad_seq: first.as_ref().map(|(s, _)| *s),
            reason: first.map(|(_, r)| r),
        }
    }
}

fn merge(mut checkpoints: Vec<CheckpointRow>, extra: &[CheckpointRow]) -> Vec<CheckpointRow> {
    for cp in extra {
        if !checkpoints.contains(cp) {
            checkpoints.push(cp.clone());
        }
    }
    checkpoints.sort_by_key(|c| c.seq);
    checkpoints
}

/// Events read (and checked, by a task of their own) per page while verifying. Four pages
/// of 25,000 events hold some 40 MB; pages of 10,000 left PostgreSQL's readers a share of
/// per-statement work that kept `audit verify` under a million events a second there.
pub const VERIFY_PAGE: i64 = 25_000;
/// Pages read at once while verifying (each on its own connection): open the store
/// with one connection more than this for `audit verify`.
pub const VERIFY_READERS: usize = 4;

/// Walks the whole chain and checks every checkpoint. The report names the first bad
/// event: a broken link, or the start of a stretch that a signed checkpoint disowns.
pub async fn verify(
    store: &Store,
    trusted: &[AuditPublicKey],
    extra_checkpoints: &[CheckpointRow],
) -> Result<VerifyReport, StoreError> {
    let checkpoints = merge(store.checkpoints().await?, extra_checkpoints);
    let anchor = store.audit_anchor().await?;
    let mut walker = Walker::new(&checkpoints, anchor.clone());
    walker.check_anchor(anchor.as_ref(), &checkpoints, trusted);
    // Events appended while this runs are left for the next verification.
    let head = store.audit_head().await?.map_or(0, |(seq, _)| seq);
    walker.walk(store, head).await?;
    Ok(walker.finish(&checkpoints, trusted))
}

/// Checks the stored chain from `start` (a checkpointed event, or the beginning) to
/// the head `(seq, hash)`: every link, every event's hash, and that it ends at that
/// head. Returns the first problem found, if any.
pub(super) async fn check_segment(
    store: &Store,
    start: Option<(i64, Vec<u8>)>,
    head: (i64, &[u8]),
) -> Result<Option<(i64, String)>, StoreError> {
    let mut walker = Walker::new(&[], start);
    walker.walk(store, head.0).await?;
    if walker.complete && walker.prev != head.1 {
        walker.broken(format!(
            "the chain does not reach its head at event {}",
            head.0
        ));
    }
    Ok(walker.problems.into_iter().next())
}

#[derive(Serialize, Deserialize)]
struct ArchivedEvent {
    seq: i64,
    ts: i64,
    actor_token: String,
    actor_role: String,
    action: String,
    subject: Option<String>,
    field: Option<String>,
    target: Option<String>,
    purpose: String,
    decision: String,
    reason: String,
    request_id: String,
    prev_hash: String,
    hash: String,
}

#[derive(Serialize, Deserialize)]
struct ArchivedCheckpoint {
    seq: i64,
    hash: String,
    ts: i64,
    key_id: String,
    signature: String,
}

/// Writes every event up to `until_ts` (and the checkpoints within) as JSON lines:
/// a header, then `{"event": …}` lines, then `{"checkpoint": …}` lines. Returns the
/// number of events written.
pub async fn write_archive(
    store: &Store,
    until_ts: Option<i64>,
    until_seq: Option<i64>,
    out: &mut impl std::io::Write,
) -> Result<i64, ArchiveError> {
    let anchor = store.audit_anchor().await?;
    let mut header = serde_json::json!({ "piivault_audit_archive": 1 });
    if let Some((seq, hash)) = &anchor {
        header["after_seq"] = serde_json::json!(seq);
        header["after_hash"] = serde_json::json!(hex::encode(hash));
    }
    writeln!(out, "{header}")?;
    let mut at = anchor.map_or(0, |(s, _)| s);
    'page: loop {
        let rows = store.audit_events(at, 5000).await?;
        if rows.is_empty() {
            break;
        }
        for r in rows {
            if until_ts.is_some_and(|u| r.ts >= u) || until_seq.is_some_and(|u| r.seq > u) {
                break 'page;
            }
            at = r.seq;
            let e = ArchivedEvent {
                seq: r.seq,
                ts: r.ts,
                actor_token: r.actor_token,
                actor_role: r.actor_role,
                action: r.action,
                subject: r.subject,
                field: r.field,
                target: r.target,
                purpose: r.purpose,
                decision: r.decision,
                reason: r.reason,
                request_id: r.request_id,
                prev_hash: hex::encode(&r.prev_hash),
                hash: hex::encode(&r.hash),
            };
            writeln!(out, "{}", serde_json::json!({ "event": e }))?;
        }
    }
    for cp in store
        .checkpoints()
        .await?
        .into_iter()
        .filter(|c| c.seq <= at)
    {
        let c = ArchivedCheckpoint {
            seq: cp.seq,
            hash: hex::encode(&cp.hash),
            ts: cp.ts,
            key_id: cp.key_id,
            signature: B64.encode(&cp.signature),
        };
        writeln!(out, "{}", serde_json::json!({ "checkpoint": c }))?;
    }
    out.flush()?;
    Ok(at)
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("archive line {line}: {message}")]
    Format { line: usize, message: String },
}

/// Verifies an archive file on its own: its chain from the first event, and its
/// checkpoints against the trusted keys.
pub fn verify_archive(
    path: &Path,
    trusted: &[AuditPublicKey],
) -> Result<VerifyReport, ArchiveError> {
    let text = std::fs::read_to_string(path)?;
    let mut rows = Vec::new();
    let mut checkpoints = Vec::new();
    let mut anchor = None;
    for (i, line) in text.lines().enumerate() {
        let bad = |message: &str| ArchiveError::Format {
            line: i + 1,
            message: message.to_owned(),
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|_| bad("not JSON"))?;
        if i == 0 {
            if v["piivault_audit_archive"] != 1 {
                return Err(bad("not a piivault audit archive"));
            }
            if let (Some(seq), Some(hash)) = (v["after_seq"].as_i64(), v["after_hash"].as_str()) {
                anchor = Some((
                    seq,
                    hex::decode(hash).map_err(|_| bad("after_hash is not hex"))?,
                ));
            }
            continue;
        }
        let unhex = |s: &str| hex::decode(s).map_err(|_| bad("hash is not hex"));
        if let Some(e) = v.get("event") {
            let e: ArchivedEvent =
                serde_json::from_value(e.clone()).map_err(|_| bad("malformed event"))?;
            rows.push(AuditRow {
                seq: e.seq,
                ts: e.ts,
                actor_token: e.actor_token,
                actor_role: e.actor_role,
                action: e.action,
                subject: e.subject,
                field: e.field,
                target: e.target,
                purpose: e.purpose,
                decision: e.decision,
                reason: e.reason,
                request_id: e.request_id,
                prev_hash: unhex(&e.prev_hash)?,
                hash: unhex(&e.hash)?,
            });
        } else if let Some(c) = v.get("checkpoint") {
            let c: ArchivedCheckpoint =
                serde_json::from_value(c.clone()).map_err(|_| bad("malformed checkpoint"))?;
            checkpoints.push(CheckpointRow {
                seq: c.seq,
                hash: unhex(&c.hash)?,
                ts: c.ts,
                key_id: c.key_id,
                signature: B64
                    .decode(&c.signature)
                    .map_err(|_| bad("signature is not base64"))?,
            });
        } else {
            return Err(bad("neither an event nor a checkpoint"));
        }
    }
    let checkpoints = merge(checkpoints, &[]);
    let mut walker = Walker::new(&checkpoints, anchor.clone());
    walker.check_anchor(anchor.as_ref(), &checkpoints, trusted);
    for row in &rows {
        if !walker.push(row.borrowed()) {
            break;
        }
    }
    Ok(walker.finish(&checkpoints, trusted))
}
