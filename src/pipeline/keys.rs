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

/// What `POST /v1/keys/rotations` asks for.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// `data` (re-encrypt every value under new data keys), `master` (wrap every key
    /// again under a new master-key version), `blind_index` (a new blind-index key,
    /// every subject indexed again under it) or `token_hash` (a new token-hash key;
    /// tokens move to it as they are used).
    pub kind: String,
    /// Subjects (`data`) or keys (`master`) per transaction.
    pub batch: Option<u32>,
    /// At most this many subjects or keys a second.
    pub max_rate: Option<u32>,
}

/// Starts a rotation inside the server and answers at once; it runs in the background,
/// each batch audited under this request's token and id, sharing the server's group
/// commits (on SQLite, unlike a second process, it never waits on another process's
/// lock). `GET /v1/keys` shows its progress. One at a time per process; an
/// interrupted one (a restart) resumes when started again, here or from the CLI.
#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
pub async fn rotate(state: &Pipeline, who: &Authorized, body: RotateInput) -> Result<Value, Error> {
    let event = who.event("key.rotate");
    who.require(state, "keys", "admin", event.clone()).await?;
    let target: &'static str = match body.kind.as_str() {
        "data" => "data",
        "master" => "master",
        "blind_index" => "blind_index",
        "token_hash" => "token_hash",
        _ => {
            return Err(Error::bad_request(
                "unknown_rotation",
                "kind must be \"data\" (re-encrypt), \"master\" (wrap again), \"blind_index\" (index again under a new key) or \"token_hash\" (a new token-hash key)",
            ))
        }
    };
    let batch = body
        .batch
        .unwrap_or(if target == "master" { 1000 } else { 100 });
    if !(1..=50_000).contains(&batch) || body.max_rate == Some(0) {
        return Err(Error::bad_request(
            "invalid_rotation",
            "batch must be 1 to 50000 and max_rate at least 1",
        ));
    }
    use std::sync::atomic::Ordering;
    if state.rotation.swap(true, Ordering::AcqRel) {
        return Err(Error::Conflict {
            code: "rotation_running",
            message:
                "a rotation started on this node is still running; GET /v1/keys shows its progress"
                    .into(),
        });
    }
    if let Err(e) = state
        .audit
        .record_one(
            event
                .target(target)
                .outcome(crate::audit::Decision::Allow, "requested"),
        )
        .await
    {
        state.rotation.store(false, Ordering::Release);
        return Err(e.into());
    }
    let pace = crate::keys::Pace {
        batch: batch as usize,
        max_per_second: body.max_rate,
        force: false,
    };
    let (state, caller) = (state.clone(), who.clone());
    tokio::spawn(async move {
        let event = |action: &str| caller.event(action);
        let (keys, watch) = state.vault.keys();
        let quiet = |_: u64, _: u64| {};
        let searchable = state.vault.catalogue().searchable_fields();
        let (store, audit) = (&state.store, &state.audit);
        let outcome = match target {
            "data" => crate::keys::reencrypt_data(
                store,
                audit,
                keys,
                watch,
                &searchable,
                pace,
                &event,
                &quiet,
            )
            .await
            .map(line),
            "blind_index" => crate::keys::rotate_blind_index(
                store,
                audit,
                keys,
                watch,
                &searchable,
                pace,
                &event,
                &quiet,
            )
            .await
            .map(line),
            "token_hash" => crate::keys::rotate_token_hash(store, audit, keys, watch, &event)
                .await
                .map(|version| line(serde_json::json!({ "version": version }))),
            _ => crate::keys::rotate_master(store, audit, keys, watch, pace, &event, &quiet)
                .await
                .map(line),
        };
        match outcome {
            Ok(report) => tracing::info!(kind = target, %report, "rotation finished"),
            Err(e) => tracing::error!(kind = target, error = %e, "rotation stopped"),
        }
        state.rotation.store(false, Ordering::Release);
    });
    Ok(
        serde_json::json!({ "kind": target, "batch": batch, "max_rate": body.max_rate, "started": true }),
    )
}

/// A rotation's report as one JSON line for the log.
fn line<T: serde::Serialize>(report: T) -> String {
    serde_json::to_string(&report).unwrap_or_default()
}
