//! Retention (PIPL Art. 19, 47): every field and collection has a retention period in the
//! classification; the sweeper erases what has outlived it, except for subjects under a
//! legal hold, and records every erasure and every hold in the audit trail first.

use std::sync::Arc;

use serde::Serialize;

use crate::audit::{Audit, AuditError, CommitError, Decision, Event};
use crate::classify::Catalogue;
use crate::crypto::random_id;
use crate::store::{Store, StoreError};

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// One value or record the sweep found past its retention.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SweepItem {
    pub subject: String,
    /// The field or collection.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
}

/// What a sweep did (or, dry, would do).
#[derive(Debug, Clone, Serialize, Default)]
pub struct SweepReport {
    pub dry_run: bool,
    pub erased: Vec<SweepItem>,
    pub held: Vec<SweepItem>,
}

#[derive(Debug, Clone)]
pub struct Retention {
    store: Store,
    catalogue: Arc<Catalogue>,
    audit: Audit,
    /// Told about every subject a sweep changed, so that its cache forgets it at once.
    vault: crate::vault::Vault,
}

impl Retention {
    pub fn new(
        store: Store,
        catalogue: Arc<Catalogue>,
        audit: Audit,
        vault: crate::vault::Vault,
    ) -> Self {
        Self {
            store,
            catalogue,
            audit,
            vault,
        }
    }

    /// Sweeps as of `now_ms` (a parameter so that tests control the clock).
    pub async fn sweep(&self, now_ms: i64, dry_run: bool) -> Result<SweepReport, RetentionError> {
        let run = random_id("sweep");
        let event = |action: &str| Event::new("system", "vault", "retention", &run, action);
        let mut report = SweepReport {
            dry_run,
            ..Default::default()
        };
        // Everything past its period: (field or collection, cut-off, row).
        let mut due = Vec::new();
        for f in self.catalogue.fields() {
            let cutoff = now_ms - i64::from(f.retention.days) * DAY_MS;
            for row in self.store.expired_fields(&f.name, cutoff).await? {
                due.push((f.name.as_str(), cutoff, row));
            }
        }
        for c in self.catalogue.collections() {
            let cutoff = now_ms - i64::from(c.retention.days) * DAY_MS;
            for row in self.store.expired_records(&c.name, cutoff).await? {
                due.push((c.name.as_str(), cutoff, row));
            }
        }
        for (name, cutoff, row) in due {
            let item = SweepItem {
                subject: row.subject_id.clone(),
                name: name.to_owned(),
                record: row.record_id.clone(),
            };
            let mut e = event(if row.held {
                "retention.hold"
            } else {
                "retention.erase"
            })
            .subject(&row.subject_id)
            .field(name);
            if let Some(record) = &row.record_id {
                e = e.target(record);
            }
            if row.held {
                if !dry_run {
                    self.audit
                        .record_one(e.outcome(Decision::Deny, "legal_hold"))
                        .await?;
                }
                report.held.push(item);
                continue;
            }
            if !dry_run {
                // The erasure and its event commit together: never one without the
                // other, and a value another sweep (on this node or another) erased
                // first, or that changed since it was found, is neither erased nor
                // recorded again.
                let change = match &row.record_id {
                    Some(record) => self.store.erase_expired_record_op(record),
                    None => self
                        .store
                        .erase_expired_field_op(&row.subject_id, name, cutoff),
                };
                match self.audit.record_with(vec![e], change).await {
                    Ok(()) => self.vault.forget(&row.subject_id),
                    Err(CommitError::Change(StoreError::NotFound)) => continue,
                    Err(CommitError::Change(e)) => return Err(e.into()),
                    Err(CommitError::Audit(e)) => return Err(e.into()),
                }
            }
            report.erased.push(item);
        }
        let summary = format!("erased={},held={}", report.erased.len(), report.held.len());
        self.audit
            .record_one(
                event("retention.sweep")
                    .target(&summary)
                    .outcome(Decision::Allow, if dry_run { "dry_run" } else { "ok" }),
            )
            .await?;
        if !dry_run && !report.erased.is_empty() {
            self.store.checkpoint().await;
        }
        tracing::info!(
            dry_run,
            erased = report.erased.len(),
            held = report.held.len(),
            "retention sweep"
        );
        Ok(report)
    }
}
