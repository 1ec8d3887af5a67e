//! Data-subject requests, legal holds and the portable export bundle (role
//! `dsr_handler`): decided, carried out and audited here for every interface.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{Authorized, Error, Pipeline};
use crate::audit::Decision;
use crate::classify::ValidationError;
use crate::pipl::RequestError;
use crate::vault::View;

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::SubjectNotFound => Error::subject_not_found(),
            RequestError::NotFound => Error::NotFound {
                code: "request_not_found",
                message: "no such request",
            },
            RequestError::Invalid(m) => {
                Error::Invalid(ValidationError::new("request", "invalid", m))
            }
            RequestError::BadTransition { .. } => {
                Error::bad_request("bad_transition", e.to_string())
            }
            RequestError::Store(s) => Error::store(s),
            RequestError::NoCalendar(_) => Error::NotConfigured {
                code: "calendar_missing",
                message: e.to_string(),
            },
            RequestError::NotDeceased => Error::Forbidden {
                code: "subject_not_deceased",
                message: e.to_string(),
                field: None,
            },
            RequestError::RelativesRefused => Error::Forbidden {
                code: "relatives_refused_by_subject",
                message: e.to_string(),
                field: None,
            },
        }
    }
}

/// A new data-subject request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub subject: String,
    pub kind: String,
    /// A close relative making the request for a deceased subject (PIPL Art. 49).
    #[serde(default)]
    pub requester: Option<crate::pipl::Requester>,
}

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role))]
pub async fn create(
    state: &Pipeline,
    who: &Authorized,
    body: &CreateRequest,
) -> Result<Value, Error> {
    let subject = super::subject_id(&body.subject)?;
    let event = who.event("request.create").subject(subject.as_str());
    who.require(state, "requests", "write", event.clone())
        .await?;
    match state
        .requests
        .create(
            &subject,
            &body.kind,
            &who.caller.token_id,
            body.requester.as_ref(),
        )
        .await
    {
        Ok(r) => {
            state.audit.record_one(event.target(&r.id)).await?;
            serde_json::to_value(r).map_err(Error::internal)
        }
        Err(e) => {
            let code = match e {
                RequestError::NoCalendar(_) => "calendar_missing",
                RequestError::NotDeceased => "subject_not_deceased",
                RequestError::RelativesRefused => "relatives_refused_by_subject",
                RequestError::SubjectNotFound => "subject_not_found",
                _ => "invalid",
            };
            state
                .audit
                .record_one(event.outcome(Decision::Error, code))
                .await?;
            Err(e.into())
        }
    }
}

/// Which requests to list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub overdue: bool,
}

pub async fn list(state: &Pipeline, who: &Authorized, q: &ListQuery) -> Result<Value, Error> {
    let event = who.event("request.list");
    who.require(state, "requests", "read", event.clone())
        .await?;
    let requests = state.requests.list(q.overdue).await?;
    state.audit.record_one(event).await?;
    Ok(json!({ "requests": requests }))
}

pub async fn show(state: &Pipeline, who: &Authorized, id: &str) -> Result<Value, Error> {
    let event = who.event("request.read").target(id);
    who.require(state, "requests", "read", event.clone())
        .await?;
    let request = state.requests.get(id).await?;
    state
        .audit
        .record_one(event.subject(&request.subject))
        .await?;
    serde_json::to_value(request).map_err(Error::internal)
}

/// A request's new status, with the reason for a rejection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[tracing::instrument(level = "debug", skip_all, fields(role = %who.caller.role, request = %id))]
pub async fn update(
    state: &Pipeline,
    who: &Authorized,
    id: &str,
    body: &UpdateRequest,
) -> Result<Value, Error> {
    let event = who.event("request.update").target(id);
    who.require(state, "requests", "write", event.clone())
        .await?;
    match state
        .requests
        .transition(id, &body.status, body.reason.as_deref())
        .await
    {
        Ok(r) => {
            let reason = format!(
                "{}{}",
                r.status,
                r.reason
                    .as_deref()
                    .map(|x| format!(":{x}"))
                    .unwrap_or_default()
            );
            state
                .audit
                .record_one(event.subject(&r.subject).outcome(Decision::Allow, &reason))
                .await?;
            serde_json::to_value(r).map_err(Error::internal)
        }
        Err(e) => {
            state
                .audit
                .record_one(event.outcome(Decision::Error, "invalid"))
                .await?;
            Err(e.into())
        }
    }
}

