//! Leak checks run by every test that uses the test app (`helpers::TestApp`), not by one
//! canary test alone:
//!
//! - every personal value a test sends (field values, record documents, lookup values)
//!   and every token secret it is given is remembered;
//! - an error answer to a request never holds a value that request sent;
//! - the vault's own log lines, at DEBUG, are checked as they are written, against every
//!   value sent so far by any test of the run;
//! - when a test's vault is dropped, every file in its data directory (database, WAL,
//!   audit index, checkpoint file, keys' public halves) and, on PostgreSQL, a dump of its
//!   database are searched for every value that test sent.
//!
//! Values shorter than 8 bytes, and values that occur in the shipped policy files (the
//! enumerations of the classification), are not searched for: they would be found by
//! chance, or are not personal.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, Once};

use aho_corasick::AhoCorasick;
use serde_json::Value;

/// Every value sent by any test of this run, and a matcher for all of them (made again
/// when a value is added).
#[derive(Default)]
struct Sent {
    values: BTreeSet<String>,
    matcher: Option<Arc<Matcher>>,
}

/// Finds any of the values in one pass.
pub struct Matcher {
    automaton: AhoCorasick,
    values: Vec<String>,
}

impl Matcher {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let values: Vec<String> = values.into_iter().collect();
        Self {
            automaton: AhoCorasick::new(&values).expect("values make an automaton"),
            values,
        }
    }

    /// The first value that occurs in `bytes`, outside the vault's own ids (see
    /// [`mask_ids`]).
    pub fn first_in(&self, bytes: &[u8]) -> Option<&str> {
        self.automaton
            .find(&*mask_ids(bytes))
            .map(|m| self.values[m.pattern().as_usize()].as_str())
    }

    /// Fails if `bytes` (described by `what`) holds one of the values.
    pub fn assert_absent(&self, what: &str, bytes: &[u8]) {
        if let Some(v) = self.first_in(bytes) {
            panic!("a value sent by a test ({v:?}) is in {what}");
        }
    }
}

