//! Provision of personal information to registered recipients (PIPL Art. 21, 23, 25,
//! 38–39), the deletion notices owed to them (Art. 47), and the yearly count of
//! subjects whose data went abroad.
//!
//! A provision hands the caller (the integration that sends the data on) the values a
//! recipient is to receive. It is refused unless the recipient is registered in
//! `policies/recipients.toml` for the request's purpose and for every field and
//! collection asked for, the policy allows `provide` on each of them, the subject is not
//! under a legal hold, the purpose's consent (if it rests on consent) is in force, and,
//! for an independent recipient or one abroad, the subject's separate consent to that
//! recipient (`recipient:ID`) is in force. Every provision is committed, with one audit
//! event per field and collection, before a value leaves.

use serde::Deserialize;
use serde_json::{json, Value};

use super::subjects::{consent_gate, failed, subject_id};
use super::{Authorized, Error, Pipeline};
use crate::audit::{Decision, Event};
use crate::pipl::Recipient;
use crate::store::{ProvisionRow, StoreError};
use crate::vault::View;

/// What `POST /v1/subjects/{id}/provisions` asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvideInput {
    /// A recipient id from `policies/recipients.toml`.
    pub recipient: String,
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub collections: Vec<String>,
}

/// Records a refusal and returns the 403 to send.
async fn refuse(
    state: &Pipeline,
    event: Event,
    code: &'static str,
    message: String,
    field: Option<String>,
) -> Error {
    match state
        .audit
        .record_one(event.outcome(Decision::Deny, code))
        .await
    {
        Ok(()) => Error::Forbidden {
            code,
            message,
            field,
        },
        Err(e) => e.into(),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(subject = %raw_id, role = %who.caller.role, purpose = %who.purpose))]