/// The portable bundle: every value held about the subject in clear, every record,
/// consents with history, the subject's own access history from the audit trail
/// (who by role, when, what, for what purpose; no token ids or request ids), and the
/// provisions of its data to recipients (who, which fields, when, for what purpose).
#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, role = %who.caller.role))]
pub async fn export(state: &Pipeline, who: &Authorized, raw_id: &str) -> Result<Value, Error> {
    let id = super::subject_id(raw_id)?;
    let event = who.event("export").subject(id.as_str());
    who.require(state, "subject", "export", event.clone())
        .await?;
    let catalogue = state.vault.catalogue();
    let wanted: Vec<(String, View)> = catalogue
        .fields()
        .map(|f| (f.name.clone(), View::Clear))
        .collect();
    let fields = match state.vault.read(&id, &wanted).await {
        Ok(f) => f,
        Err(e) => {
            state
                .audit
                .record_one(event.outcome(Decision::Error, crate::pipeline::reason_code(&e)))
                .await?;
            return Err(e.into());
        }
    };
    let mut records = BTreeMap::new();
    for c in catalogue.collections() {
        records.insert(c.name.clone(), state.vault.records(&id, &c.name).await?);
    }
    let (consents, consent_history) = state
        .consents
        .list(&id, |p| who.policy.consent_spec(p))
        .await?;
    // Which internal token recorded a consent is not the subject's business.
    let consent_history: Vec<Value> = consent_history
        .into_iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .map(|mut e| {
            if let Some(o) = e.as_object_mut() {
                o.remove("by");
            }
            e
        })
        .collect();
    let history = history_of(state, &id).await?;
    // Art. 45: which recipients received what, and when.
    let registry = who.policy.recipients();
    let provisions: Vec<Value> = state
        .store
        .provisions_of(id.as_str())
        .await
        .map_err(Error::store)?
        .into_iter()
        .map(|p| {
            let r = registry.get(&p.recipient);
            json!({
                "time": crate::store::rfc3339(p.at),
                "recipient": p.recipient,
                "recipient_name": r.map(|r| r.name.as_str()),
                "recipient_kind": r.map(|r| r.kind),
                "region": p.region,
                "purpose": p.purpose,
                "fields": p.fields,
                "collections": p.collections,
            })
        })
        .collect();
    // Durable before the bundle leaves.
    state.audit.record_one(event).await?;
    let values: BTreeMap<&String, &Value> = fields.iter().map(|(k, v)| (k, &v.value)).collect();
    let bundle = json!({
        "format": "piivault-export/1",
        "subject": id.as_str(),
        "exported_at": crate::store::rfc3339(crate::store::now_ms()),
        "fields": values,
        "records": records,
        "consents": { "current": consents, "history": consent_history },
        "access_history": history,
        "provisions": provisions,
        // Art. 24: which of these values were made by automated evaluation, not given.
        "derived_fields": values
            .keys()
            .filter(|name| catalogue.field(name).is_ok_and(|f| f.derived))
            .collect::<Vec<_>>(),
    });
    Ok(bundle)
}

/// A subject's access history from the audit trail, as the subject is shown it (PIPL
/// Art. 45): when, by which role, what, which field, for what purpose, and the outcome;
/// no token ids or request ids.
async fn history_of(state: &Pipeline, id: &crate::vault::SubjectId) -> Result<Vec<Value>, Error> {
    Ok(state
        .store
        .audit_events_for_subject(id.as_str())
        .await
        .map_err(Error::internal)?
        .into_iter()
        .map(|e| {
            json!({
                "time": crate::store::rfc3339(e.ts),
                "by_role": e.actor_role,
                "action": e.action,
                "field": e.field,
                "purpose": e.purpose,
                "decision": e.decision,
            })
        })
        .collect())
}

/// A subject's access history alone (what the export bundle holds under
/// `access_history`), for a DSR handler answering an access request without exporting
/// every value: no value in it.
#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, role = %who.caller.role))]
pub async fn access_history(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
) -> Result<Value, Error> {
    let id = super::subject_id(raw_id)?;
    let event = who.event("access_history.read").subject(id.as_str());
    who.require(state, "subject", "export", event.clone())
        .await?;
    let history = history_of(state, &id).await?;
    state.audit.record_one(event).await?;
    Ok(json!({ "id": id.as_str(), "access_history": history }))
}

