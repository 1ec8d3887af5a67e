//! Rotating the system keys (the token-hash and blind-index MAC keys).
//!
//! Token secrets are stored only as keyed hashes, so they cannot be hashed again
//! without the secret: `keys rotate --token-hash` adds a new key version, every node
//! checks a presented token under each live version, and a token found under an older
//! one is moved to the newest as it is used. Issued tokens stay valid throughout.
//!
//! `keys rotate --blind-index` adds a new blind-index key version (writes index under
//! it from then on; lookups search under every live version), then indexes every
//! subject again under it with the re-encryption walk, and finally the subjects a node
//! that had not yet loaded the new version indexed under an older one meanwhile.
//!
//! An old version of either is destroyed (`keys retire --token-hash V` /
//! `--blind-index V`) once nothing depends on it: no live token hashed under it, no
//! index entry made under it.

use std::collections::BTreeSet;

use crate::audit::{Audit, CommitError, Decision, Event};
use crate::crypto::{KeyError, Keys, BLIND_INDEX_KEY, TOKEN_HASH_KEY};
use crate::store::{Store, StoreError, SystemKeyRow, WriteOp};

use super::{KeyWatch, Pace, Progress, ReencryptReport, RotateError};

/// Where an unfinished blind-index rotation is going (a key version), in `vault_meta`.
const BLIND_TARGET: &str = "blind_index_rotation_target";

/// How many times the subjects indexed under an older version are walked at the end
/// (more than once only if a node indexed under an old version meanwhile).
const PASSES: usize = 3;

/// The system key named `name` (`token_hash` or `blind_index`).
fn known(name: &str) -> Result<&'static str, RotateError> {
    match name {
        TOKEN_HASH_KEY => Ok(TOKEN_HASH_KEY),
        BLIND_INDEX_KEY => Ok(BLIND_INDEX_KEY),
        _ => Err(RotateError::Refused(format!(
            "no system key is named {name}"
        ))),
    }
}

async fn versions(store: &Store, name: &str) -> Result<Vec<i64>, RotateError> {
    Ok(store
        .system_keys()
        .await?
        .iter()
        .filter(|k| k.name == name)
        .map(|k| k.version)
        .collect())
}

/// Adds a new version of system key `name`, with `more` committed beside it, and loads
/// it; returns the version.
async fn add_version(
    store: &Store,
    audit: &Audit,
    keys: &Keys,
    watch: &KeyWatch,
    name: &'static str,
    more: Vec<WriteOp>,
    event: &(dyn Fn(&str) -> Event + Sync),
) -> Result<i64, RotateError> {
    let version = versions(store, name).await?.into_iter().max().unwrap_or(0) + 1;
    let (kek_version, wrapped) = keys
        .master()
        .new_system_key(name, version, keys.suite().mac())
        .map_err(KeyError::from)?;
    let row = SystemKeyRow {
        name: name.into(),
        version,
        kek_version,
        wrapped,
    };
    let mut change = vec![store.add_system_key_op(row)];
    change.extend(more);
    match audit
        .record_with(
            vec![event("key.rotate")
                .target(&format!("{name}:v{version}"))
                .outcome(Decision::Allow, "started")],
            WriteOp::chain(change),
        )
        .await
    {
        Err(CommitError::Change(StoreError::Conflict)) => {
            return Err(RotateError::Refused(format!(
                "{name} key version {version} was added meanwhile by another rotation"
            )))
        }
        other => other?,
    }
    watch.reload(keys, store).await?;
    Ok(version)
}

/// Adds a new token-hash key version and loads it; returns the version.
pub async fn rotate_token_hash(
    store: &Store,
    audit: &Audit,
    keys: &Keys,
    watch: &KeyWatch,
    event: &(dyn Fn(&str) -> Event + Sync),
) -> Result<i64, RotateError> {
    add_version(store, audit, keys, watch, TOKEN_HASH_KEY, Vec::new(), event).await
}

/// What a blind-index rotation did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BlindIndexReport {
    /// The blind-index key version every subject is indexed under now.
    pub version: i64,
    /// Whether it continued a rotation an interruption had cut short.
    pub resumed: bool,
    /// The walk that indexed (and re-encrypted) every subject.
    pub walk: ReencryptReport,
    /// Subjects indexed again afterwards because they had been indexed under an older
    /// version meanwhile.
    pub stragglers: u64,
    /// Index entries still under an older version (0 when finished).
    pub remaining: i64,
}

