//! Consent per subject and purpose: granted with the privacy-notice version shown and the
//! channel it came through, separate consent flagged (Art. 29, 39), withdrawable at any
//! time (Art. 15), history never rewritten; a purpose's new version voids older consents
//! (Art. 14).

use serde::Serialize;

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Audit, AuditError, CommitError, Event};
use crate::authz::{PurposeSpec, SeparateConsent};
use crate::cache::Cache;
use crate::store::{now_ms, rfc3339, ConsentRow, Store, StoreError};
use crate::vault::SubjectId;

#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("no such subject")]
    NotFound,
    #[error("purpose {0:?} does not rest on consent; nothing to grant or withdraw")]
    NotConsentBased(String),
    #[error("{0}")]
    Invalid(String),
    #[error("there is no active consent to withdraw")]
    NothingToWithdraw,
    #[error(transparent)]
    Store(StoreError),
    /// The audit event could not be written, so nothing was changed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl From<StoreError> for ConsentError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            other => Self::Store(other),
        }
    }
}

impl From<CommitError> for ConsentError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Audit(a) => Self::Audit(a),
            CommitError::Change(s) => s.into(),
        }
    }
}

/// What a grant records.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// The privacy-notice version the subject was shown.
    pub notice_version: String,
    /// How the consent came in: app, web, phone, paper, …
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Separate consent (PIPL Art. 29 for sensitive PI, Art. 39 for transfer abroad).
    #[serde(default)]
    pub separate: bool,
    /// Given by a parent or guardian (PIPL Art. 31).
    #[serde(default)]
    pub guardian: bool,
}

fn default_channel() -> String {
    "api".into()
}

/// The outcome of a consent check for one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentCheck {
    /// The purpose does not rest on consent, or consent covers this read.
    Covered,
    Missing,
    /// Consent was given to an earlier version of the purpose.
    Outdated,
    /// Sensitive PI (or a purpose that always needs it) without separate consent.
    SeparateMissing,
    /// A minor's data without a parent's or guardian's consent (Art. 31).
    GuardianMissing,
    /// The subject refused processing for this purpose (Art. 24 ¶2).
    OptedOut,
}

impl ConsentCheck {
    /// The stable reason code for a refusal.
    pub fn code(self) -> Option<&'static str> {
        match self {
            Self::Covered => None,
            Self::Missing => Some("consent_missing"),
            Self::Outdated => Some("consent_outdated"),
            Self::SeparateMissing => Some("separate_consent_missing"),
            Self::GuardianMissing => Some("guardian_consent_missing"),
            Self::OptedOut => Some("opted_out"),
        }
    }
}

/// One purpose's current state for a subject.
#[derive(Debug, Clone, Serialize)]
pub struct ConsentState {
    pub purpose: String,
    pub active: bool,
    pub purpose_version: i64,
    pub current_purpose_version: i64,
    pub notice_version: String,
    pub channel: String,
    pub separate: bool,
    pub guardian: bool,
    pub since: String,
}

/// One entry of the history.
#[derive(Debug, Clone, Serialize)]
pub struct ConsentEvent {
    pub purpose: String,
    pub kind: String,
    pub purpose_version: i64,
    pub notice_version: String,
    pub channel: String,
    pub separate: bool,
    pub guardian: bool,
    pub by: String,
    pub at: String,
}

/// How long a consent state is trusted without asking the store again. A change does
/// not wait for this: it is forgotten at once here and through the change feed elsewhere.
const CONSENT_CACHE_TTL: Duration = Duration::from_secs(30);
const CONSENT_CACHE_MAX: usize = 100_000;

#[derive(Debug, Clone)]
pub struct Consents {
    store: Store,
    audit: Audit,
    /// The newest grant or withdrawal per (subject, purpose); `None`: there is none.
    cache: Arc<Cache<(String, String), Option<ConsentRow>>>,
    /// Purposes that have entries in the cache (a handful), so that forgetting a
    /// subject removes its entries one by one instead of scanning the cache.
    purposes: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

fn check_text(what: &str, s: &str) -> Result<(), ConsentError> {
    if s.is_empty() || s.chars().count() > 64 || s.chars().any(char::is_control) {
        return Err(ConsentError::Invalid(format!(
            "{what} must be 1 to 64 characters without control characters"
        )));
    }
    Ok(())
}

impl Consents {
    pub fn new(store: Store, audit: Audit) -> Self {
        Self {
            store,
            audit,
            cache: Arc::new(Cache::new("consents", CONSENT_CACHE_MAX, CONSENT_CACHE_TTL)),
            purposes: Default::default(),
        }
    }

    fn cached_purposes(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.purposes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets what is cached about a subject (its consent changed, or it was erased).
    pub fn forget_subject(&self, subject: &str) {
        let purposes: Vec<String> = self.cached_purposes().iter().cloned().collect();
        for p in purposes {
            self.cache.remove(&(subject.to_owned(), p));
        }
    }

    pub(crate) fn cache_enabled(&self, on: bool) {
        self.cache.set_enabled(on);
    }

    /// The newest grant or withdrawal, from the cache or the store.
    async fn current(
        &self,
        subject: &str,
        purpose: &str,
    ) -> Result<Option<ConsentRow>, StoreError> {
        let key = (subject.to_owned(), purpose.to_owned());
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit);
        }
        let generation = self.cache.generation();
        let current = self.store.current_consent(subject, purpose).await?;
        if !self.cached_purposes().contains(purpose) {
            self.cached_purposes().insert(purpose.to_owned());
        }
        self.cache.insert(generation, key, current.clone());
        Ok(current)
    }