/// A legal hold to place.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// An opaque case reference (letters, digits, `-`, `_`; at most 64), never a description.
    pub case: String,
}

/// A case or evidence reference: never free text.
fn valid_case(case: &str) -> bool {
    crate::pipl::valid_reference(case)
}

/// A subject recorded as deceased, with the reference of the evidence.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeceasedRequest {
    /// A reference (letters, digits, `-`, `_`; at most 64), never a description.
    pub evidence: String,
}

/// Records that a subject has died (PIPL Art. 49): from then on a close relative may
/// make requests for it, unless it refused that while alive. Once only (409).
pub async fn mark_deceased(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
    body: &DeceasedRequest,
) -> Result<Value, Error> {
    let id = super::subject_id(raw_id)?;
    if !valid_case(&body.evidence) {
        return Err(Error::Invalid(ValidationError::new(
            "evidence",
            "invalid_reference",
            "evidence must be a reference: 1 to 64 letters, digits, - or _",
        )));
    }
    let event = who
        .event("subject.deceased")
        .subject(id.as_str())
        .target(&body.evidence);
    who.require(state, "requests", "write", event.clone())
        .await?;
    let op = state
        .store
        .set_deceased_op(id.as_str(), &body.evidence, crate::store::now_ms());
    status_change(state, event, op).await?;
    Ok(json!({ "id": id.as_str(), "deceased": true }))
}

/// The subject's own instruction, while alive, on close relatives after its death.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructionsRequest {
    /// `allowed` (the default) or `refused`.
    pub relatives: String,
}

/// Records the subject's instruction (PIPL Art. 49: "unless the deceased arranged
/// otherwise while alive"). Refused (409) once the subject is recorded as deceased.
pub async fn set_instructions(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
    body: &InstructionsRequest,
) -> Result<Value, Error> {
    let id = super::subject_id(raw_id)?;
    let refused = match body.relatives.as_str() {
        "refused" => true,
        "allowed" => false,
        _ => {
            return Err(Error::Invalid(ValidationError::new(
                "relatives",
                "invalid",
                "relatives must be \"allowed\" or \"refused\"",
            )))
        }
    };
    let event = who
        .event("subject.instructions")
        .subject(id.as_str())
        .target(&format!("relatives:{}", body.relatives));
    who.require(state, "consent", "write", event.clone())
        .await?;
    status_change(
        state,
        event,
        state.store.set_relatives_op(id.as_str(), refused),
    )
    .await?;
    Ok(json!({ "id": id.as_str(), "relatives": body.relatives }))
}

/// Commits an Art. 49 status change with its event; a refused one is recorded too.
async fn status_change(
    state: &Pipeline,
    event: crate::audit::Event,
    op: crate::store::WriteOp,
) -> Result<(), Error> {
    let refused = match state.audit.record_with(vec![event.clone()], op).await {
        Ok(()) => return Ok(()),
        Err(crate::audit::CommitError::Change(crate::store::StoreError::NotFound)) => {
            ("subject_not_found", Error::subject_not_found())
        }
        Err(crate::audit::CommitError::Change(crate::store::StoreError::Conflict)) => (
            "subject_deceased",
            Error::Conflict {
                code: "subject_deceased",
                message: "the subject is already recorded as deceased".into(),
            },
        ),
        Err(e) => return Err(e.into()),
    };
    state
        .audit
        .record_one(event.outcome(Decision::Error, refused.0))
        .await?;
    Err(refused.1)
}

/// Places a legal hold (PIPL Art. 47 ¶2): retention sweeps skip the subject and its data
/// is restricted to storage.
#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, role = %who.caller.role))]
pub async fn place_hold(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
    body: &HoldRequest,
) -> Result<Value, Error> {
    super::subject_id(raw_id)?;
    if !valid_case(&body.case) {
        return Err(Error::Invalid(ValidationError::new(
            "case",
            "case_format",
            "a case reference is 1 to 64 letters, digits, - or _",
        )));
    }
    set_hold(state, who, raw_id, Some(&body.case)).await
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, role = %who.caller.role))]
pub async fn lift_hold(state: &Pipeline, who: &Authorized, raw_id: &str) -> Result<Value, Error> {
    set_hold(state, who, raw_id, None).await
}

