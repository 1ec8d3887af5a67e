//! Bulk import: subjects from a CSV file (a header row of field names, one subject a
//! row) or JSON lines (`{"fields": {…}, "records": {…}, "consents": […]}`, one subject a
//! line, the API's field names; records and consents optional).
//! Each line is validated exactly as the API validates a create, encrypted under its
//! own data key, and stored with one audit event per subject, many subjects to a
//! transaction.
//!
//! An import run has a random secret; the subject id of each line is derived from it
//! and the line number ([`SubjectId::in_run`]). A run that is interrupted and
//! started again therefore finds the batches it already committed (their subjects
//! exist) and skips them: nothing is imported twice, nothing is lost.

use std::io::BufRead;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Error, Pipeline};
use crate::audit::Event;
use crate::classify::{FieldType, ValidationError};
use crate::pipl::{ConsentError, Consents, GrantRequest};
use crate::store::{ConsentRow, ImportRows, ImportSubject};
use crate::vault::{SubjectId, VaultError};

/// The two file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A header row of field names, then one subject a row. An empty cell is an absent
    /// field; a `tags` cell lists its tags separated by `;`.
    Csv,
    /// One JSON object a line: `{"fields": {…}}` as the API's create takes it, optionally
    /// with `"records"` (collection to documents) and `"consents"` (purpose, notice
    /// version, channel, separate, guardian).
    Jsonl,
}

impl Format {
    /// The format a file name suggests (`.csv`; `.jsonl`, `.ndjson`, `.json`).
    pub fn from_path(path: &std::path::Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" | "json" => Some(Self::Jsonl),
            _ => None,
        }
    }
}

/// One subject read from the file, with its line number (1 is the first line of the
/// file; in a CSV file, the header).
#[derive(Clone)]
pub struct Line {
    pub number: u64,
    pub fields: Map<String, Value>,
    /// (collection, document) for each record.
    pub records: Vec<(String, Value)>,
    /// (purpose, what was consented to) for each consent given.
    pub consents: Vec<(String, GrantRequest)>,
}

/// Why a line cannot be imported: where, which field, which rule. Never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: u64,
    pub field: String,
    pub rule: String,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: field {}: {} ({})",
            self.line, self.field, self.rule, self.message
        )
    }
}

impl LineError {
    fn new(line: u64, field: &str, rule: &str, message: &str) -> Self {
        Self {
            line,
            field: field.to_owned(),
            rule: rule.to_owned(),
            message: message.to_owned(),
        }
    }

    fn invalid(line: u64, e: ValidationError) -> Self {
        Self {
            line,
            field: e.field,
            rule: e.rule.to_owned(),
            message: e.message,
        }
    }
}

/// A JSON line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    fields: Map<String, Value>,
    /// Collection name to a list of documents.
    #[serde(default)]
    records: std::collections::BTreeMap<String, Vec<Value>>,
    #[serde(default)]
    consents: Vec<JsonConsent>,
}

/// A consent in a JSON line: the purpose and what `PUT …/consents/{purpose}` takes.
#[derive(Deserialize)]
struct JsonConsent {
    purpose: String,
    #[serde(flatten)]
    grant: GrantRequest,
}

