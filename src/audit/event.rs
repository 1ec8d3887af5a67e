use sha2::{Digest, Sha256};

use crate::store::{now_ms, AuditRow, AuditRowRef};

/// The outcome an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by policy and done.
    Allow,
    /// Refused by policy (or purpose, or consent).
    Deny,
    /// Allowed, but the operation failed (no such subject, invalid input, integrity).
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Error => "error",
        }
    }
}

/// An audit event before it is numbered and chained. Ids, names and codes only:
/// never a value, never a secret.
#[derive(Debug, Clone)]
pub struct Event {
    pub actor_token: String,
    pub actor_role: String,
    pub action: String,
    pub subject: Option<String>,
    pub field: Option<String>,
    /// What else the event is about: a record id, a token id, a policy digest.
    pub target: Option<String>,
    pub purpose: String,
    pub decision: Decision,
    pub reason: String,
    pub request_id: String,
}

impl Event {
    pub fn new(
        actor_token: &str,
        actor_role: &str,
        purpose: &str,
        request_id: &str,
        action: &str,
    ) -> Self {
        Self {
            actor_token: actor_token.to_owned(),
            actor_role: actor_role.to_owned(),
            action: action.to_owned(),
            subject: None,
            field: None,
            target: None,
            purpose: purpose.to_owned(),
            decision: Decision::Allow,
            reason: "ok".to_owned(),
            request_id: request_id.to_owned(),
        }
    }

    pub fn subject(mut self, subject: &str) -> Self {
        self.subject = Some(subject.to_owned());
        self
    }

    pub fn field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    pub fn target(mut self, target: &str) -> Self {
        self.target = Some(target.to_owned());
        self
    }

    pub fn outcome(mut self, decision: Decision, reason: &str) -> Self {
        self.decision = decision;
        self.reason = reason.to_owned();
        self
    }

    pub(crate) fn into_row(self) -> AuditRow {
        AuditRow {
            seq: 0,
            ts: now_ms(),
            actor_token: self.actor_token,
            actor_role: self.actor_role,
            action: self.action,
            subject: self.subject,
            field: self.field,
            target: self.target,
            purpose: self.purpose,
            decision: self.decision.as_str().to_owned(),
            reason: self.reason,
            request_id: self.request_id,
            prev_hash: Vec::new(),
            hash: Vec::new(),
        }
    }
}

/// SHA-256 over the previous hash and a canonical, length-prefixed encoding of every
/// column of the event (absent values encoded apart from empty ones).
pub fn chain_hash(row: AuditRowRef<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"piivault/audit/v1");
    h.update(row.prev_hash);
    h.update(row.seq.to_be_bytes());
    h.update(row.ts.to_be_bytes());
    let text = |h: &mut Sha256, s: Option<&str>| match s {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
    };
    for s in [
        Some(row.actor_token),
        Some(row.actor_role),
        Some(row.action),
        row.subject,
        row.field,
        row.target,
        Some(row.purpose),
        Some(row.decision),
        Some(row.reason),
        Some(row.request_id),
    ] {
        text(&mut h, s);
    }
    h.finalize().into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_every_column() {
        let base = Event::new("tok_a", "billing", "billing", "req_1", "read")
            .subject("sub_1")
            .field("bank_card")
            .into_row();
        let h = chain_hash(base.borrowed());
        let mut variants = Vec::new();
        let mut r = base.clone();
        r.seq = 1;
        variants.push(r);
        let mut r = base.clone();
        r.ts += 1;
        variants.push(r);
        let mut r = base.clone();
        r.field = None;
        variants.push(r);
        let mut r = base.clone();
        r.field = Some(String::new());
        variants.push(r);
        let mut r = base.clone();
        r.decision = "deny".into();
        variants.push(r);
        let mut r = base.clone();
        r.prev_hash = vec![1];
        variants.push(r);
        let mut r = base.clone();
        r.subject = Some("sub_1b".into());
        r.field = Some("ank_card".into());
        variants.push(r);
        for v in variants {
            assert_ne!(chain_hash(v.borrowed()), h, "{v:?}");
        }
    }
}