pub async fn provide(
    state: &Pipeline,
    who: &Authorized,
    raw_id: &str,
    body: &ProvideInput,
) -> Result<Value, Error> {
    let id = subject_id(raw_id)?;
    let catalogue = state.vault.catalogue();
    if body.fields.is_empty() && body.collections.is_empty() {
        return Err(Error::bad_request(
            "nothing_to_provide",
            "name at least one field or collection",
        ));
    }
    for f in &body.fields {
        catalogue.field(f).map_err(Error::Invalid)?;
    }
    for c in &body.collections {
        if catalogue.collection(c).is_none() {
            return Err(Error::bad_request(
                "unknown_collection",
                format!("{c:?} is not a record collection"),
            ));
        }
    }
    let target = format!("recipient:{}", body.recipient);
    let event = who.event("provide").subject(id.as_str()).target(&target);
    let Some(recipient) = who.policy.recipients().get(&body.recipient).cloned() else {
        return Err(refuse(
            state,
            event,
            "recipient_not_registered",
            "this recipient is not in policies/recipients.toml".into(),
            None,
        )
        .await);
    };
    if !recipient.purposes.contains(&who.purpose) {
        return Err(refuse(
            state,
            event,
            "recipient_purpose_not_registered",
            "this recipient is not registered to receive personal information for this purpose"
                .into(),
            None,
        )
        .await);
    }
    let unregistered = body
        .fields
        .iter()
        .find(|f| !recipient.fields.contains(f))
        .or_else(|| {
            body.collections
                .iter()
                .find(|c| !recipient.collections.contains(c))
        });
    if let Some(name) = unregistered {
        return Err(refuse(
            state,
            event,
            "recipient_field_not_registered",
            format!("this recipient is not registered to receive {name}"),
            Some(name.clone()),
        )
        .await);
    }
    for name in body.fields.iter().chain(&body.collections) {
        who.require(state, name, "provide", event.clone().field(name))
            .await?;
    }
    let snapshot = state.vault.snapshot(&id).await?;
    let Some(snapshot) = snapshot else {
        return Err(Error::subject_not_found());
    };
    // Art. 47 ¶2: a held subject's data is kept in storage only.
    if snapshot.legal_hold.is_some() {
        return Err(refuse(
            state,
            event,
            "legal_hold",
            "this subject is under a legal hold: its data is kept in storage only".into(),
            None,
        )
        .await);
    }
    let sensitive = body
        .fields
        .iter()
        .filter_map(|f| catalogue.field(f).ok())
        .any(|f| f.sensitive)
        || body
            .collections
            .iter()
            .filter_map(|c| catalogue.collection(c))
            .any(|c| c.sensitive);
    // The purpose's own consent, as for a read.
    if let Some(gate) = consent_gate(state, who, &id, Some(Some(&snapshot))).await? {
        if let Some(code) = gate.check(sensitive).code() {
            metrics::counter!(crate::metrics::CONSENT_REFUSALS, "code" => code).increment(1);
            return Err(refuse(
                state,
                event,
                code,
                "the subject's consent does not cover this provision's purpose".into(),
                None,
            )
            .await);
        }
    }
    // Art. 23 / Art. 39: the subject's separate consent to this recipient.
    if recipient.needs_separate_consent() {
        let spec = who.policy.consent_spec(&target).ok_or_else(|| {
            Error::internal("a recipient that needs separate consent has no consent purpose")
        })?;
        let minor = state
            .vault
            .is_minor_in(&id, &snapshot, state.vault.today())?;
        let gate = state.consents.gate(&id, &target, &spec, minor).await?;
        if gate.check(true).code().is_some() {
            metrics::counter!(crate::metrics::CONSENT_REFUSALS, "code" => "recipient_consent_missing")
                .increment(1);
            return Err(refuse(
                state,
                event,
                "recipient_consent_missing",
                format!(
                    "{} needs the subject's separate consent to this recipient ({target})",
                    describe(&recipient)
                ),
                None,
            )
            .await);
        }
    }
    let wanted: Vec<(String, View)> = body
        .fields
        .iter()
        .map(|f| (f.clone(), View::Clear))
        .collect();
    let fields = match state.vault.open(&id, &snapshot, &wanted) {
        Ok(f) => f,
        Err(e) => return Err(failed(state, event, e).await),
    };
    let mut records = serde_json::Map::new();
    for c in &body.collections {
        match state.vault.records(&id, c).await {
            Ok(r) => {
                records.insert(c.clone(), serde_json::to_value(r).map_err(Error::internal)?);
            }
            Err(e) => return Err(failed(state, event, e).await),
        }
    }
    let row = ProvisionRow {
        seq: 0,
        subject_id: id.as_str().to_owned(),
        recipient: body.recipient.clone(),
        purpose: who.purpose.clone(),
        fields: fields.keys().cloned().collect(),
        collections: body.collections.clone(),
        region: recipient.region.clone(),
        sensitive,
        token_id: who.caller.token_id.clone(),
        request_id: who.request_id.clone(),
        at: crate::store::now_ms(),
    };
    let events: Vec<Event> = fields
        .keys()
        .chain(&body.collections)
        .map(|name| event.clone().field(name))
        .collect();
    match state
        .audit
        .record_with(events, state.store.record_provision_op(row))
        .await
    {
        Ok(()) => {}
        Err(crate::audit::CommitError::Change(StoreError::NotFound)) => {
            return Err(Error::subject_not_found())
        }
        Err(e) => return Err(e.into()),
    }
    if recipient.abroad() {
        recount_abroad(state);
    }
    tracing::debug!(recipient = %body.recipient, fields = ?fields.keys().collect::<Vec<_>>(), "provided");
    let mut answer = json!({
        "id": id.as_str(),
        "recipient": body.recipient,
        "purpose": who.purpose,
        "fields": fields,
    });
    if !records.is_empty() {
        answer["records"] = Value::Object(records);
    }
    Ok(answer)
}

fn describe(r: &Recipient) -> &'static str {
    if r.abroad() {
        "a provision abroad"
    } else {
        "a provision to an independent recipient"
    }
}

/// Lets auditors (`audit_trail` audit) and admins (`policies` admin) through, recording
/// `event` (a refusal, or the access).
async fn for_auditors(state: &Pipeline, who: &Authorized, event: Event) -> Result<(), Error> {
    if !who.may("audit_trail", "audit") {
        who.require(state, "policies", "admin", event.clone())
            .await?;
    }
    Ok(state.audit.record_one(event).await?)
}