/// Reads the lines of a file. A line that cannot even be read (bad CSV, bad JSON) comes
/// back as a [`LineError`]; a header that names an unknown field is an error for the
/// whole file.
pub fn lines<'a>(
    state: &'a Pipeline,
    format: Format,
    input: impl std::io::Read + 'a,
) -> Result<Box<dyn Iterator<Item = Result<Line, LineError>> + 'a>, LineError> {
    match format {
        Format::Jsonl => {
            let reader = std::io::BufReader::with_capacity(1 << 20, input);
            Ok(Box::new(reader.lines().enumerate().filter_map(|(i, text)| {
                let number = i as u64 + 1;
                let text = match text {
                    Ok(t) => t,
                    Err(_) => {
                        return Some(Err(LineError::new(
                            number,
                            "-",
                            "encoding",
                            "the line is not UTF-8 text",
                        )))
                    }
                };
                if text.trim().is_empty() {
                    return None;
                }
                Some(
                    serde_json::from_str::<JsonLine>(&text)
                        .map(|l| Line {
                            number,
                            fields: l.fields,
                            records: l
                                .records
                                .into_iter()
                                .flat_map(|(c, docs)| docs.into_iter().map(move |d| (c.clone(), d)))
                                .collect(),
                            consents: l.consents.into_iter().map(|c| (c.purpose, c.grant)).collect(),
                        })
                        .map_err(|e| {
                            let message = if e.is_data() {
                                "a line is an object: \"fields\" (field names and values), optional \"records\" (collection to documents) and \"consents\" ([{purpose, notice_version, channel, separate, guardian}])"
                            } else {
                                "the line is not a JSON object"
                            };
                            LineError::new(number, "-", "json", message)
                        }),
                )
            })))
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(false)
                .buffer_capacity(1 << 20)
                .from_reader(input);
            let catalogue = state.vault.catalogue();
            let headers = reader
                .headers()
                .map_err(|_| LineError::new(1, "-", "csv", "the header row cannot be read"))?
                .clone();
            let mut tags = Vec::with_capacity(headers.len());
            for (i, name) in headers.iter().enumerate() {
                let spec = catalogue
                    .field(name)
                    .map_err(|e| LineError::invalid(1, e))?;
                if headers.iter().take(i).any(|h| h == name) {
                    return Err(LineError::new(
                        1,
                        name,
                        "duplicate_column",
                        "a field named twice",
                    ));
                }
                tags.push(matches!(spec.kind, FieldType::Tags { .. }));
            }
            let names: Vec<String> = headers.iter().map(str::to_owned).collect();
            let mut record = csv::StringRecord::new();
            Ok(Box::new(std::iter::from_fn(move || {
                match reader.read_record(&mut record) {
                    Ok(false) => None,
                    Ok(true) => {
                        let number = record.position().map_or(0, |p| p.line());
                        let mut fields = Map::new();
                        for ((name, cell), is_tags) in names.iter().zip(record.iter()).zip(&tags) {
                            if cell.is_empty() {
                                continue;
                            }
                            let value = if *is_tags {
                                Value::Array(
                                    cell.split(';')
                                        .map(|t| Value::String(t.trim().to_owned()))
                                        .collect(),
                                )
                            } else {
                                Value::String(cell.to_owned())
                            };
                            fields.insert(name.clone(), value);
                        }
                        Some(Ok(Line {
                            number,
                            fields,
                            records: Vec::new(),
                            consents: Vec::new(),
                        }))
                    }
                    Err(e) => {
                        let number = e.position().map_or(0, |p| p.line());
                        let message = match e.kind() {
                            csv::ErrorKind::UnequalLengths { .. } => {
                                "the row has a different number of cells than the header"
                            }
                            csv::ErrorKind::Utf8 { .. } => "the row is not UTF-8 text",
                            _ => "the row cannot be read as CSV",
                        };
                        if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                            return None;
                        }
                        Some(Err(LineError::new(number, "-", "csv", message)))
                    }
                }
            })))
        }
    }
}

/// Checks a line as a create, its records and its consents would be checked, without
/// encrypting anything.
pub fn check(state: &Pipeline, line: &Line) -> Result<(), LineError> {
    state
        .vault
        .validate_fields(&line.fields)
        .map_err(|e| line_error(line.number, e))?;
    for (collection, document) in &line.records {
        state
            .vault
            .record_bytes(collection, document)
            .map_err(|e| match e {
                VaultError::UnknownCollection => LineError::new(
                    line.number,
                    collection,
                    "collection_not_found",
                    "not a record collection in the classification",
                ),
                other => line_error(line.number, other),
            })?;
    }
    consent_rows(
        state,
        &SubjectId::in_run(&[0; 16], line.number),
        line,
        "check",
    )?;
    Ok(())
}

/// The consent events of a line, checked as a grant over the API would be.
fn consent_rows(
    state: &Pipeline,
    id: &SubjectId,
    line: &Line,
    actor: &str,
) -> Result<Vec<ConsentRow>, LineError> {
    let policy = state.policy.current();
    line.consents
        .iter()
        .map(|(purpose, grant)| {
            let field = format!("consents.{purpose}");
            let spec = policy.purposes().get(purpose).ok_or_else(|| {
                LineError::new(line.number, &field, "unknown_purpose", "not declared in purposes.toml")
            })?;
            Consents::grant_row(id, purpose, spec, grant, actor).map_err(|e| match e {
                ConsentError::NotConsentBased(_) => LineError::new(
                    line.number,
                    &field,
                    "not_consent_based",
                    "this purpose does not rest on consent",
                ),
                _ => LineError::new(
                    line.number,
                    &field,
                    "invalid_consent",
                    "notice_version and channel must be 1 to 64 characters without control characters",
                ),
            })
        })
        .collect()
}

fn line_error(line: u64, e: VaultError) -> LineError {
    match e {
        VaultError::Invalid(v) => LineError::invalid(line, v),
        other => LineError::new(line, "-", super::reason_code(&other), "cannot be imported"),
    }
}