/// Places (`Some(case)`) or lifts a hold: authorised, audited before it is made, and
/// audited again as an error if there is no such subject.
async fn set_hold(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
    case: Option<&str>,
) -> Result<Value, Error> {
    let id = super::subject_id(raw_id)?;
    let event = match case {
        Some(case) => who.event("hold.place").target(case),
        None => who.event("hold.lift"),
    }
    .subject(id.as_str());
    who.require(state, "legal_hold", "write", event.clone())
        .await?;
    match state
        .vault
        .set_legal_hold(&id, case, vec![event.clone()])
        .await
    {
        Ok(()) => {}
        Err(crate::vault::VaultError::NotFound) => {
            state
                .audit
                .record_one(event.outcome(Decision::Error, "subject_not_found"))
                .await?;
            return Err(Error::subject_not_found());
        }
        Err(e) => return Err(e.into()),
    }
    Ok(json!({ "id": id.as_str(), "legal_hold": case }))
}

/// The processing rules that apply to one subject (PIPL Art. 48), for a DSR handler:
/// every declared purpose with its legal basis and whether it applies to this subject
/// now (a consent-based one only with consent in force for its current version), the
/// consents in force, how long each of its fields and collections is kept, whether it is
/// under a legal hold, and to which recipients its data was provided. No value.
#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, role = %who.caller.role))]
pub async fn processing(state: &Pipeline, who: &Authorized, raw_id: &str) -> Result<Value, Error> {
    let id = super::subject_id(raw_id)?;
    let event = who.event("processing.read").subject(id.as_str());
    who.require(state, "subject", "export", event.clone())
        .await?;
    let Some(snapshot) = state.vault.snapshot(&id).await? else {
        return Err(Error::subject_not_found());
    };
    let policy = &who.policy;
    let (consents, _) = state.consents.list(&id, |p| policy.consent_spec(p)).await?;
    let in_force = |purpose: &str| {
        consents.iter().find(|c| {
            c.purpose == purpose && c.active && c.purpose_version == c.current_purpose_version
        })
    };
    let purposes: Vec<Value> = policy
        .purposes()
        .iter()
        .map(|(name, spec)| {
            let consent = in_force(name);
            json!({
                "purpose": name,
                "description": spec.description,
                "legal_basis": spec.legal_basis,
                "version": spec.version,
                "applies": !spec.requires_consent() || consent.is_some(),
                "consent": consent,
            })
        })
        .collect();
    let catalogue = state.vault.catalogue();
    let fields: Vec<Value> = snapshot
        .fields
        .iter()
        .filter_map(|row| catalogue.field(&row.field).ok())
        .map(|f| {
            json!({
                "field": f.name,
                "category": f.category.as_str(),
                "sensitive": f.sensitive,
                "retention_days": f.retention.days,
            })
        })
        .collect();
    let collections: Vec<Value> = catalogue
        .collections()
        .map(|c| {
            json!({
                "collection": c.name,
                "category": c.category.as_str(),
                "sensitive": c.sensitive,
                "retention_days": c.retention.days,
            })
        })
        .collect();
    let registry = policy.recipients();
    let mut provided: BTreeMap<String, Value> = BTreeMap::new();
    for p in state
        .store
        .provisions_of(id.as_str())
        .await
        .map_err(Error::store)?
    {
        let r = registry.get(&p.recipient);
        let entry = provided.entry(p.recipient.clone()).or_insert_with(|| {
            json!({
                "recipient": p.recipient,
                "name": r.map(|r| r.name.as_str()),
                "kind": r.map(|r| r.kind),
                "region": p.region,
                "purposes": [],
                "fields": [],
                "collections": [],
            })
        });
        for (key, items) in [
            ("purposes", std::slice::from_ref(&p.purpose)),
            ("fields", p.fields.as_slice()),
            ("collections", p.collections.as_slice()),
        ] {
            if let Some(list) = entry[key].as_array_mut() {
                for item in items {
                    if !list.iter().any(|v| v == item) {
                        list.push(json!(item));
                    }
                }
            }
        }
        entry["last_provided"] = json!(crate::store::rfc3339(p.at));
    }
    let status = state
        .store
        .subject_status(id.as_str())
        .await
        .map_err(Error::store)?;
    state.audit.record_one(event).await?;
    Ok(json!({
        "id": id.as_str(),
        "legal_hold": snapshot.legal_hold.is_some(),
        "deceased": status.deceased_at.map(|at| json!({
            "recorded": crate::store::rfc3339(at),
            "evidence": status.deceased_evidence,
        })),
        "relatives": if status.relatives_refused { "refused" } else { "allowed" },
        "purposes": purposes,
        "consents": consents,
        "fields": fields,
        "collections": collections,
        "provided_to": provided.into_values().collect::<Vec<_>>(),
    }))
}

