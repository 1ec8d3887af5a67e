//! Master-key rotation and retirement.
//!
//! `rotate_master` picks the version to move to (a new one added to the key file, or
//! the newest loaded one when the key comes from the environment), records it as the
//! rotation's target, then wraps every stored key again under it in batches: each
//! batch is one transaction with its audit event, each key changed only if it is still
//! wrapped as it was read. The server keeps serving meanwhile (it reads both versions),
//! and an interrupted rotation resumes toward the same target. `retire_master` then
//! destroys an old version once nothing is wrapped under it.

use crate::audit::{Audit, CommitError, Event};
use crate::crypto::{KeyError, Keys};
use crate::store::{MasterKeyRow, Rewrapped, Store, StoreError, WrappedCount, WrappedKey};

use super::KeyWatch;

/// Where an unfinished rotation is going (a master-key version), in `vault_meta`.
const TARGET: &str = "master_rotation_target";

/// How many times the stored keys are walked; more than one only when keys were
/// written under an older version meanwhile (a node that had not loaded the new one).
const PASSES: usize = 3;

/// Why a rotation or a retirement did not go ahead (`Refused` says what to do).
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error("{0}")]
    Refused(String),
}

/// What a rotation did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RotateReport {
    /// The master-key version everything is now wrapped under.
    pub version: i64,
    /// Whether it continued a rotation an interruption had cut short.
    pub resumed: bool,
    /// Whether the version was added to the key file by this run.
    pub added_to_key_file: bool,
    /// Whether the version was made in the external key source by this run (a new
    /// key object in the PKCS#11 module, the transit key rotated).
    pub added_to_key_source: bool,
    pub subject_keys: u64,
    pub system_keys: u64,
    /// Keys that could not be unwrapped (damaged, or under a version not loaded here).
    pub failed: u64,
    /// Keys still under another version at the end (0 when the rotation is complete).
    pub remaining: i64,
}

/// Told how far a rotation is: keys done so far, and the total.
pub trait Progress {
    fn set(&self, done: u64, total: u64);
}

impl<F: Fn(u64, u64)> Progress for F {
    fn set(&self, done: u64, total: u64) {
        self(done, total)
    }
}

/// Everything wrapped under another version than `target`.
fn elsewhere(counts: &std::collections::BTreeMap<i64, WrappedCount>, target: i64) -> i64 {
    counts
        .iter()
        .filter(|(v, _)| **v != target)
        .map(|(_, c)| c.total())
        .sum()
}

/// How a rotation goes: keys per transaction, and at most how many keys a second (so
/// that a large store is rotated without crowding out the requests it serves).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub batch: usize,
    pub max_per_second: Option<u32>,
    /// Master-key rotation: wrap under the new version even if a serving node has not
    /// loaded it (that node answers `key_unavailable` for re-wrapped subjects until it
    /// has). Without it the rotation waits for every node, and stops if one lacks it.
    pub force: bool,
}

