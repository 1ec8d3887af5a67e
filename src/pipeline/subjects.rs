//! Subjects: create, read, correct, erase, look up; records per collection. Every
//! decision and change is recorded in the audit trail before anything leaves: reads
//! are audited after decryption and before the answer is returned; a change commits in
//! the same transaction as its events (a change that fails records an `error` event
//! instead).

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{reason_code, Authorized, Error, Pipeline};
use crate::audit::{Decision, Event};
use crate::authz::FieldAccess;
use crate::classify::ValidationError;
use crate::pipl::ConsentGate;
use crate::vault::{SubjectId, VaultError, View};

/// A subject id from a path or body; a malformed id is simply a subject that does not
/// exist.
pub fn subject_id(raw: &str) -> Result<SubjectId, Error> {
    SubjectId::parse(raw).ok_or_else(Error::subject_not_found)
}

/// Art. 47 ¶2: a subject under legal hold is restricted to storage. Reads need the
/// policy's `legal_hold` read grant; changes are refused for everyone.
async fn hold_check(
    state: &Pipeline,
    who: &Authorized,
    id: &SubjectId,
    event: &Event,
    reading: bool,
) -> Result<(), Error> {
    let held = state
        .store
        .legal_hold(id.as_str())
        .await
        .map_err(Error::internal)?
        .is_some();
    refuse_if_held(state, who, held, event, reading).await
}

/// [`hold_check`] on a hold state already read.
async fn refuse_if_held(
    state: &Pipeline,
    who: &Authorized,
    held: bool,
    event: &Event,
    reading: bool,
) -> Result<(), Error> {
    if held && !(reading && who.may("legal_hold", "read")) {
        state
            .audit
            .record_one(event.clone().outcome(Decision::Deny, "legal_hold"))
            .await?;
        return Err(Error::Forbidden {
            code: "legal_hold",
            message: "this subject is under a legal hold: its data is kept in storage only".into(),
            field: None,
        });
    }
    Ok(())
}

/// The subject's consent to the request's purpose, when that purpose rests on consent.
/// `snapshot`: the subject as already read (`None`: not read yet).
pub(super) async fn consent_gate(
    state: &Pipeline,
    who: &Authorized,
    id: &SubjectId,
    snapshot: Option<Option<&crate::vault::Subject>>,
) -> Result<Option<ConsentGate>, Error> {
    match who.policy.purposes().get(&who.purpose) {
        Some(spec) if spec.requires_consent() || spec.refusable => {
            let today = state.vault.today();
            let minor = match snapshot {
                Some(Some(s)) => state.vault.is_minor_in(id, s, today)?,
                Some(None) => false,
                None => state.vault.is_minor(id, today).await?,
            };
            Ok(Some(
                state.consents.gate(id, &who.purpose, spec, minor).await?,
            ))
        }
        _ => Ok(None),
    }
}

/// What a read refused for want of consent says, by its code.
fn consent_refusal(code: &str) -> &'static str {
    match code {
        "consent_outdated" => "the subject consented to an earlier version of this purpose",
        "separate_consent_missing" => "this read needs the subject's separate consent",
        "guardian_consent_missing" => {
            "the subject is a minor: this read needs a parent's or guardian's consent"
        }
        "opted_out" => "the subject refused processing for this purpose (PIPL Art. 24)",
        _ => "this purpose needs the subject's consent, and there is none in force",
    }
}

/// Records that an allowed operation failed, and passes the failure on. A trail that
/// cannot be written is passed on as it is.
pub(super) async fn failed(state: &Pipeline, event: Event, e: VaultError) -> Error {
    if let VaultError::Audit(a) = e {
        return a.into();
    }
    let event = event.outcome(Decision::Error, reason_code(&e));
    if let Err(audit) = state.audit.record_one(event).await {
        return audit.into();
    }
    e.into()
}

/// The fields of a create or a correction. Its `Debug` shows field names, never values.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsInput {
    pub fields: Map<String, Value>,
}