/// Which purpose an explanation is asked for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    pub purpose: String,
}

/// An explanation for the subject (PIPL Art. 24, 48), answered from the declared purpose
/// and the fields the policy lets it use: its description and legal basis, whether it
/// decides by automated evaluation, whether it applies to the subject now (consent,
/// refusal), and which of the subject's fields and which collections it uses, each
/// marked derived or given. No value.
#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, role = %who.caller.role))]
pub async fn explanation(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
    q: &ExplainQuery,
) -> Result<Value, Error> {
    let id = super::subject_id(raw_id)?;
    let event = who
        .event("explanation.read")
        .subject(id.as_str())
        .target(&q.purpose);
    who.require(state, "subject", "export", event.clone())
        .await?;
    let policy = &who.policy;
    let spec = policy.purposes().get(&q.purpose).cloned().ok_or_else(|| {
        Error::Invalid(ValidationError::new(
            "purpose",
            "unknown_purpose",
            "this purpose is not declared in purposes.toml",
        ))
    })?;
    let Some(snapshot) = state.vault.snapshot(&id).await? else {
        return Err(Error::subject_not_found());
    };
    let gate = state.consents.gate(&id, &q.purpose, &spec, false).await?;
    let check = gate.check(false);
    let used = policy.objects_used_for(&q.purpose);
    let catalogue = state.vault.catalogue();
    let fields: Vec<Value> = snapshot
        .fields
        .iter()
        .filter(|row| used.contains(&row.field))
        .filter_map(|row| catalogue.field(&row.field).ok())
        .map(|f| {
            json!({
                "field": f.name,
                "description": f.description,
                "category": f.category.as_str(),
                "sensitive": f.sensitive,
                "derived": f.derived,
            })
        })
        .collect();
    let collections: Vec<&str> = catalogue
        .collections()
        .filter(|c| used.contains(&c.name))
        .map(|c| c.name.as_str())
        .collect();
    state.audit.record_one(event).await?;
    Ok(json!({
        "id": id.as_str(),
        "purpose": q.purpose,
        "description": spec.description,
        "legal_basis": spec.legal_basis,
        "automated_decision": spec.automated_decision,
        "applies": check.code().is_none(),
        "why_not": check.code(),
        "fields_used": fields,
        "collections_used": collections,
    }))
}

/// The subjects of a bulk export.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkExportInput {
    pub subjects: Vec<String>,
}

/// Most subjects one bulk export may name.
const MAX_BULK_EXPORT: usize = 10_000;

/// What a bulk export answered: the bundles at once, or a request that waits.
pub enum BulkExport {
    Done(Value),
    Pending(Value),
}

