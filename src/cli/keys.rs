//! `piivault keys`: the key inventory. (Rotation, retirement and external key sources
//! come with the key-lifecycle work; until then this shows what exists.)

use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Settings;
use crate::crypto::AuditPublicKey;
use crate::store::Store;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Every key version: master-key versions, the system keys (blind index, token
    /// hash) and the master version wrapping each, data keys counted per version, and
    /// the audit signing keys whose public halves are beside the signing key. Shows no
    /// key material, and needs no master key.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: &Settings, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    let KeysCommand::List { json } = cmd;
    let store = Store::connect(&settings.database_url, 2)
        .await
        .context("opening the store")?;
    let mut rows = store.key_inventory().await?;
    store.close().await;
    let current_master = rows
        .iter()
        .filter(|r| r.kind == "master")
        .map(|r| r.version)
        .max();
    let audit_keys = audit_public_keys(settings);
    if json {
        let keys: Vec<_> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["state"] = state(r, current_master).into();
                v["algorithm"] = algorithm(&r.kind).into();
                v
            })
            .collect();
        let audit: Vec<_> = audit_keys
            .iter()
            .map(|k| serde_json::json!({"kind": "audit_signing", "key_id": k.key_id(), "algorithm": "Ed25519"}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"keys": keys, "audit": audit}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    rows.sort_by(|a, b| {
        order(&a.kind)
            .cmp(&order(&b.kind))
            .then(a.version.cmp(&b.version))
    });
    println!(
        "{:<12} {:>7} {:<13} {:<12} {:<25} {:>10} {:>12}",
        "key", "version", "algorithm", "state", "created (UTC)", "keys", "encryptions"
    );
    for r in &rows {
        let wrapped = r
            .wrapped_by
            .map(|k| format!(" (under master v{k})"))
            .unwrap_or_default();
        println!(
            "{:<12} {:>7} {:<13} {:<12} {:<25} {:>10} {:>12}{wrapped}",
            r.kind,
            r.version,
            algorithm(&r.kind),
            state(r, current_master),
            crate::store::rfc3339(r.created_at),
            r.keys,
            r.encryptions,
        );
    }
    for k in &audit_keys {
        println!(
            "{:<12} {:>7} {:<13} {:<12} key id {}",
            "audit",
            "-",
            "Ed25519",
            "trusted",
            k.key_id()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn order(kind: &str) -> u8 {
    match kind {
        "master" => 0,
        "data" => 2,
        _ => 1,
    }
}

fn algorithm(kind: &str) -> &'static str {
    match kind {
        "master" | "data" => "AES-256-GCM",
        _ => "HMAC-SHA256",
    }
}

/// Master versions: the newest wraps new keys (active), older ones only unwrap.
fn state(r: &crate::store::KeyVersionRow, current_master: Option<i64>) -> &'static str {
    match r.kind.as_str() {
        "master" if Some(r.version) == current_master => "active",
        "master" => "decrypt-only",
        _ => "active",
    }
}

/// The audit public keys beside the signing key (`*.pub`), those that parse.
fn audit_public_keys(settings: &Settings) -> Vec<AuditPublicKey> {
    super::audit::default_public_keys(settings)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| AuditPublicKey::parse(&t).ok())
        .collect()
}