/// The registered recipients and PIPIA records (`GET /v1/recipients`): for auditors
/// and admins.
pub async fn registry(state: &Pipeline, who: &Authorized) -> Result<Value, Error> {
    for_auditors(state, who, who.event("recipients.read")).await?;
    serde_json::to_value(who.policy.recipients()).map_err(Error::internal)
}

/// Which deletion notices to list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticesQuery {
    /// Only those not yet delivered (default true).
    pub pending: Option<bool>,
    pub recipient: Option<String>,
    /// Notices after this id (a page).
    pub after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// Deletion notices owed to recipients (`GET /v1/deletion-notices`, needs
/// `deletion_notices` read).
pub async fn notices(state: &Pipeline, who: &Authorized, q: &NoticesQuery) -> Result<Value, Error> {
    let event = who.event("notice.read");
    who.require(state, "deletion_notices", "read", event.clone())
        .await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::bad_request(
            "invalid_limit",
            "limit must be 1 to 1000",
        ));
    }
    let rows = state
        .store
        .deletion_notices(
            q.pending.unwrap_or(true),
            q.recipient.as_deref(),
            q.after.unwrap_or(0),
            limit,
        )
        .await
        .map_err(Error::store)?;
    state.audit.record_one(event).await?;
    Ok(json!({ "notices": rows }))
}