impl Pace {
    /// Waits until `done` items since `started` are within the rate (if one is set).
    pub(super) async fn keep(&self, started: tokio::time::Instant, done: u64) {
        if let Some(rate) = self.max_per_second.filter(|r| *r > 0) {
            let due = started + std::time::Duration::from_secs_f64(done as f64 / f64::from(rate));
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Rotates the master key: see the module's documentation. `event` makes an audit
/// event for an action (who does it, under which request id).
pub async fn rotate_master(
    store: &Store,
    audit: &Audit,
    keys: &Keys,
    watch: &KeyWatch,
    pace: Pace,
    event: &(dyn Fn(&str) -> Event + Sync),
    progress: &(dyn Progress + Sync),
) -> Result<RotateReport, RotateError> {
    let batch = pace.batch.max(1);
    let started = tokio::time::Instant::now();
    let mut report = RotateReport::default();
    let target = match store.get_meta(TARGET).await? {
        Some(v) => {
            let v: i64 = v.parse().map_err(|_| {
                RotateError::Refused("the recorded rotation target is not a version".into())
            })?;
            watch.ensure(keys, store, [v]).await.map_err(|_| {
                RotateError::Refused(format!(
                    "an interrupted rotation was moving to master key version {v}, which is not in this node's key source; restore it there and run again"
                ))
            })?;
            report.resumed = true;
            v
        }
        None => {
            let (version, added, wrapped) = choose_target(store, keys).await?;
            report.added_to_key_file = added;
            let row = match wrapped {
                Some((wrapped, check_value)) => {
                    report.added_to_key_source = true;
                    MasterKeyRow {
                        version,
                        check_value,
                        destroyed_at: None,
                        wrapped: Some(wrapped),
                        algorithm: Some(keys.suite().data_cipher().as_str().into()),
                    }
                }
                None => {
                    let ring = match keys.read_file()? {
                        Some(ring) => ring,
                        None => (*keys.master()).clone(),
                    };
                    MasterKeyRow {
                        version,
                        check_value: ring.check_value(version).map_err(KeyError::from)?,
                        destroyed_at: None,
                        wrapped: None,
                        algorithm: Some(keys.suite().data_cipher().as_str().into()),
                    }
                }
            };
            let change = crate::store::WriteOp::chain(vec![
                store.add_master_key_op(row),
                store.set_meta_op(TARGET, Some(version.to_string())),
            ]);
            audit
                .record_with(
                    vec![event("key.rotate")
                        .target(&format!("master:v{version}"))
                        .outcome(crate::audit::Decision::Allow, "started")],
                    change,
                )
                .await?;
            watch.reload(keys, store).await?;
            version
        }
    };
    report.version = target;
    let missing = super::nodes::wait_for_nodes(store, super::nodes::Loaded::Master, target).await?;
    if !pace.force {
        super::nodes::refuse_unless_all(
            &missing,
            "master key",
            target,
            "Give each the new key file line (it reads its key file again by itself) and run this again, or pass --force to re-wrap now (such a node answers 503 key_unavailable for re-wrapped subjects until it has the version)",
        )?;
    }
    if keys.master().current_version() != target {
        return Err(RotateError::Refused(format!(
            "master key version {target} is not the newest loaded version ({}); the rotation cannot move to it",
            keys.master().current_version()
        )));
    }

    let total = elsewhere(&store.wrapped_counts().await?, target).max(0) as u64;
    progress.set(0, total);
    let mut done = 0u64;
    for _ in 0..PASSES {
        done += rewrap_system_keys(store, audit, keys, watch, target, event, &mut report).await?;
        progress.set(done, total.max(done));
        let mut after: Option<(String, i64)> = None;
        loop {
            let rows = store
                .subject_keys_not_under(
                    target,
                    after.as_ref().map(|(s, v)| (s.as_str(), *v)),
                    batch as i64,
                )
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some((last.name.clone(), last.version));
            let rewrapped = rewrap_rows(keys, store, watch, rows, Kind::Subject, &mut report).await;
            let n = commit_rewrapped(store, audit, event, target, Kind::Subject, rewrapped).await?;
            report.subject_keys += n;
            done += n;
            progress.set(done, total.max(done));
            pace.keep(started, report.subject_keys + report.system_keys)
                .await;
        }
        report.remaining = elsewhere(&store.wrapped_counts().await?, target);
        if report.remaining <= report.failed as i64 {
            break;
        }
    }
    if report.remaining == 0 {
        audit
            .record_with(
                vec![event("key.rotate")
                    .target(&format!("master:v{target}"))
                    .outcome(crate::audit::Decision::Allow, "finished")],
                store.set_meta_op(TARGET, None),
            )
            .await?;
    }
    Ok(report)
}

/// The version a new rotation moves to: a new one made in the external key source or
/// added to the key file, or, when the key comes from the environment, the newest
/// loaded one if something is still wrapped under an older one. Returns it, whether it
/// was added to the file, and, from an external source, its wrapped form and check value.
async fn choose_target(
    store: &Store,
    keys: &Keys,
) -> Result<(i64, bool, Option<(Vec<u8>, Vec<u8>)>), RotateError> {
    let ring = keys.master();
    let recorded = store
        .master_keys()
        .await?
        .iter()
        .map(|k| k.version)
        .max()
        .unwrap_or(0);
    if let Some(ext) = keys.external() {
        let version = recorded.max(ring.current_version()) + 1;
        let made = ext
            .new_version(version, false)
            .await
            .map_err(KeyError::from)?;
        tracing::info!(
            version,
            source = ext.name(),
            "new master key version made in the key source"
        );
        return Ok((version, false, Some(made)));
    }
    if keys.file().is_some() {
        // A version in the file that the store has not recorded was added by an
        // attempt cut short before it could record it: use that one.
        let in_file = keys.read_file()?.map_or(0, |r| r.current_version());
        if in_file > recorded {
            return Ok((in_file, false, None));
        }
        let version = recorded.max(ring.current_version()) + 1;
        keys.add_file_version(version)?;
        tracing::info!(version, "new master key version added to the key file");
        return Ok((version, true, None));
    }
    let current = ring.current_version();
    if elsewhere(&store.wrapped_counts().await?, current) == 0 {
        return Err(RotateError::Refused(format!(
            "every key is already wrapped under master key version {current}, the newest loaded; the master key comes from an environment variable or a passphrase, which piivault cannot add a version to: add a new vN:BASE64 entry to PIIVAULT_MASTER_KEY on every node (or move to a key file), restart, and run this again"
        )));
    }
    Ok((current, false, None))
}

/// Wraps every system key under another version again; returns how many.
async fn rewrap_system_keys(
    store: &Store,
    audit: &Audit,
    keys: &Keys,
    watch: &KeyWatch,
    target: i64,
    event: &(dyn Fn(&str) -> Event + Sync),
    report: &mut RotateReport,
) -> Result<u64, RotateError> {
    let rows: Vec<WrappedKey> = store
        .system_keys()
        .await?
        .into_iter()
        .filter(|k| k.kek_version != target)
        .map(|k| WrappedKey {
            name: k.name,
            version: k.version,
            kek_version: k.kek_version,
            wrapped: k.wrapped,
        })
        .collect();
    let rewrapped = rewrap_rows(keys, store, watch, rows, Kind::System, report).await;
    let n = commit_rewrapped(store, audit, event, target, Kind::System, rewrapped).await?;
    report.system_keys += n;
    Ok(n)
}

/// Which stored keys a batch holds.
#[derive(Clone, Copy)]
enum Kind {
    /// Subjects' data keys (named by subject id).
    Subject,
    /// System keys (named by key name).
    System,
}

/// Wraps `rows` again under the newest loaded version (reading the key source again
/// first if one of them is under a version not loaded here). A key that cannot be
/// unwrapped is logged by its name and version and counted in `report.failed`.
async fn rewrap_rows(
    keys: &Keys,
    store: &Store,
    watch: &KeyWatch,
    rows: Vec<WrappedKey>,
    kind: Kind,
    report: &mut RotateReport,
) -> Vec<Rewrapped> {
    if rows.is_empty() {
        return Vec::new();
    }
    let _ = watch
        .ensure(keys, store, rows.iter().map(|r| r.kek_version))
        .await;
    let ring = keys.master();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let again = match kind {
            Kind::Subject => ring.rewrap_subject_key(&r.name, r.version, r.kek_version, &r.wrapped),
            Kind::System => ring.rewrap_system_key(&r.name, r.version, r.kek_version, &r.wrapped),
        };
        match again {
            Ok((kek_version, wrapped)) => out.push(Rewrapped {
                name: r.name,
                version: r.version,
                old_kek_version: r.kek_version,
                kek_version,
                wrapped,
            }),
            Err(e) => {
                report.failed += 1;
                tracing::error!(key = %r.name, version = r.version, kek_version = r.kek_version, error = %e, "a stored key cannot be wrapped again");
            }
        }
    }
    out
}

/// Stores a batch of keys wrapped again, with its audit event; returns how many.
async fn commit_rewrapped(
    store: &Store,
    audit: &Audit,
    event: &(dyn Fn(&str) -> Event + Sync),
    target: i64,
    kind: Kind,
    rows: Vec<Rewrapped>,
) -> Result<u64, RotateError> {
    let n = rows.len() as u64;
    if n == 0 {
        return Ok(0);
    }
    let (what, change) = match kind {
        Kind::Subject => ("subject_keys", store.rewrap_subject_keys_op(rows)),
        Kind::System => ("system_keys", store.rewrap_system_keys_op(rows)),
    };
    audit
        .record_with(
            vec![event("key.rewrap").target(&format!("master:v{target} {what}:{n}"))],
            change,
        )
        .await?;
    Ok(n)
}

/// Destroys master-key `version`: refused while anything is wrapped under it or while
/// it is the newest live version. Marks it destroyed in the store (every node drops it
/// from its keyring; nothing can be wrapped under it again) and removes it from the
/// key file. Returns whether it was removed from a key file (else the operator must
/// remove it from the environment variable).
pub async fn retire_master(
    store: &Store,
    audit: &Audit,
    keys: &Keys,
    watch: &KeyWatch,
    version: i64,
    event: &(dyn Fn(&str) -> Event + Sync),
) -> Result<String, RotateError> {
    let masters = store.master_keys().await?;
    let row = masters
        .iter()
        .find(|k| k.version == version)
        .ok_or_else(|| {
            RotateError::Refused(format!("this vault has no master key version {version}"))
        })?;
    if row.destroyed_at.is_none() {
        let newest_live = masters
            .iter()
            .filter(|k| k.destroyed_at.is_none())
            .map(|k| k.version)
            .max()
            .unwrap_or(0);
        if version >= newest_live {
            return Err(RotateError::Refused(format!(
                "master key version {version} is the active version; rotate to a new one first (`piivault keys rotate --master`)"
            )));
        }
        let still = store
            .wrapped_counts()
            .await?
            .get(&version)
            .copied()
            .unwrap_or_default();
        if still.total() > 0 {
            return Err(RotateError::Refused(format!(
                "master key version {version} still wraps {} subject key(s) and {} system key(s); run `piivault keys rotate --master` to the end first",
                still.subject_keys, still.system_keys
            )));
        }
        match audit
            .record_with(
                vec![event("key.retire").target(&format!("master:v{version}"))],
                store.destroy_master_key_op(version),
            )
            .await
        {
            Err(CommitError::Change(StoreError::Conflict)) => {
                return Err(RotateError::Refused(format!(
                    "a key was wrapped under master key version {version} meanwhile; run `piivault keys rotate --master` again"
                )))
            }
            other => other?,
        }
    }
    let done = if let Some(ext) = keys.external() {
        let live = super::live_wrapped(&store.master_keys().await?);
        let done = ext
            .destroy_version(version, &live)
            .await
            .map_err(KeyError::from)?;
        format!("master key version {version} destroyed: {done}")
    } else {
        match keys.read_file()? {
            Some(ring) if ring.contains(version) => {
                keys.remove_file_version(version)?;
                format!("master key version {version} destroyed and removed from the key file")
            }
            _ => format!(
                "master key version {version} destroyed; remove its v{version}: entry from PIIVAULT_MASTER_KEY (or wherever else a copy is kept)"
            ),
        }
    };
    watch.reload(keys, store).await?;
    Ok(done)
}