/// Every bundle of `subjects`, each exported and audited as one export; a subject that
/// does not exist is answered as such in its place.
async fn bundles(state: &Pipeline, who: &Authorized, subjects: &[String]) -> Result<Value, Error> {
    let mut out = Vec::with_capacity(subjects.len());
    for id in subjects {
        match export(state, who, id).await {
            Ok(bundle) => out.push(bundle),
            Err(Error::NotFound { code, .. }) => {
                out.push(json!({ "subject": id, "error": { "code": code } }))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(json!({ "bundles": out }))
}

/// A bulk export (GB/T 35273 §7.1): up to the configured threshold it is answered at
/// once; above it, it is recorded as a request that runs only after a second token with
/// the approving role (`bulk_export` admin) approves it, and then only for its requester.
pub async fn bulk_export(
    state: &Pipeline,
    who: &Authorized,
    body: &BulkExportInput,
) -> Result<BulkExport, Error> {
    let mut subjects: Vec<String> = Vec::with_capacity(body.subjects.len());
    for raw in &body.subjects {
        let id = super::subject_id(raw).map_err(|_| {
            Error::bad_request("invalid_subject", format!("{raw:?} is not a subject id"))
        })?;
        if !subjects.iter().any(|s| s == id.as_str()) {
            subjects.push(id.as_str().to_owned());
        }
    }
    if subjects.is_empty() || subjects.len() > MAX_BULK_EXPORT {
        return Err(Error::bad_request(
            "invalid_bulk_export",
            format!("name 1 to {MAX_BULK_EXPORT} subjects"),
        ));
    }
    let event = who.event("export.request");
    who.require(state, "bulk_export", "export", event.clone())
        .await?;
    if subjects.len() <= state.requests.bulk_export_threshold() {
        return Ok(BulkExport::Done(bundles(state, who, &subjects).await?));
    }
    let id = crate::crypto::random_id("exp");
    let row = crate::store::BulkExportRow {
        id: id.clone(),
        subjects: subjects.clone(),
        requested_by: who.caller.token_id.clone(),
        requested_at: crate::store::now_ms(),
        approved_by: None,
        approved_at: None,
        delivered_at: None,
    };
    state
        .audit
        .record_with(
            vec![event.target(&id).outcome(Decision::Allow, "pending")],
            state.store.request_bulk_export_op(row),
        )
        .await?;
    Ok(BulkExport::Pending(json!({
        "id": id,
        "status": "pending",
        "subjects": subjects.len(),
        "threshold": state.requests.bulk_export_threshold(),
    })))
}

/// A step on an existing bulk export: its event (`action`, needing `bulk_export`
/// `permission`) and the request, or 404 `export_not_found`.
async fn bulk_export_step(
    state: &Pipeline,
    who: &Authorized,
    id: &str,
    action: &str,
    permission: &str,
) -> Result<(crate::audit::Event, crate::store::BulkExportRow), Error> {
    let event = who.event(action).target(id);
    who.require(state, "bulk_export", permission, event.clone())
        .await?;
    let row = state
        .store
        .bulk_export(id)
        .await
        .map_err(Error::store)?
        .ok_or(Error::NotFound {
            code: "export_not_found",
            message: "no such bulk export",
        })?;
    Ok((event, row))
}

/// Approves a pending bulk export: a second token, not its requester's, whose role may
/// approve (`bulk_export` admin).
pub async fn approve_bulk_export(
    state: &Pipeline,
    who: &Authorized,
    id: &str,
) -> Result<Value, Error> {
    let (event, row) = bulk_export_step(state, who, id, "export.approve", "admin").await?;
    if row.requested_by == who.caller.token_id {
        state
            .audit
            .record_one(event.outcome(Decision::Deny, "second_person_required"))
            .await?;
        return Err(Error::Forbidden {
            code: "second_person_required",
            message: "a bulk export is approved by another token than the one that asked for it"
                .into(),
            field: None,
        });
    }
    match state
        .audit
        .record_with(
            vec![event],
            state.store.approve_bulk_export_op(id, &who.caller.token_id),
        )
        .await
    {
        Ok(()) => Ok(json!({ "id": id, "status": "approved", "subjects": row.subjects.len() })),
        Err(crate::audit::CommitError::Change(crate::store::StoreError::Conflict)) => {
            Err(Error::Conflict {
                code: "export_not_pending",
                message: "this bulk export was approved already".into(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Fetches an approved bulk export, once, by its requester: every subject exported and
/// audited, then the request marked delivered.
pub async fn fetch_bulk_export(
    state: &Pipeline,
    who: &Authorized,
    id: &str,
) -> Result<Value, Error> {
    let (event, row) = bulk_export_step(state, who, id, "export.deliver", "export").await?;
    let refuse = |code: &'static str, message: &str| {
        (
            code,
            Error::Conflict {
                code,
                message: message.into(),
            },
        )
    };
    let refused = if row.requested_by != who.caller.token_id {
        Some((
            "not_the_requester",
            Error::Forbidden {
                code: "not_the_requester",
                message: "only the token that asked for this bulk export may fetch it".into(),
                field: None,
            },
        ))
    } else if row.approved_at.is_none() {
        Some(refuse(
            "export_pending",
            "this bulk export waits for a second person's approval",
        ))
    } else if row.delivered_at.is_some() {
        Some(refuse(
            "export_delivered",
            "this bulk export was fetched already",
        ))
    } else {
        None
    };
    if let Some((code, e)) = refused {
        state
            .audit
            .record_one(event.outcome(Decision::Deny, code))
            .await?;
        return Err(e);
    }
    let answer = bundles(state, who, &row.subjects).await?;
    match state
        .audit
        .record_with(vec![event], state.store.deliver_bulk_export_op(id))
        .await
    {
        Ok(()) => Ok(answer),
        Err(crate::audit::CommitError::Change(crate::store::StoreError::Conflict)) => {
            Err(refuse("export_delivered", "this bulk export was fetched already").1)
        }
        Err(e) => Err(e.into()),
    }
}