/// Rotates the blind-index key: see the module's documentation.
#[allow(clippy::too_many_arguments)]
pub async fn rotate_blind_index(
    store: &Store,
    audit: &Audit,
    keys: &Keys,
    watch: &KeyWatch,
    searchable: &BTreeSet<String>,
    pace: Pace,
    event: &(dyn Fn(&str) -> Event + Sync),
    progress: &(dyn Progress + Sync),
) -> Result<BlindIndexReport, RotateError> {
    let mut report = BlindIndexReport::default();
    let target = match store.get_meta(BLIND_TARGET).await? {
        Some(v) => {
            report.resumed = true;
            watch.reload(keys, store).await?;
            v.parse::<i64>().map_err(|_| {
                RotateError::Refused(
                    "the recorded blind-index rotation target is not a version".into(),
                )
            })?
        }
        None => {
            let next = versions(store, BLIND_INDEX_KEY)
                .await?
                .into_iter()
                .max()
                .unwrap_or(0)
                + 1;
            add_version(
                store,
                audit,
                keys,
                watch,
                BLIND_INDEX_KEY,
                vec![store.set_meta_op(BLIND_TARGET, Some(next.to_string()))],
                event,
            )
            .await?
        }
    };
    report.version = target;
    // A node that has not loaded the new version would not find subjects indexed under
    // it: wait for every node before indexing anything again.
    let missing =
        super::nodes::wait_for_nodes(store, super::nodes::Loaded::BlindIndex, target).await?;
    if !pace.force {
        super::nodes::refuse_unless_all(
            &missing,
            "blind-index key",
            target,
            "Each node loads it by itself within a second of seeing it (through the change feed); find out why it has not (its log), then run this again, or pass --force (such a node does not find subjects indexed under the new version until it has it)",
        )?;
    }
    if keys.system_versions().0.first() != Some(&target) {
        return Err(RotateError::Refused(format!(
            "blind-index key version {target} is not the newest loaded here"
        )));
    }
    report.walk =
        super::reencrypt_data(store, audit, keys, watch, searchable, pace, event, progress).await?;
    if report.walk.failed > 0 {
        return Ok(report);
    }
    // Subjects a node indexed under an older version while the walk ran (it had not yet
    // loaded the new one): index them again.
    let batch = pace.batch.max(1) as i64;
    for _ in 0..PASSES {
        let mut after = String::new();
        loop {
            let ids = store.subjects_indexed_before(target, &after, batch).await?;
            let Some(last) = ids.last().cloned() else {
                break;
            };
            let n = ids.len() as u64;
            super::reencrypt::reencrypt_batch(store, audit, keys, searchable, ids, None, event)
                .await?;
            report.stragglers += n;
            after = last;
        }
        report.remaining = older_entries(store, target).await?;
        if report.remaining == 0 {
            break;
        }
    }
    if report.remaining == 0 {
        audit
            .record_with(
                vec![event("key.rotate")
                    .target(&format!("{BLIND_INDEX_KEY}:v{target}"))
                    .outcome(Decision::Allow, "finished")],
                store.set_meta_op(BLIND_TARGET, None),
            )
            .await?;
    }
    Ok(report)
}

/// Index entries made under a blind-index key version older than `version`.
async fn older_entries(store: &Store, version: i64) -> Result<i64, RotateError> {
    let now = crate::store::now_ms();
    let mut n = 0;
    for v in versions(store, BLIND_INDEX_KEY).await? {
        if v < version {
            n += store.system_key_users(BLIND_INDEX_KEY, v, now).await?;
        }
    }
    Ok(n)
}

/// Destroys version `version` of system key `name`: refused while it is the newest or
/// while something still depends on it (with what).
pub async fn retire_system_key(
    store: &Store,
    audit: &Audit,
    keys: &Keys,
    watch: &KeyWatch,
    name: &str,
    version: i64,
    event: &(dyn Fn(&str) -> Event + Sync),
) -> Result<(), RotateError> {
    let name = known(name)?;
    let versions = versions(store, name).await?;
    if !versions.contains(&version) {
        return Err(RotateError::Refused(format!(
            "this vault has no {name} key version {version} (it has {versions:?})"
        )));
    }
    let flag = name.replace('_', "-");
    if versions.iter().all(|v| *v <= version) {
        return Err(RotateError::Refused(format!(
            "{name} key version {version} is the active version; rotate to a new one first (`piivault keys rotate --{flag}`)"
        )));
    }
    let now = crate::store::now_ms();
    let users = store.system_key_users(name, version, now).await?;
    if users > 0 {
        return Err(RotateError::Refused(match name {
            TOKEN_HASH_KEY => format!(
                "{users} live token(s) are still hashed under token-hash key version {version}; each moves to the new version when next used: wait until they have been used, have expired or are revoked (`piivault token list`)"
            ),
            _ => format!(
                "{users} index entries are still under blind-index key version {version}; run `piivault keys rotate --blind-index` to the end first"
            ),
        }));
    }
    match audit
        .record_with(
            vec![event("key.retire").target(&format!("{name}:v{version}"))],
            store.destroy_system_key_op(name, version, now),
        )
        .await
    {
        Err(CommitError::Change(StoreError::Conflict)) => {
            return Err(RotateError::Refused(format!(
                "something depends on {name} key version {version} again, or it is the newest; run this again"
            )))
        }
        other => other?,
    }
    watch.reload(keys, store).await?;
    Ok(())
}