impl std::fmt::Debug for FieldsInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldsInput")
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Every field being written must be writable by this role for this purpose. Returns
/// one event per field, to be committed with the change.
async fn authorise_writes(
    state: &Pipeline,
    who: &Authorized,
    action: &str,
    id: &SubjectId,
    fields: &Map<String, Value>,
) -> Result<Vec<Event>, Error> {
    let catalogue = state.vault.catalogue();
    let mut events = Vec::new();
    for name in fields.keys() {
        if catalogue.field(name).is_err() {
            continue;
        }
        let event = who.event(action).subject(id.as_str()).field(name);
        who.require(state, name, "write", event.clone()).await?;
        events.push(event);
    }
    Ok(events)
}

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
pub async fn create(
    state: &Pipeline,
    who: &Authorized,
    body: &FieldsInput,
) -> Result<Value, Error> {
    let id = state.vault.new_subject_id();
    let events = authorise_writes(state, who, "create", &id, &body.fields).await?;
    if let Err(e) = state.vault.create(&id, &body.fields, events).await {
        return Err(failed(state, who.event("create").subject(id.as_str()), e).await);
    }
    tracing::debug!(subject = %id, fields = ?body.fields.keys().collect::<Vec<_>>(), "subject created");
    Ok(json!({ "id": id.as_str() }))
}

/// Which fields a read asks for.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadInput {
    /// Comma-separated field names; all classified fields when absent.
    pub fields: Option<String>,
    /// Comma-separated field names the caller wants masked.
    pub masked: Option<String>,
}

fn names(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, role = %who.caller.role, purpose = %who.purpose))]
pub async fn read(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
    q: &ReadInput,
) -> Result<Value, Error> {
    let id = subject_id(raw_id)?;
    let catalogue = state.vault.catalogue();
    let masked: BTreeSet<&str> = q
        .masked
        .as_deref()
        .map(names)
        .into_iter()
        .flatten()
        .collect();
    for name in &masked {
        catalogue.field(name).map_err(Error::Invalid)?;
    }
    // Named fields are answered one by one (denied ones say so); without `fields`, the
    // answer holds every field this role may see for this purpose.
    let explicit = q.fields.is_some();
    let requested: Vec<String> = match q.fields.as_deref() {
        Some(list) => names(list).map(str::to_owned).collect(),
        None => catalogue
            .fields()
            .filter(|f| who.field_access(&f.name).is_some())
            .map(|f| f.name.clone())
            .collect(),
    };
    // Hold state, keys and ciphertexts in one round trip.
    let snapshot = state.vault.snapshot(&id).await?;
    let held = snapshot.as_ref().is_some_and(|s| s.legal_hold.is_some());
    refuse_if_held(
        state,
        who,
        held,
        &who.event("read").subject(id.as_str()),
        true,
    )
    .await?;
    let gate = consent_gate(state, who, &id, Some(snapshot.as_deref())).await?;
    let mut wanted = Vec::new();
    let mut denied: Vec<(String, &'static str)> = Vec::new();
    for name in requested {
        let spec = catalogue.field(&name).map_err(Error::Invalid)?;
        if let Some(code) = gate.as_ref().and_then(|g| g.check(spec.sensitive).code()) {
            if who.field_access(&name).is_some() {
                metrics::counter!(crate::metrics::CONSENT_REFUSALS, "code" => code).increment(1);
                denied.push((name, code));
                continue;
            }
        }
        match who.field_access(&name) {
            Some(FieldAccess::Clear) if !masked.contains(name.as_str()) => {
                wanted.push((name, View::Clear))
            }
            Some(_) => wanted.push((name, View::Masked)),
            None => {
                metrics::counter!(crate::metrics::POLICY_REFUSALS, "role" => who.caller.role.clone())
                    .increment(1);
                denied.push((name, "policy_denied"))
            }
        }
    }
    let denials: Vec<Event> = denied
        .iter()
        .map(|(f, code)| {
            who.event("read")
                .subject(id.as_str())
                .field(f)
                .outcome(Decision::Deny, code)
        })
        .collect();
    if wanted.is_empty() {
        let fields: Vec<&str> = denied.iter().map(|(f, _)| f.as_str()).collect();
        let fields = fields.join(",");
        state.audit.record(denials).await?;
        tracing::debug!(fields = %fields, "read denied");
        let code = denied.first().map_or("policy_denied", |(_, c)| *c);
        let message = match code {
            "policy_denied" if explicit => {
                "the policy does not allow reading these fields for this role and purpose"
            }
            "policy_denied" => "this role may read no field for this purpose",
            consent => consent_refusal(consent),
        };
        return Err(Error::Forbidden {
            code,
            message: message.into(),
            field: (!fields.is_empty()).then_some(fields),
        });
    }
    let opened = match &snapshot {
        Some(s) => state.vault.open(&id, s, &wanted),
        None => Err(VaultError::NotFound),
    };
    let fields = match opened {
        Ok(f) => f,
        Err(e) => {
            state.audit.record(denials).await?;
            return Err(failed(state, who.event("read").subject(id.as_str()), e).await);
        }
    };
    // Durable before the values leave: one event per field handed out, one per refusal.
    let mut events = denials;
    for (name, out) in &fields {
        let action = if out.masked { "read_masked" } else { "read" };
        events.push(who.event(action).subject(id.as_str()).field(name));
    }
    state.audit.record(events).await?;
    tracing::debug!(fields = ?fields.keys().collect::<Vec<_>>(), denied = denied.len(), "subject read");
    let mut answer = serde_json::to_value(&fields).map_err(Error::internal)?;
    for (name, code) in &denied {
        answer[name] = json!({ "error": {
            "code": code,
            "message": if *code == "policy_denied" {
                "the policy does not allow reading this field for this role and purpose"
            } else {
                "the subject's consent does not cover this field for this purpose"
            },
        }});
    }
    Ok(json!({ "id": id.as_str(), "fields": answer }))
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, role = %who.caller.role, purpose = %who.purpose))]
pub async fn correct(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
    body: &FieldsInput,
) -> Result<Value, Error> {
    let id = subject_id(raw_id)?;
    hold_check(
        state,
        who,
        &id,
        &who.event("correct").subject(id.as_str()),
        false,
    )
    .await?;
    let events = authorise_writes(state, who, "correct", &id, &body.fields).await?;
    if let Err(e) = state.vault.correct(&id, &body.fields, events).await {
        return Err(failed(state, who.event("correct").subject(id.as_str()), e).await);
    }
    let updated: Vec<&String> = body.fields.keys().collect();
    tracing::debug!(fields = ?updated, "subject corrected");
    Ok(json!({ "id": id.as_str(), "updated": updated }))
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, role = %who.caller.role, purpose = %who.purpose))]
pub async fn erase(state: &Pipeline, who: &Authorized, raw_id: &str) -> Result<Value, Error> {
    let id = subject_id(raw_id)?;
    let event = who.event("erase").subject(id.as_str());
    who.require(state, "subject", "delete", event.clone())
        .await?;
    hold_check(state, who, &id, &event, false).await?;
    let result = state.vault.erase(&id, vec![event.clone()]).await;
    state.consents.forget_subject(id.as_str());
    if let Err(e) = result {
        return Err(failed(state, event, e).await);
    }
    tracing::info!("subject erased");
    Ok(json!({ "id": id.as_str(), "erased": true }))
}

