//! What the in-process benchmarks share: a fresh SQLite vault in a temporary directory,
//! and a subject in it.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::Path;

use piivault::audit::Event;
use piivault::config::{LogFormat, Settings};
use piivault::crypto::MasterKeySource;
use piivault::vault::SubjectId;
use piivault::App;

/// A vault on SQLite in `dir`, with the built-in policy.
pub fn settings(dir: &Path) -> Settings {
    Settings {
        data_dir: dir.to_path_buf(),
        database_url: format!("sqlite://{}?mode=rwc", dir.join("bench.db").display()).into(),
        policy_dir: None,
        reports_dir: None,
        master: MasterKeySource::File {
            path: dir.join("master.key"),
            create: true,
        },
        log_format: LogFormat::Text,
        max_token_ttl: piivault::authz::DEFAULT_MAX_TTL,
        audit_key_file: dir.join("audit/signing.key"),
        suite: Default::default(),
        key_source_hold: piivault::config::DEFAULT_KEY_SOURCE_HOLD,
        file: Default::default(),
    }
}

/// Creates a subject with `fields` (a JSON object), audited as a bench operator.
pub async fn subject(app: &App, fields: serde_json::Value) -> SubjectId {
    let id = SubjectId::generate();
    app.vault
        .create(
            &id,
            fields.as_object().unwrap(),
            vec![Event::new("bench", "operator", "dsr", "bench", "create").subject(id.as_str())],
        )
        .await
        .unwrap();
    id
}