/// Marks a deletion notice delivered (`POST /v1/deletion-notices/{id}/delivered`, needs
/// `deletion_notices` write): 404 for no such notice, 409 if it was delivered already.
pub async fn delivered(state: &Pipeline, who: &Authorized, id: i64) -> Result<Value, Error> {
    let event = who
        .event("notice.delivered")
        .target(&format!("notice:{id}"));
    who.require(state, "deletion_notices", "write", event.clone())
        .await?;
    match state
        .audit
        .record_with(
            vec![event],
            state.store.deliver_notice_op(id, &who.caller.token_id),
        )
        .await
    {
        Ok(()) => Ok(json!({ "id": id, "delivered": true })),
        Err(crate::audit::CommitError::Change(StoreError::NotFound)) => Err(Error::NotFound {
            code: "notice_not_found",
            message: "no such deletion notice",
        }),
        Err(crate::audit::CommitError::Change(StoreError::Conflict)) => Err(Error::Conflict {
            code: "notice_delivered",
            message: "this notice was marked delivered already".into(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The distinct subjects whose data went abroad in `year` (mainland time): sensitive,
/// all, and the warnings from 80% of each threshold. Sets the gauges too.
async fn abroad_counts(state: &Pipeline, year: i32) -> Result<(i64, i64, Vec<String>), Error> {
    let start = |y: i32| -> Result<i64, Error> {
        let d = time::Date::from_calendar_date(y, time::Month::January, 1)
            .map_err(|_| Error::bad_request("invalid_year", "year is out of range"))?;
        let t = d
            .with_hms(0, 0, 0)
            .map_err(Error::internal)?
            .assume_offset(time::macros::offset!(+8));
        Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
    };
    let (from, until) = (start(year)?, start(year + 1)?);
    let (sensitive, all) = state
        .store
        .subjects_transferred_abroad(from, until)
        .await
        .map_err(Error::store)?;
    let non_sensitive = all - sensitive;
    let mut warnings = Vec::new();
    let near = |n: i64, limit: i64| n * 5 >= limit * 4;
    if near(non_sensitive, ABROAD_NON_SENSITIVE_CONTRACT) {
        warnings.push(format!(
            "{non_sensitive} subjects' non-sensitive personal information went abroad in {year}: from {ABROAD_NON_SENSITIVE_CONTRACT} a standard contract or certification is required"
        ));
    }
    if near(sensitive, ABROAD_SENSITIVE_ASSESSMENT) {
        warnings.push(format!(
            "{sensitive} subjects' sensitive personal information went abroad in {year}: from {ABROAD_SENSITIVE_ASSESSMENT} a security assessment is required"
        ));
    }
    if near(all, ABROAD_ASSESSMENT) {
        warnings.push(format!(
            "{all} subjects' personal information went abroad in {year}: from {ABROAD_ASSESSMENT} a security assessment is required"
        ));
    }
    if year == state.vault.today().year() {
        metrics::gauge!(crate::metrics::SUBJECTS_ABROAD, "kind" => "sensitive")
            .set(sensitive as f64);
        metrics::gauge!(crate::metrics::SUBJECTS_ABROAD, "kind" => "non_sensitive")
            .set(non_sensitive as f64);
    }
    Ok((sensitive, all, warnings))
}

/// After a provision abroad: the year's counts again, for the gauges and a warning in
/// the log once a threshold is near (off the request's path).
fn recount_abroad(state: &Pipeline) {
    let state = state.clone();
    tokio::spawn(async move {
        let year = state.vault.today().year();
        match abroad_counts(&state, year).await {
            Ok((_, _, warnings)) => {
                for w in warnings {
                    tracing::warn!(warning = %w, "transfers abroad near a threshold");
                }
            }
            Err(e) => tracing::warn!(error = %e, "transfers abroad could not be counted"),
        }
    });
}

/// Thresholds of subjects transferred abroad in a year that change the mechanism a
/// transfer needs (Provisions on Promoting and Regulating Cross-Border Data Flows, 2024,
/// Art. 7–8): a standard contract or certification above 100,000 people (non-sensitive)
/// or any sensitive PI below 10,000 people; a security assessment from 1,000,000 people,
/// or 10,000 people's sensitive PI.
pub const ABROAD_NON_SENSITIVE_CONTRACT: i64 = 100_000;
pub const ABROAD_SENSITIVE_ASSESSMENT: i64 = 10_000;
pub const ABROAD_ASSESSMENT: i64 = 1_000_000;

/// The subjects whose data went abroad in a calendar year (UTC+8), split into sensitive
/// and non-sensitive, against the thresholds (`GET /v1/transfers/abroad?year=`, needs
/// `audit_trail` audit). A warning is given from 80% of a threshold.
pub async fn abroad(state: &Pipeline, who: &Authorized, year: Option<i32>) -> Result<Value, Error> {
    let event = who.event("transfers.read");
    who.require(state, "audit_trail", "audit", event.clone())
        .await?;
    let year = year.unwrap_or(state.vault.today().year());
    let (sensitive, all, warnings) = abroad_counts(state, year).await?;
    let non_sensitive = all - sensitive;
    state.audit.record_one(event).await?;
    Ok(json!({
        "year": year,
        "subjects_sensitive": sensitive,
        "subjects_non_sensitive": non_sensitive,
        "subjects": all,
        "thresholds": {
            "non_sensitive_standard_contract": ABROAD_NON_SENSITIVE_CONTRACT,
            "sensitive_security_assessment": ABROAD_SENSITIVE_ASSESSMENT,
            "security_assessment": ABROAD_ASSESSMENT,
        },
        "warnings": warnings,
    }))
}

/// The record of processing activities (`GET /v1/inventory`): for auditors
/// (`audit_trail` audit) and admins (`policies` admin).
pub async fn inventory(state: &Pipeline, who: &Authorized) -> Result<Value, Error> {
    for_auditors(state, who, who.event("inventory.read")).await?;
    serde_json::to_value(crate::pipl::processing_record(
        &who.policy,
        state.vault.catalogue(),
    ))
    .map_err(Error::internal)
}

/// Every PIPIA record the vault has kept (`GET /v1/pipia`): each version of each record
/// any policy held, also after its removal from pipia.toml. For auditors and admins.
pub async fn pipia_archive(state: &Pipeline, who: &Authorized) -> Result<Value, Error> {
    for_auditors(state, who, who.event("pipia.read")).await?;
    let rows = state.store.pipia_archive().await.map_err(Error::store)?;
    Ok(json!({ "pipia": rows }))
}