/// A lookup: which searchable field, and the value to find. Its `Debug` shows the
/// field, never the value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupInput {
    pub field: String,
    pub value: Value,
    /// The page after this subject id (the `next` of the previous page).
    #[serde(default)]
    pub after: Option<String>,
    /// Most subjects in the page (default [`LOOKUP_PAGE`], at most [`MAX_LOOKUP_PAGE`]).
    #[serde(default)]
    pub limit: Option<i64>,
}

/// Subjects in a lookup's page unless the caller asks for fewer or more…
pub const LOOKUP_PAGE: i64 = 100;
/// …and at most this many: a value many subjects share (a company's switchboard number)
/// is answered, and audited, a page at a time.
pub const MAX_LOOKUP_PAGE: i64 = 1000;

impl std::fmt::Debug for LookupInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupInput")
            .field("field", &self.field)
            .field("value", &"<redacted>")
            .finish()
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, purpose = %who.purpose))]
pub async fn lookup(
    state: &Pipeline,
    who: &Authorized,
    body: &LookupInput,
) -> Result<Value, Error> {
    let known = state.vault.catalogue().field(&body.field).is_ok();
    let event = who.event("lookup");
    let event = if known {
        event.field(&body.field)
    } else {
        event
    };
    if known && who.field_access(&body.field).is_none() {
        who.require(state, &body.field, "read_masked", event.clone())
            .await?;
    }
    let limit = body.limit.unwrap_or(LOOKUP_PAGE);
    if !(1..=MAX_LOOKUP_PAGE).contains(&limit) {
        return Err(Error::Invalid(ValidationError::new(
            "limit",
            "out_of_range",
            "limit must be between 1 and 1000",
        )));
    }
    let after = match body.after.as_deref() {
        None => "",
        Some(a) if SubjectId::parse(a).is_some() => a,
        Some(_) => {
            return Err(Error::Invalid(ValidationError::new(
                "after",
                "invalid",
                "after must be the `next` of a previous page",
            )))
        }
    };
    // One more than the page, to tell whether another page follows.
    let mut found = match state
        .vault
        .lookup(&body.field, &body.value, after, limit + 1)
        .await
    {
        Ok(found) => found,
        Err(e) => return Err(failed(state, event, e).await),
    };
    let next = if found.len() as i64 > limit {
        found.truncate(limit as usize);
        found.last().map(|(sid, _)| sid.clone())
    } else {
        None
    };
    // Subjects under a legal hold are found only by roles that may read held data.
    let see_held = who.may("legal_hold", "read");
    let mut ids: Vec<String> = found
        .into_iter()
        .filter(|(_, held)| see_held || !held)
        .map(|(sid, _)| sid)
        .collect();
    // For a consent-based purpose, only subjects whose consent covers the field are found;
    // for a refusable one, none who refused it.
    if who
        .policy
        .purposes()
        .get(&who.purpose)
        .is_some_and(|p| p.requires_consent() || p.refusable)
    {
        let sensitive = state
            .vault
            .catalogue()
            .field(&body.field)
            .is_ok_and(|f| f.sensitive);
        let mut kept = Vec::with_capacity(ids.len());
        for sid in ids {
            let Some(sid) = SubjectId::parse(&sid) else {
                continue;
            };
            if let Some(gate) = consent_gate(state, who, &sid, None).await? {
                match gate.check(sensitive).code() {
                    None => kept.push(sid.as_str().to_owned()),
                    Some(code) => {
                        metrics::counter!(crate::metrics::CONSENT_REFUSALS, "code" => code)
                            .increment(1);
                    }
                }
            }
        }
        ids = kept;
    }
    // One event per subject found (which subjects a caller located is itself an access).
    let mut events: Vec<Event> = ids.iter().map(|s| event.clone().subject(s)).collect();
    if events.is_empty() {
        events.push(event.outcome(Decision::Allow, "no_match"));
    }
    state.audit.record(events).await?;
    tracing::debug!(field = %body.field, matches = ids.len(), "lookup");
    Ok(json!({ "ids": ids, "next": next }))
}