    /// Appends a grant or withdrawal with its audit event, then forgets the cached state.
    async fn append(&self, row: ConsentRow, event: Event) -> Result<(), ConsentError> {
        let subject = row.subject_id.clone();
        let result = self
            .audit
            .record_with(vec![event], self.store.append_consent_op(row))
            .await;
        self.forget_subject(&subject);
        Ok(result?)
    }

    /// Records a grant, committed with `event`.
    /// The consent event a grant would append, checked (an import stores many of them
    /// with the subjects they belong to).
    pub fn grant_row(
        subject: &SubjectId,
        purpose: &str,
        spec: &PurposeSpec,
        req: &GrantRequest,
        actor_token: &str,
    ) -> Result<ConsentRow, ConsentError> {
        if !spec.requires_consent() {
            return Err(ConsentError::NotConsentBased(purpose.to_owned()));
        }
        check_text("notice_version", &req.notice_version)?;
        check_text("channel", &req.channel)?;
        Ok(ConsentRow {
            seq: 0,
            subject_id: subject.as_str().to_owned(),
            purpose: purpose.to_owned(),
            kind: "grant".into(),
            purpose_version: spec.version,
            notice_version: req.notice_version.clone(),
            channel: req.channel.clone(),
            separate: req.separate,
            guardian: req.guardian,
            actor_token: actor_token.to_owned(),
            at: now_ms(),
        })
    }

    pub async fn grant(
        &self,
        subject: &SubjectId,
        purpose: &str,
        spec: &PurposeSpec,
        req: &GrantRequest,
        actor_token: &str,
        event: Event,
    ) -> Result<ConsentState, ConsentError> {
        let row = Self::grant_row(subject, purpose, spec, req, actor_token)?;
        let answer = state(&row, spec);
        self.append(row, event).await?;
        Ok(answer)
    }

    /// Records a withdrawal, committed with `event`.
    pub async fn withdraw(
        &self,
        subject: &SubjectId,
        purpose: &str,
        spec: &PurposeSpec,
        channel: &str,
        actor_token: &str,
        event: Event,
    ) -> Result<(), ConsentError> {
        if !spec.requires_consent() {
            return Err(ConsentError::NotConsentBased(purpose.to_owned()));
        }
        check_text("channel", channel)?;
        let current = self
            .store
            .current_consent(subject.as_str(), purpose)
            .await?;
        let Some(current) = current.filter(|c| c.kind == "grant") else {
            if !self.store.subject_active(subject.as_str()).await? {
                return Err(ConsentError::NotFound);
            }
            return Err(ConsentError::NothingToWithdraw);
        };
        let row = ConsentRow {
            kind: "withdraw".into(),
            channel: channel.to_owned(),
            actor_token: actor_token.to_owned(),
            at: now_ms(),
            ..current
        };
        self.append(row, event).await
    }

    /// The consent in force for one subject and purpose, and whether the subject
    /// refused the purpose (a refusable one), to check reads against.
    pub async fn gate(
        &self,
        subject: &SubjectId,
        purpose: &str,
        spec: &PurposeSpec,
        minor: bool,
    ) -> Result<ConsentGate, ConsentError> {
        let current = if spec.requires_consent() {
            self.current(subject.as_str(), purpose).await?
        } else {
            None
        };
        let opted_out = spec.refusable
            && self
                .current(subject.as_str(), &format!("opt_out:{purpose}"))
                .await?
                .is_some_and(|c| c.kind == "grant");
        Ok(ConsentGate {
            spec: spec.clone(),
            current,
            minor,
            opted_out,
        })
    }

    /// The current state per purpose and the whole history.
    /// `spec_of` says what each consent purpose is (a declared purpose, or a recipient).
    pub async fn list(
        &self,
        subject: &SubjectId,
        spec_of: impl Fn(&str) -> Option<PurposeSpec>,
    ) -> Result<(Vec<ConsentState>, Vec<ConsentEvent>), ConsentError> {
        if !self.store.subject_active(subject.as_str()).await? {
            return Err(ConsentError::NotFound);
        }
        let history = self.store.consent_history(subject.as_str()).await?;
        let mut latest: std::collections::BTreeMap<&str, &ConsentRow> = Default::default();
        for row in &history {
            latest.insert(row.purpose.as_str(), row);
        }
        let states = latest
            .values()
            .filter_map(|row| spec_of(&row.purpose).map(|spec| state(row, &spec)))
            .collect();
        let events = history
            .iter()
            .map(|r| ConsentEvent {
                purpose: r.purpose.clone(),
                kind: r.kind.clone(),
                purpose_version: r.purpose_version,
                notice_version: r.notice_version.clone(),
                channel: r.channel.clone(),
                separate: r.separate,
                guardian: r.guardian,
                by: r.actor_token.clone(),
                at: rfc3339(r.at),
            })
            .collect();
        Ok((states, events))
    }
}