/// `bytes` with every vault id (`sub_`, `rec_`, `tok_`, `req_`… and 32 hex digits)
/// blanked out. The ids are not personal values, and an id's hex digits can hold a
/// sent phone number by chance: an imported subject's id carries its line number,
/// so it has a long run of zeros, and a run's random prefix may end in `136`.
pub fn mask_ids(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const HEX: usize = 32;
    let is_id_at = |i: usize| {
        i >= 3
            && bytes.len() > i + HEX
            && bytes[i] == b'_'
            && bytes[i - 3..i].iter().all(u8::is_ascii_lowercase)
            && bytes[i + 1..=i + HEX]
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let Some(first) = (0..bytes.len()).find(|&i| is_id_at(i)) else {
        return std::borrow::Cow::Borrowed(bytes);
    };
    let mut out = bytes.to_vec();
    let mut i = first;
    while i < bytes.len() {
        if is_id_at(i) {
            out[i - 3..=i + HEX].fill(b'#');
            i += HEX + 1;
        } else {
            i += 1;
        }
    }
    std::borrow::Cow::Owned(out)
}

static SENT: LazyLock<Mutex<Sent>> = LazyLock::new(Default::default);

/// A matcher for every value sent so far by any test of this run.
pub fn sent() -> Arc<Matcher> {
    let mut sent = lock(&SENT);
    if let Some(m) = &sent.matcher {
        return m.clone();
    }
    let m = Arc::new(Matcher::new(sent.values.iter().cloned()));
    sent.matcher = Some(m.clone());
    m
}

/// Values found in a log line, with the line's target.
static FOUND_IN_LOGS: LazyLock<Mutex<Vec<String>>> = LazyLock::new(Default::default);

/// The shipped policy files, whose words are not personal values.
static POLICY_TEXT: LazyLock<String> = LazyLock::new(|| {
    let dir = crate::helpers::policy_dir();
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).expect("policy dir").flatten() {
        text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    text
});

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The vault's own ids (`sub_…`, `tok_…`): not personal values, and stored in clear.
fn vault_id(value: &str) -> bool {
    value.split_once('_').is_some_and(|(kind, hex)| {
        kind.len() <= 4 && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

fn searchable(value: &str) -> bool {
    let mut chars = value.chars();
    let first = chars.next();
    value.len() >= 8
        && !chars.all(|c| Some(c) == first)
        && !vault_id(value)
        && !POLICY_TEXT.contains(value)
}

fn leaves(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| leaves(i, out)),
        Value::Object(map) => map.values().for_each(|i| leaves(i, out)),
        _ => {}
    }
}

/// The personal values in a request to `path` with `body`, remembered for the checks.
pub fn remember_request(path: &str, body: &Value) -> Vec<String> {
    let mut found = Vec::new();
    if path.contains("/records/") {
        leaves(body, &mut found);
    } else {
        if let Some(fields) = body.get("fields") {
            leaves(fields, &mut found);
        }
        if path.ends_with("/lookup") {
            if let Some(v) = body.get("value") {
                leaves(v, &mut found);
            }
        }
    }
    found.retain(|v| searchable(v));
    remember(&found);
    found
}

/// Remembers values (personal values, token secrets) to search for.
pub fn remember(values: &[String]) {
    let mut sent = lock(&SENT);
    for v in values {
        if sent.values.insert(v.clone()) {
            sent.matcher = None;
        }
    }
}

/// A writer for the log subscriber that checks each line against every value sent so
/// far, then drops it (the tests do not need the lines themselves).
struct LineCheck;

impl std::io::Write for LineCheck {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(v) = sent().first_in(buf) {
            let line = String::from_utf8_lossy(buf).into_owned();
            lock(&FOUND_IN_LOGS).push(format!("{v:?} in the log line {line:?}"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the vault's log lines (DEBUG and up, as the server would format them) through
/// the check; once per test process.
pub fn check_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn,piivault=debug"))
            .with_ansi(false)
            .with_writer(|| LineCheck)
            .try_init();
    });
}

/// Fails if any log line so far held a value sent by a test.
pub fn assert_logs_clean() {
    let found = lock(&FOUND_IN_LOGS);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Fails if any file under `dir` holds one of the values.
pub fn assert_dir_clean(dir: &Path, values: &Matcher) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            assert_dir_clean(&path, values);
        } else if let Ok(bytes) = std::fs::read(&path) {
            values.assert_absent(&path.display().to_string(), &bytes);
        }
    }
}

/// Fails if a data-only dump of the PostgreSQL database at `url` holds one of the values.
pub fn assert_dump_clean(url: &str, values: &Matcher) {
    let dump = std::process::Command::new("pg_dump")
        .arg("--data-only")
        .arg(url)
        .output()
        .expect("pg_dump runs");
    assert!(
        dump.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    values.assert_absent("a dump of the PostgreSQL database", &dump.stdout);
}

#[test]
fn values_are_taken_from_fields_records_and_lookups_only() {
    let body = serde_json::json!({"fields": {"phone": "13811112222", "tags": ["a-tag-long-enough"], "tier": "gold"}});
    assert_eq!(
        remember_request("/v1/subjects", &body),
        ["13811112222", "a-tag-long-enough"]
    );
    let lookup = serde_json::json!({"field": "id_number", "value": "11010519491231002X"});
    assert_eq!(
        remember_request("/v1/subjects/lookup", &lookup),
        ["11010519491231002X"]
    );
    let record = serde_json::json!({"text": "a ticket's own words", "n": 3});
    assert_eq!(
        remember_request("/v1/subjects/s_1/records/service_tickets", &record),
        ["a ticket's own words"]
    );
    // Names of fields, short values and the classification's words are not searched for.
    let token = serde_json::json!({"role": "customer_service", "purposes": ["service"]});
    assert!(remember_request("/v1/tokens", &token).is_empty());
    assert!(remember_request(
        "/v1/subjects",
        &serde_json::json!({"fields": {"x": "aaaaaaaaaa"}})
    )
    .is_empty());
    assert!(remember_request(
        "/v1/subjects",
        &serde_json::json!({"fields": {"x": "sub_0a1b2c3d4e"}})
    )
    .is_empty());
    let m = Matcher::new(["13811112222".to_owned(), "11010519491231002X".to_owned()]);
    assert_eq!(
        m.first_in(b"xx11010519491231002Xyy"),
        Some("11010519491231002X")
    );
    assert_eq!(m.first_in(b"1381111222"), None);
}

/// An id that holds a sent value by chance is not a leak (CI once failed on an imported
/// subject's id, `sub_52f5a136000000000002…`, holding the phone number 13600000000); the
/// same value beside the id still is.
#[test]
fn a_value_inside_a_vault_id_is_not_a_leak() {
    let m = Matcher::new(["13600000000".to_owned()]);
    let line = b"read{subject=sub_52f5a136000000000002051ecf9f3a39 role=dsr}";
    assert_eq!(m.first_in(line), None);
    assert_eq!(
        m.first_in(b"subject=sub_52f5a136000000000002051ecf9f3a39 phone=13600000000"),
        Some("13600000000")
    );
    // Not an id: too few hex digits, or upper case.
    assert_eq!(m.first_in(b"sub_13600000000"), Some("13600000000"));
    assert_eq!(
        m.first_in(b"sub_52F5A136000000000002051ECF9F3A39"),
        Some("13600000000")
    );
    assert_eq!(
        &*mask_ids(b"x tok_0123456789abcdef0123456789abcdef y"),
        b"x #################################### y"
    );
}

/// The checks find what they look for: a value a test sent, copied into the data
/// directory by hand, fails the directory scan; the vault's own files pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_in_the_data_directory_is_found() {
    let t = crate::helpers::spawn_app(crate::helpers::Db::Sqlite).await;
    let dsr = t.dsr().await;
    let value = "13855554321";
    t.create(&dsr, serde_json::json!({"phone": value})).await;
    let mine = Matcher::new([value.to_owned()]);
    assert_dir_clean(t.dir.path(), &mine);
    let planted = t.dir.path().join("notes.txt");
    std::fs::write(&planted, format!("phone {value}")).unwrap();
    let found = std::panic::catch_unwind(|| assert_dir_clean(t.dir.path(), &mine));
    let message = *found
        .expect_err("the planted value is found")
        .downcast::<String>()
        .unwrap();
    assert!(message.contains("notes.txt"), "{message}");
    std::fs::remove_file(planted).unwrap();
}
