//! The key inventory for admins (`GET /v1/keys`): audited, no key material.

use serde_json::Value;

use super::{Authorized, Error, Pipeline};

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
pub async fn list(state: &Pipeline, who: &Authorized) -> Result<Value, Error> {
    let event = who.event("key.list");
    who.require(state, "keys", "admin", event.clone()).await?;
    state.audit.record_one(event).await?;
    let inventory = crate::keys::inventory(&state.store, &state.trusted_keys())
        .await
        .map_err(Error::store)?;
    serde_json::to_value(inventory).map_err(Error::internal)
}