/// An import run: who runs it, for which purpose, and the secret its subject ids are
/// derived from.
pub struct Run {
    pub id: String,
    pub secret: [u8; 16],
    pub purpose: String,
    pub actor_token: String,
    pub actor_role: String,
}

impl Run {
    /// A run by the operator at the command line. The purpose must be declared.
    pub fn by_operator(
        state: &Pipeline,
        id: String,
        secret: [u8; 16],
        purpose: &str,
    ) -> Result<Self, Error> {
        if !state.policy.current().purposes().contains_key(purpose) {
            return Err(Error::BadRequest {
                code: "unknown_purpose",
                message: format!("purpose {purpose:?} is not declared in purposes.toml"),
            });
        }
        Ok(Self {
            id,
            secret,
            purpose: purpose.to_owned(),
            actor_token: "cli".into(),
            actor_role: "operator".into(),
        })
    }

    pub fn subject_id(&self, line: u64) -> SubjectId {
        SubjectId::in_run(&self.secret, line)
    }
}

/// A line validated and encrypted, ready to be stored.
pub struct Prepared {
    pub line: u64,
    pub id: SubjectId,
    subject: ImportSubject,
}

/// Validates and encrypts a line (fields and records) under its own new data key.
pub fn prepare(state: &Pipeline, run: &Run, line: &Line) -> Result<Prepared, LineError> {
    let id = run.subject_id(line.number);
    let (subject, records) = state
        .vault
        .prepare_subject(&id, &line.fields, &line.records)
        .map_err(|e| line_error(line.number, e))?;
    let consents = consent_rows(state, &id, line, &run.actor_token)?;
    Ok(Prepared {
        line: line.number,
        id,
        subject: ImportSubject {
            subject,
            records,
            consents,
        },
    })
}

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Stored now.
    Stored,
    /// Stored by an earlier, interrupted attempt of the same run: left as it is.
    AlreadyThere,
}

/// A batch of prepared lines made ready to store: its rows and its audit events, built
/// on the importer's worker thread so that the store's writer only binds and inserts.
pub struct Batch {
    /// The ids of its first and last subjects: a batch stored by an earlier, interrupted
    /// attempt of the run is recognised by them.
    ends: Vec<String>,
    last_line: u64,
    rows: ImportRows,
    events: Vec<Event>,
}

impl Batch {
    /// One `subject.import` event per subject, and a `consent.grant` event for each
    /// consent it was imported with (each consent is evidence of its own, as a grant
    /// over the API is).
    pub fn new(run: &Run, prepared: Vec<Prepared>) -> Self {
        let event = |action: &str| {
            Event::new(
                &run.actor_token,
                &run.actor_role,
                &run.purpose,
                &run.id,
                action,
            )
        };
        let mut ends: Vec<String> = [prepared.first(), prepared.last()]
            .into_iter()
            .flatten()
            .map(|p| p.id.as_str().to_owned())
            .collect();
        ends.dedup();
        let mut events = Vec::with_capacity(prepared.len());
        for p in &prepared {
            events.push(
                event("subject.import")
                    .subject(p.id.as_str())
                    .target(&format!("{}:line:{}", run.id, p.line)),
            );
            for c in &p.subject.consents {
                events.push(
                    event("consent.grant")
                        .subject(p.id.as_str())
                        .target(&c.purpose),
                );
            }
        }
        Self {
            ends,
            last_line: prepared.last().map_or(0, |p| p.line),
            rows: ImportRows::new(prepared.into_iter().map(|p| p.subject).collect()),
            events,
        }
    }

    /// How many subjects it holds.
    pub fn len(&self) -> usize {
        self.rows.subjects()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The line number of its last subject.
    pub fn last_line(&self) -> u64 {
        self.last_line
    }
}

/// Stores a batch with its audit events, in one transaction. A batch the run already
/// stored before an interruption is recognised and left alone.
pub async fn commit(state: &Pipeline, batch: Batch) -> Result<Committed, Error> {
    if batch.is_empty() {
        return Ok(Committed::Stored);
    }
    let found = state
        .store
        .count_subjects(&batch.ends)
        .await
        .map_err(Error::internal)?;
    if found == batch.ends.len() as i64 {
        return Ok(Committed::AlreadyThere);
    }
    if found != 0 {
        return Err(Error::internal(
            "part of this import batch exists and part does not: the store was changed outside the import",
        ));
    }
    state.vault.import(batch.rows, batch.events).await?;
    Ok(Committed::Stored)
}
