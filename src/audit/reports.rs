//! Audit reports, declared one per file in `audit/` (name, description, parameters,
//! query). Every report takes a time window (`:from`, `:to`); other parameters are
//! named in the file and bound as text, never spliced into the SQL.
//! `:sensitive_fields` expands to the names of the sensitive fields and collections
//! from the classification. Three more read the audit index (src/store/audit_index.rs),
//! since the trail's table itself is indexed only by sequence number:
//! - `FROM :events_in_window` reads as `FROM audit_events`, limited to the events of the
//!   window, found through the index's time summary (a report written
//!   `FROM audit_events WHERE ts >= :from AND ts < :to` gives the same rows by reading
//!   the whole trail);
//! - `seq IN (:subject_seqs)`: the events about the report's `subject` parameter;
//! - `seq IN (:token_seqs)`: the events made by the report's `token` parameter, within
//!   the window.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::classify::Catalogue;
use crate::store::{ReportParam, Store, StoreError};

const BUILTIN: &[&str] = &[
    include_str!("../../audit/accesses_by_subject.toml"),
    include_str!("../../audit/accesses_by_actor.toml"),
    include_str!("../../audit/denied_accesses.toml"),
    include_str!("../../audit/sensitive_reads_by_purpose.toml"),
    include_str!("../../audit/exports_and_erasures.toml"),
    include_str!("../../audit/consent_changes.toml"),
    include_str!("../../audit/token_lifecycle.toml"),
    include_str!("../../audit/incident.toml"),
    include_str!("../../audit/retention_sweeps.toml"),
    include_str!("../../audit/provisions.toml"),
    include_str!("../../audit/accesses_by_purpose.toml"),
    include_str!("../../audit/requests_timeliness.toml"),
    include_str!("../../audit/incidents.toml"),
    include_str!("../../audit/accesses_over_time.toml"),
];

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report file {file}: {message}")]
    Definition { file: String, message: String },
    #[error("no report named {0:?}")]
    Unknown(String),
    #[error("parameter {0:?} is required by this report")]
    MissingParameter(String),
    #[error("{0}")]
    BadParameter(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportDef {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub parameters: Vec<String>,
    #[serde(skip_serializing)]
    pub query: String,
}

/// The result of a report: column names and rows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportResult {
    pub report: String,
    pub from: String,
    pub to: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// The declared reports.
#[derive(Debug, Clone)]
pub struct Reports {
    defs: BTreeMap<String, ReportDef>,
    sensitive: Vec<String>,
}

/// Placeholders every report may use (`subject_seqs` needs a `subject` parameter,
/// `token_seqs` a `token` one).
const BUILT_IN_PLACEHOLDERS: [&str; 6] = [
    "from",
    "to",
    "sensitive_fields",
    "events_in_window",
    "subject_seqs",
    "token_seqs",
];

/// The parameter a placeholder stands on, for those that stand on one.
fn needs_parameter(placeholder: &str) -> Option<&'static str> {
    match placeholder {
        "subject_seqs" => Some("subject"),
        "token_seqs" => Some("token"),
        _ => None,
    }
}

fn parse_def(file: &str, text: &str) -> Result<ReportDef, ReportError> {
    let def: ReportDef = toml::from_str(text).map_err(|e| ReportError::Definition {
        file: file.to_owned(),
        message: e.to_string(),
    })?;
    let bad = |message: String| ReportError::Definition {
        file: file.to_owned(),
        message,
    };
    let ok_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if !ok_name(&def.name) {
        return Err(bad("name must be lower_snake_case".into()));
    }
    if let Some(p) = def
        .parameters
        .iter()
        .find(|p| !ok_name(p) || BUILT_IN_PLACEHOLDERS.contains(&p.as_str()))
    {
        return Err(bad(format!(
            "parameter {p:?} is reserved or not lower_snake_case"
        )));
    }
    let head = def.query.trim_start().to_ascii_lowercase();
    if !head.starts_with("select") || def.query.contains(';') {
        return Err(bad("query must be a single SELECT statement".into()));
    }
    for used in placeholders(&def.query) {
        let needs = needs_parameter(&used);
        let declared = match needs {
            Some(param) => def.parameters.iter().any(|p| p == param),
            None => {
                BUILT_IN_PLACEHOLDERS.contains(&used.as_str()) || def.parameters.contains(&used)
            }
        };
        if !declared {
            return Err(bad(match needs {
                Some(param) => format!(":{used} needs a `{param}` parameter"),
                None => format!(":{used} is used but not declared in parameters"),
            }));
        }
    }
    Ok(def)
}