/// The consent in force for one subject and purpose.
#[derive(Debug, Clone)]
pub struct ConsentGate {
    spec: PurposeSpec,
    current: Option<ConsentRow>,
    minor: bool,
    /// The subject refused the purpose outright (`opt_out:NAME` in force).
    opted_out: bool,
}

impl ConsentGate {
    /// Whether reading a field (sensitive or not) is covered.
    pub fn check(&self, sensitive: bool) -> ConsentCheck {
        if self.opted_out {
            return ConsentCheck::OptedOut;
        }
        if !self.spec.requires_consent() {
            return ConsentCheck::Covered;
        }
        match evaluate(self.current.as_ref(), &self.spec, sensitive) {
            ConsentCheck::Covered
                if self.minor && !self.current.as_ref().is_some_and(|c| c.guardian) =>
            {
                ConsentCheck::GuardianMissing
            }
            other => other,
        }
    }
}

fn evaluate(current: Option<&ConsentRow>, spec: &PurposeSpec, sensitive: bool) -> ConsentCheck {
    let Some(c) = current.filter(|c| c.kind == "grant") else {
        return ConsentCheck::Missing;
    };
    if c.purpose_version != spec.version {
        return ConsentCheck::Outdated;
    }
    let needs_separate = sensitive || spec.separate_consent == SeparateConsent::Always;
    if needs_separate && !c.separate {
        return ConsentCheck::SeparateMissing;
    }
    ConsentCheck::Covered
}

fn state(row: &ConsentRow, spec: &PurposeSpec) -> ConsentState {
    ConsentState {
        purpose: row.purpose.clone(),
        active: row.kind == "grant" && row.purpose_version == spec.version,
        purpose_version: row.purpose_version,
        current_purpose_version: spec.version,
        notice_version: row.notice_version.clone(),
        channel: row.channel.clone(),
        separate: row.separate,
        guardian: row.guardian,
        since: rfc3339(row.at),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::authz::LegalBasis;

    fn spec(version: i64, separate: SeparateConsent) -> PurposeSpec {
        PurposeSpec {
            description: String::new(),
            legal_basis: LegalBasis::Consent,
            version,
            separate_consent: separate,
            refusable: false,
            automated_decision: false,
            pipia: None,
        }
    }

    fn row(kind: &str, version: i64, separate: bool) -> ConsentRow {
        ConsentRow {
            seq: 1,
            subject_id: "sub_x".into(),
            purpose: "marketing".into(),
            kind: kind.into(),
            purpose_version: version,
            notice_version: "v1".into(),
            channel: "app".into(),
            separate,
            guardian: false,
            actor_token: "tok_x".into(),
            at: 0,
        }
    }

    #[test]
    fn consent_rules() {
        let s = spec(2, SeparateConsent::Sensitive);
        assert_eq!(evaluate(None, &s, false), ConsentCheck::Missing);
        assert_eq!(
            evaluate(Some(&row("withdraw", 2, true)), &s, false),
            ConsentCheck::Missing
        );
        assert_eq!(
            evaluate(Some(&row("grant", 1, true)), &s, false),
            ConsentCheck::Outdated
        );
        assert_eq!(
            evaluate(Some(&row("grant", 2, false)), &s, false),
            ConsentCheck::Covered
        );
        assert_eq!(
            evaluate(Some(&row("grant", 2, false)), &s, true),
            ConsentCheck::SeparateMissing
        );
        assert_eq!(
            evaluate(Some(&row("grant", 2, true)), &s, true),
            ConsentCheck::Covered
        );
        let abroad = spec(1, SeparateConsent::Always);
        assert_eq!(
            evaluate(Some(&row("grant", 1, false)), &abroad, false),
            ConsentCheck::SeparateMissing
        );
        let contract = PurposeSpec {
            legal_basis: LegalBasis::Contract,
            ..spec(1, SeparateConsent::Sensitive)
        };
        let gate = ConsentGate {
            spec: contract,
            current: None,
            minor: true,
            opted_out: false,
        };
        assert_eq!(gate.check(true), ConsentCheck::Covered);
        // A refusal outranks any legal basis and any consent.
        let refused = ConsentGate {
            opted_out: true,
            ..gate.clone()
        };
        assert_eq!(refused.check(false), ConsentCheck::OptedOut);
        assert_eq!(ConsentCheck::OptedOut.code(), Some("opted_out"));
        let minor = ConsentGate {
            spec: spec(2, SeparateConsent::Sensitive),
            current: Some(row("grant", 2, true)),
            minor: true,
            opted_out: false,
        };
        assert_eq!(minor.check(false), ConsentCheck::GuardianMissing);
        let mut with_guardian = minor.clone();
        if let Some(c) = with_guardian.current.as_mut() {
            c.guardian = true;
        }
        assert_eq!(with_guardian.check(false), ConsentCheck::Covered);
    }
}
