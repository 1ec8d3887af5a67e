//! The audit trail: one event per decision and change, chained by SHA-256, appended in
//! group commits, anchored by signed checkpoints, verified by walking the chain.

mod event;
mod reports;
mod trail;
mod verify;

pub use event::{chain_hash, Decision, Event};
pub use reports::{parse_bound, ReportDef, ReportError, ReportResult, Reports};
pub use trail::{Audit, AuditConfig, AuditError, CommitError};
pub use verify::{
    read_checkpoint_file, verify, verify_archive, write_archive, ArchiveError, VerifyReport,
    VERIFY_READERS,
};
