//! Rotating the token-hash key (`piivault keys rotate --token-hash`). Token secrets are
//! stored only as keyed hashes, so they cannot be hashed again without the secret: a
//! new key version is added, every node checks a presented token under each live
//! version, and a token found under an older one is moved to the newest as it is used.
//! Issued tokens stay valid throughout. An old version is destroyed
//! (`keys retire --token-hash`) once no live token is hashed under it.

use crate::audit::{Audit, CommitError, Decision, Event};
use crate::crypto::{KeyError, Keys, TOKEN_HASH_KEY};
use crate::store::{Store, StoreError, SystemKeyRow};

use super::{KeyWatch, RotateError};

/// Adds a new token-hash key version and loads it; returns the version.
pub async fn rotate_token_hash(
    store: &Store,
    audit: &Audit,
    keys: &Keys,
    watch: &KeyWatch,
    event: &(dyn Fn(&str) -> Event + Sync),
) -> Result<i64, RotateError> {
    let version = store
        .system_keys()
        .await?
        .iter()
        .filter(|k| k.name == TOKEN_HASH_KEY)
        .map(|k| k.version)
        .max()
        .unwrap_or(0)
        + 1;
    let (kek_version, wrapped) = keys
        .master()
        .new_system_key(TOKEN_HASH_KEY, version)
        .map_err(KeyError::from)?;
    let row = SystemKeyRow {
        name: TOKEN_HASH_KEY.into(),
        version,
        kek_version,
        wrapped,
    };
    match audit
        .record_with(
            vec![event("key.rotate")
                .target(&format!("token_hash:v{version}"))
                .outcome(Decision::Allow, "started")],
            store.add_system_key_op(row),
        )
        .await
    {
        Err(CommitError::Change(StoreError::Conflict)) => {
            return Err(RotateError::Refused(format!(
                "token-hash key version {version} was added meanwhile by another rotation"
            )))
        }
        other => other?,
    }
    watch.reload(keys, store).await?;
    Ok(version)
}

/// Destroys token-hash key `version`: refused while it is the newest or while a live
/// token is still hashed under it (with how many, and when the last expires).
pub async fn retire_token_hash(
    store: &Store,
    audit: &Audit,
    keys: &Keys,
    watch: &KeyWatch,
    version: i64,
    event: &(dyn Fn(&str) -> Event + Sync),
) -> Result<(), RotateError> {
    let versions: Vec<i64> = store
        .system_keys()
        .await?
        .iter()
        .filter(|k| k.name == TOKEN_HASH_KEY)
        .map(|k| k.version)
        .collect();
    if !versions.contains(&version) {
        return Err(RotateError::Refused(format!(
            "this vault has no token-hash key version {version} (left: {versions:?})"
        )));
    }
    if versions.iter().all(|v| *v <= version) {
        return Err(RotateError::Refused(format!(
            "token-hash key version {version} is the active version; rotate to a new one first (`piivault keys rotate --token-hash`)"
        )));
    }
    let now = crate::store::now_ms();
    let live = store
        .tokens_per_hash_key(now)
        .await?
        .into_iter()
        .find(|(v, _, _)| *v == version)
        .map_or(0, |(_, live, _)| live);
    if live > 0 {
        return Err(RotateError::Refused(format!(
            "{live} live token(s) are still hashed under token-hash key version {version}; each moves to the new version when next used: wait until they have been used, have expired or are revoked (`piivault token list`)"
        )));
    }
    match audit
        .record_with(
            vec![event("key.retire").target(&format!("token_hash:v{version}"))],
            store.destroy_token_hash_key_op(version, now),
        )
        .await
    {
        Err(CommitError::Change(StoreError::Conflict)) => {
            return Err(RotateError::Refused(format!(
                "a live token is under token-hash key version {version} again, or it is the newest; run this again"
            )))
        }
        other => other?,
    }
    watch.reload(keys, store).await?;
    Ok(())
}
