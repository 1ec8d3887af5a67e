//! Rotating the audit signing key (`piivault keys rotate --audit`): the chain is
//! signed up to now with the old key, a new key replaces it in its file (the old
//! public half is kept beside it, so what it signed still verifies), every node is told
//! through the change feed, and the new key signs from the next checkpoint on.

use std::sync::Arc;

use crate::audit::{Audit, Decision, Event};
use crate::crypto::AuditKey;
use crate::store::Store;

use super::RotateError;

/// What an audit-key rotation did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRotation {
    pub old_key_id: String,
    pub new_key_id: String,
    /// Where the old public key is kept.
    pub kept_public_key: String,
}

/// Rotates the audit signing key: see the module's documentation.
pub async fn rotate_audit(
    store: &Store,
    audit: &Audit,
    event: &(dyn Fn(&str) -> Event + Sync),
) -> Result<AuditRotation, RotateError> {
    let path = audit.key_file().map(ToOwned::to_owned).ok_or_else(|| {
        RotateError::Refused("the audit signing key does not come from a file".into())
    })?;
    // Everything so far is signed by the old key: a chain that does not verify is
    // not signed again by a new one.
    audit.checkpoint_now().await.map_err(|e| {
        RotateError::Refused(format!(
            "the audit chain could not be signed up to now ({e}); run `piivault audit verify`"
        ))
    })?;
    let (old, kept, new) = AuditKey::rotate_file(&path).map_err(|e| RotateError::Key(e.into()))?;
    let rotation = AuditRotation {
        old_key_id: old.key_id().to_owned(),
        new_key_id: new.public().key_id().to_owned(),
        kept_public_key: kept.display().to_string(),
    };
    audit.set_key(Arc::new(new));
    audit
        .record_with(
            vec![event("key.rotate")
                .target(&format!("audit:{}", rotation.new_key_id))
                .outcome(
                    Decision::Allow,
                    &format!("replaces {}", rotation.old_key_id),
                )],
            store.keys_changed_op("audit"),
        )
        .await?;
    audit.checkpoint_now().await.map_err(|e| {
        RotateError::Refused(format!("the new key could not sign a checkpoint: {e}"))
    })?;
    Ok(rotation)
}