/// Names used as `:name` in a query.
fn placeholders(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = query.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b':'
            && i + 1 < b.len()
            && b[i + 1].is_ascii_lowercase()
            && (i == 0 || b[i - 1] != b':')
        {
            let start = i + 1;
            let mut end = start;
            while end < b.len()
                && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
            {
                end += 1;
            }
            out.push(query[start..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

impl Reports {
    /// Loads every `*.toml` in `dir`, or the built-in reports when `dir` is None.
    pub fn load(dir: Option<&Path>, catalogue: &Catalogue) -> Result<Self, ReportError> {
        let mut defs = BTreeMap::new();
        let mut add = |file: String, text: &str| -> Result<(), ReportError> {
            let def = parse_def(&file, text)?;
            if defs.insert(def.name.clone(), def).is_some() {
                return Err(ReportError::Definition {
                    file,
                    message: "a report with this name is already declared".into(),
                });
            }
            Ok(())
        };
        match dir {
            Some(dir) => {
                let mut paths: Vec<_> = std::fs::read_dir(dir)
                    .map_err(|e| ReportError::Definition {
                        file: dir.display().to_string(),
                        message: e.to_string(),
                    })?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                    .collect();
                paths.sort();
                for p in paths {
                    let text =
                        std::fs::read_to_string(&p).map_err(|e| ReportError::Definition {
                            file: p.display().to_string(),
                            message: e.to_string(),
                        })?;
                    add(p.display().to_string(), &text)?;
                }
            }
            None => {
                for (i, text) in BUILTIN.iter().enumerate() {
                    add(format!("built-in #{i}"), text)?;
                }
            }
        }
        let mut sensitive: Vec<String> = catalogue
            .fields()
            .filter(|f| f.sensitive)
            .map(|f| f.name.clone())
            .chain(
                catalogue
                    .collections()
                    .filter(|c| c.sensitive)
                    .map(|c| c.name.clone()),
            )
            .collect();
        sensitive.sort();
        Ok(Self { defs, sensitive })
    }

    pub fn list(&self) -> impl Iterator<Item = &ReportDef> {
        self.defs.values()
    }

    /// Runs a report over `[from, to)` (milliseconds) with its named parameters.
    pub async fn run(
        &self,
        store: &Store,
        name: &str,
        from: i64,
        to: i64,
        params: &BTreeMap<String, String>,
    ) -> Result<ReportResult, ReportError> {
        let def = self
            .defs
            .get(name)
            .ok_or_else(|| ReportError::Unknown(name.to_owned()))?;
        if to <= from {
            return Err(ReportError::BadParameter(
                "--to must be after --from".into(),
            ));
        }
        for p in &def.parameters {
            if params.get(p).is_none_or(|v| v.is_empty()) {
                return Err(ReportError::MissingParameter(p.clone()));
            }
        }
        if let Some(extra) = params.keys().find(|k| !def.parameters.contains(k)) {
            return Err(ReportError::BadParameter(format!(
                "this report takes no parameter {extra:?} (it takes: {})",
                def.parameters.join(", ")
            )));
        }
        // Rewrite :name placeholders into $n binds, in order of appearance.
        let mut sql = String::with_capacity(def.query.len());
        let mut binds = Vec::new();
        let mut rest = def.query.as_str();
        for used in placeholders(&def.query) {
            let marker = format!(":{used}");
            let Some(at) = rest.find(&marker) else { break };
            sql.push_str(&rest[..at]);
            rest = &rest[at + marker.len()..];
            match used.as_str() {
                "sensitive_fields" => {
                    // Names from the classification are lower_snake_case: safe literals.
                    let list: Vec<String> =
                        self.sensitive.iter().map(|n| format!("'{n}'")).collect();
                    sql.push_str(&if list.is_empty() {
                        "''".to_owned()
                    } else {
                        list.join(", ")
                    });
                }
                "events_in_window" => {
                    let (f, t) = (
                        bind(&mut binds, ReportParam::Int(from)),
                        bind(&mut binds, ReportParam::Int(to)),
                    );
                    sql.push_str(&crate::store::events_in_window(&f, &t));
                }
                "subject_seqs" => {
                    let subject = params.get("subject").cloned().unwrap_or_default();
                    let s = bind(&mut binds, ReportParam::Text(subject));
                    sql.push_str(&crate::store::subject_seqs(&s, None));
                }
                "token_seqs" => {
                    let token = params.get("token").cloned().unwrap_or_default();
                    let k = bind(&mut binds, ReportParam::Text(token));
                    let (f, t) = (
                        bind(&mut binds, ReportParam::Int(from)),
                        bind(&mut binds, ReportParam::Int(to)),
                    );
                    sql.push_str(&crate::store::token_seqs(&k, &f, &t));
                }
                other => {
                    let value = match other {
                        "from" => ReportParam::Int(from),
                        "to" => ReportParam::Int(to),
                        p => ReportParam::Text(params.get(p).cloned().unwrap_or_default()),
                    };
                    sql.push_str(&bind(&mut binds, value));
                }
            }
        }
        sql.push_str(rest);
        let (columns, rows) = store.run_report(&sql, &binds).await?;
        let columns = if columns.is_empty() {
            select_columns(&def.query)
        } else {
            columns
        };
        let rows = rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .zip(&columns)
                    .map(|(v, c)| match v {
                        Value::Number(n) if c == "ts" || c.ends_with("_ts") => n
                            .as_i64()
                            .map(|ms| Value::String(crate::store::rfc3339(ms)))
                            .unwrap_or(Value::Number(n)),
                        other => other,
                    })
                    .collect()
            })
            .collect();
        Ok(ReportResult {
            report: def.name.clone(),
            from: crate::store::rfc3339(from),
            to: crate::store::rfc3339(to),
            columns,
            rows,
        })
    }
}

/// Adds a bind and gives its placeholder (`$n`).
fn bind(binds: &mut Vec<ReportParam>, value: ReportParam) -> String {
    binds.push(value);
    format!("${}", binds.len())
}

/// Column names of a simple `SELECT a, b AS c, COUNT(*) AS n FROM …` (used when a
/// report has no rows to read them from).
fn select_columns(query: &str) -> Vec<String> {
    let lower = query.to_ascii_lowercase();
    let start = lower.find("select").map_or(0, |i| i + 6);
    let end = lower
        .find(" from")
        .or_else(|| lower.find("\nfrom"))
        .unwrap_or(lower.len());
    let mut cols = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in query[start..end].chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                cols.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    cols.push(current);
    cols.iter()
        .map(|c| {
            let c = c.trim();
            let lc = c.to_ascii_lowercase();
            match lc.rfind(" as ") {
                Some(i) => c[i + 4..].trim().to_owned(),
                None => c.rsplit('.').next().unwrap_or(c).trim().to_owned(),
            }
        })
        .collect()
}

impl ReportResult {
    pub fn to_csv(&self) -> String {
        fn cell(v: &Value) -> String {
            let s = match v {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s
            }
        }
        let mut out = self.columns.join(",");
        out.push('\n');
        for row in &self.rows {
            out.push_str(&row.iter().map(cell).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                Value::Object(
                    self.columns
                        .iter()
                        .cloned()
                        .zip(r.iter().cloned())
                        .collect(),
                )
            })
            .collect();
        serde_json::json!({
            "report": self.report,
            "from": self.from,
            "to": self.to,
            "rows": rows,
        })
    }
}

/// Parses a window bound: `YYYY-MM-DD` (start of that day, UTC; as `to`, the end of it)
/// or RFC 3339.
pub fn parse_bound(text: &str, end_of_day: bool) -> Result<i64, ReportError> {
    use time::format_description::well_known::Rfc3339;
    let bad = || {
        ReportError::BadParameter(format!(
            "{text:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"
        ))
    };
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(text, &fmt).map_err(|_| bad())?;
    let d = if end_of_day {
        d.next_day().ok_or_else(bad)?
    } else {
        d
    };
    Ok(d.midnight().assume_utc().unix_timestamp() * 1000)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn builtin_reports_load() {
        let r = Reports::load(None, &Catalogue::builtin().unwrap()).unwrap();
        assert_eq!(r.list().count(), BUILTIN.len());
        assert_eq!(BUILTIN.len(), 14);
        assert_eq!(
            r.sensitive,
            vec!["bank_card", "id_number", "is_minor", "payments"]
        );
    }

    #[test]
    fn bad_definitions_are_refused() {
        let ok = "name = \"x\"\ndescription = \"d\"\nquery = \"SELECT seq FROM audit_events WHERE ts >= :from\"";
        assert!(parse_def("f", ok).is_ok());
        assert!(parse_def("f", &ok.replace(":from", ":who")).is_err());
        assert!(parse_def("f", &ok.replace("SELECT", "DELETE")).is_err());
        assert!(parse_def("f", &format!("{ok}\nparameters = [\"from\"]")).is_err());
        assert!(parse_def("f", &ok.replace("ts >= :from", "ts >= :from; DROP TABLE x")).is_err());
    }

    /// `:subject_seqs` stands for the events about the report's `subject` parameter, so
    /// a report that uses it must declare one; `subject_seqs` is not a parameter name.
    #[test]
    fn subject_seqs_needs_a_subject_parameter() {
        for (placeholder, param) in [("subject_seqs", "subject"), ("token_seqs", "token")] {
            let q = format!("name = \"x\"\ndescription = \"d\"\nquery = \"SELECT seq FROM :events_in_window WHERE seq IN (:{placeholder})\"");
            let err = parse_def("f", &q).unwrap_err().to_string();
            assert!(
                err.contains(&format!("needs a `{param}` parameter")),
                "{err}"
            );
            assert!(parse_def("f", &format!("parameters = [\"{param}\"]\n{q}")).is_ok());
            assert!(parse_def("f", &format!("parameters = [\"{placeholder}\"]\n{q}")).is_err());
        }
    }

    #[test]
    fn columns_and_bounds() {
        assert_eq!(
            select_columns("SELECT a, b.c, COUNT(DISTINCT x) AS n, MIN(ts) AS first_ts FROM t"),
            vec!["a", "c", "n", "first_ts"]
        );
        assert_eq!(parse_bound("1970-01-02", false).unwrap(), 86_400_000);
        assert_eq!(parse_bound("1970-01-01", true).unwrap(), 86_400_000);
        assert_eq!(parse_bound("1970-01-01T00:00:01Z", false).unwrap(), 1000);
        assert!(parse_bound("yesterday", false).is_err());
    }
}