fn known_collection(state: &Pipeline, name: &str) -> Result<(), Error> {
    match state.vault.catalogue().collection(name) {
        Some(_) => Ok(()),
        None => Err(Error::NotFound {
            code: "collection_not_found",
            message: "no such record collection in the classification",
        }),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, collection = %collection, role = %who.caller.role, purpose = %who.purpose))]
pub async fn add_record(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
    collection: &str,
    document: &Value,
) -> Result<Value, Error> {
    let id = subject_id(raw_id)?;
    known_collection(state, collection)?;
    let event = who
        .event("record.add")
        .subject(id.as_str())
        .field(collection);
    who.require(state, collection, "write", event.clone())
        .await?;
    hold_check(state, who, &id, &event, false).await?;
    let record = crate::vault::RecordId::generate();
    let event = event.target(record.as_str());
    if let Err(e) = state
        .vault
        .add_record(&id, collection, &record, document, vec![event.clone()])
        .await
    {
        return Err(failed(state, event, e).await);
    }
    tracing::debug!(record = %record.as_str(), "record added");
    Ok(json!({ "id": record.as_str() }))
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, collection = %collection, role = %who.caller.role, purpose = %who.purpose))]
pub async fn list_records(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
    collection: &str,
) -> Result<Value, Error> {
    let id = subject_id(raw_id)?;
    known_collection(state, collection)?;
    let event = who
        .event("record.read")
        .subject(id.as_str())
        .field(collection);
    who.require(state, collection, "read", event.clone())
        .await?;
    hold_check(state, who, &id, &event, true).await?;
    // Under a purpose that rests on consent, records are read only with it in force
    // (separate consent for a sensitive collection), as fields are.
    if let Some(gate) = consent_gate(state, who, &id, None).await? {
        let sensitive = state
            .vault
            .catalogue()
            .collection(collection)
            .is_some_and(|c| c.sensitive);
        if let Some(code) = gate.check(sensitive).code() {
            metrics::counter!(crate::metrics::CONSENT_REFUSALS, "code" => code).increment(1);
            state
                .audit
                .record_one(event.outcome(Decision::Deny, code))
                .await?;
            return Err(Error::Forbidden {
                code,
                message: consent_refusal(code).into(),
                field: None,
            });
        }
    }
    let records = match state.vault.records(&id, collection).await {
        Ok(r) => r,
        Err(e) => return Err(failed(state, event, e).await),
    };
    let events: Vec<Event> = if records.is_empty() {
        vec![event.outcome(Decision::Allow, "no_records")]
    } else {
        records
            .iter()
            .map(|r| event.clone().target(&r.id))
            .collect()
    };
    state.audit.record(events).await?;
    tracing::debug!(count = records.len(), "records listed");
    Ok(json!({ "records": records }))
}
