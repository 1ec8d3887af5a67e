//! The audit trail: one event per decision and change, chained by SHA-256, appended in
//! group commits, anchored by signed checkpoints, verified by walking the chain.

mod event;
mod pack;
mod reports;
mod trail;
mod verify;

pub use event::{chain_hash, Decision, Event};
pub use pack::{compliance_pack, verify_pack, PackFile};
pub use reports::{parse_bound, ReportDef, ReportError, ReportResult, Reports};
pub use trail::{Audit, AuditConfig, AuditError, CommitError};
pub use verify::{
    read_checkpoint_file, verify, verify_archive, write_archive, ArchiveError, VerifyReport,
    VERIFY_PAGE, VERIFY_READERS,
};

/// The audit public keys in the `*.pub` files of `dir` (other nodes' keys, and this
/// node's earlier keys kept by a rotation); files that do not parse are logged and left
/// out.
pub fn public_keys_in(dir: &std::path::Path) -> Vec<crate::crypto::AuditPublicKey> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_none_or(|e| e != "pub") {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(&path) {
            match crate::crypto::AuditPublicKey::parse(&text) {
                Ok(k) => keys.push(k),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "not an audit public key")
                }
            }
        }
    }
    keys
}
