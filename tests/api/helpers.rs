use std::path::{Path, PathBuf};
use std::time::Duration;

use piivault::authz::IssueRequest;
use piivault::config::{LogFormat, Settings};
use piivault::crypto::MasterKeySource;
use piivault::{App, ServeOptions, Server};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::{AnyPool, Connection};

/// Runs an async test body once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! both_stores {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let f = $body;
                f($crate::helpers::Db::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::helpers::postgres_url().is_none() {
                    return;
                }
                let f = $body;
                f($crate::helpers::Db::Postgres).await;
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server to test against. Unset: PostgreSQL tests are skipped, unless
/// `PIIVAULT_REQUIRE_POSTGRES=1` (as `.ci/run` sets), where that is a failure.
pub fn postgres_url() -> Option<String> {
    match std::env::var("PIIVAULT_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("PIIVAULT_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("PIIVAULT_TEST_DATABASE_URL is not set but PostgreSQL tests are required");
            }
            eprintln!("PIIVAULT_TEST_DATABASE_URL not set: PostgreSQL test skipped");
            None
        }
    }
}

fn with_database(base: &str, db: &str) -> String {
    let no_query = base.split('?').next().unwrap_or(base);
    let (server, _) = no_query.rsplit_once('/').expect("URL has a database path");
    format!("{server}/{db}")
}

/// A finished command's standard output followed by its standard error.
/// Sends signal `sig` (as `kill` names it: "-STOP", "-HUP", …) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let sent = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(sent, "kill {sig} {pid} failed");
}

pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fresh PostgreSQL database for one test; returns its URL and name.
pub async fn create_pg_database() -> (String, String) {
    let base = postgres_url().expect("PostgreSQL URL");
    let name = format!("piivault_t_{}", hex_id());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    (with_database(&base, &name), name)
}

pub async fn drop_pg_database(name: &str) {
    let Some(base) = postgres_url() else { return };
    if let Ok(mut conn) = sqlx::PgConnection::connect(&base).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

pub fn hex_id() -> String {
    piivault::crypto::random_id("x")[2..18].to_owned()
}

pub fn policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// Copies the shipped policy files into `to`.
pub fn copy_policies(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in [
        "classification.toml",
        "model.conf",
        "policy.csv",
        "purposes.toml",
        "recipients.toml",
        "pipia.toml",
    ] {
        std::fs::copy(policy_dir().join(f), to.join(f)).unwrap();
    }
}

/// A copy of the shipped policy directory with `extra` lines added to policy.csv.
pub fn policies_with(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_policies(dir.path());
    let csv = dir.path().join("policy.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, format!("{text}\n{extra}\n")).unwrap();
    dir
}

pub fn settings(dir: &Path, database_url: String) -> Settings {
    Settings {
        data_dir: dir.to_path_buf(),
        database_url: database_url.into(),
        policy_dir: Some(policy_dir()),
        reports_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("audit")),
        master: MasterKeySource::File {
            path: dir.join("master.key"),
            create: true,
        },
        log_format: LogFormat::Text,
        max_token_ttl: piivault::authz::DEFAULT_MAX_TTL,
        audit_key_file: dir.join("audit").join("signing.key"),
        suite: Default::default(),
        key_source_hold: piivault::config::DEFAULT_KEY_SOURCE_HOLD,
        // Due dates must not depend on the day the tests run: a request made in late
        // December would fall in a year holidays.toml does not list yet.
        file: piivault::config::FileConfig {
            dsr_calendar_fallback: Some(true),
            ..Default::default()
        },
    }
}

pub fn https_client(data_dir: &Path) -> reqwest::Client {
    piivault::install_crypto_provider();
    let ca = std::fs::read(data_dir.join("tls/ca.pem")).expect("CA file");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA parses"))
        .https_only(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A request to the vault at `base`, with a bearer token and purpose if given.
fn request(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    purpose: Option<&str>,
    body: Option<&Value>,
) -> reqwest::RequestBuilder {
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(p) = purpose {
        req = req.header("X-Purpose", p);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    req
}

/// Sends a request to the vault at `base` with a bearer token and purpose if given;
/// returns the status, the `X-Request-Id` and the body. The personal values the request
/// carries are remembered for the leak checks, and an error answer must hold none of them.
async fn send(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    purpose: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, String, Vec<u8>) {
    let sent = crate::leaks::Matcher::new(
        body.map_or_else(Vec::new, |b| crate::leaks::remember_request(path, b)),
    );
    let resp = request(client, base, method, path, token, purpose, body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status();
    let rid = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = resp.bytes().await.expect("body").to_vec();
    if status.is_client_error() || status.is_server_error() {
        sent.assert_absent(&format!("the {status} answer to {path}"), &bytes);
    }
    (status, rid, bytes)
}

/// Sends a request to the vault at `base` with a bearer token and purpose; returns
/// status and JSON body (a body that is not JSON comes back as a string).
pub async fn call_at(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    purpose: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let (status, _, bytes) = send(client, base, method, path, token, purpose, body).await;
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, json)
}

/// A running vault for one test.
pub struct TestApp {
    pub db: Db,
    pub base: String,
    pub client: reqwest::Client,
    pub app: App,
    pub settings: Settings,
    pub database_url: String,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
    server: Option<Server>,
}

pub struct Options {
    pub max_body_bytes: usize,
    pub key_usage_limit: Option<i64>,
    pub policy_dir: Option<PathBuf>,
    pub bad_token_limit: Option<piivault::authz::LimitConfig>,
    /// Adjusts how the server is run (connection bounds, timeouts).
    pub serve: Option<fn(&mut ServeOptions)>,
    /// The clock tokens are issued and checked by, and the vault's today (a manual one
    /// moves only when told).
    pub clock: Option<piivault::clock::Clock>,
    /// Adjusts the settings the vault opens with.
    pub settings: Option<fn(&mut Settings)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_body_bytes: piivault::config::DEFAULT_MAX_BODY_BYTES,
            key_usage_limit: None,
            policy_dir: None,
            bad_token_limit: None,
            serve: None,
            clock: None,
            settings: None,
        }
    }
}

/// A vault whose policy is the shipped one plus `extra` lines; keep the directory
/// (returned too) while the vault runs.
pub async fn spawn_app_with_policy(db: Db, extra: &str) -> (TestApp, tempfile::TempDir) {
    let pol = policies_with(extra);
    let t = spawn_app_with(
        db,
        Options {
            policy_dir: Some(pol.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await;
    (t, pol)
}

/// One field of a subject as `tok` reads it for `purpose`: the status and the field's
/// value (null if not answered).
pub async fn read_field(
    t: &TestApp,
    tok: &str,
    purpose: &str,
    id: &str,
    field: &str,
) -> (StatusCode, Value) {
    let (s, b) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}?fields={field}"),
            Some(tok),
            Some(purpose),
            None,
        )
        .await;
    (s, b["fields"][field]["value"].clone())
}

pub async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, Options::default()).await
}

pub async fn spawn_app_with(db: Db, opts: Options) -> TestApp {
    piivault::install_crypto_provider();
    crate::leaks::check_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let (database_url, pg_name) = match db {
        Db::Sqlite => (
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("piivault.db").display()
            ),
            None,
        ),
        Db::Postgres => {
            let (url, name) = create_pg_database().await;
            (url, Some(name))
        }
    };
    let mut settings = settings(dir.path(), database_url.clone());
    if let Some(p) = opts.policy_dir {
        settings.policy_dir = Some(p);
    }
    if let Some(adjust) = opts.settings {
        adjust(&mut settings);
    }
    let mut app = piivault::open(&settings).await.expect("vault opens");
    if let Some(limit) = opts.key_usage_limit {
        app.vault = app.vault.with_key_usage_limit(limit);
    }
    if let Some(clock) = opts.clock {
        app.tokens = app.tokens.clone().with_clock(clock.clone());
        app.vault = app.vault.with_clock(clock);
    }
    let mut serve = ServeOptions::new("127.0.0.1:0".parse().unwrap());
    serve.max_body_bytes = opts.max_body_bytes;
    serve.policy_reload = Duration::from_millis(100);
    if let Some(limit) = opts.bad_token_limit {
        serve.bad_token_limit = limit;
    }
    if let Some(adjust) = opts.serve {
        adjust(&mut serve);
    }
    let server = piivault::start(&app, &settings, &serve)
        .await
        .expect("server starts");
    let base = format!("https://localhost:{}", server.addr.port());
    TestApp {
        db,
        client: https_client(dir.path()),
        base,
        app,
        settings,
        database_url,
        dir,
        pg_name,
        server: Some(server),
    }
}

impl TestApp {
    /// Stores, straight in the database, an access request `dsr_late` for `subject`,
    /// received in 2020 and still open: long overdue.
    pub async fn insert_overdue_request(&self, subject: &str) {
        sqlx::query(
            "INSERT INTO dsr_requests (id, subject_id, kind, received_at, due_date, status, created_by, updated_at) \
             VALUES ('dsr_late', $1, 'access', 0, '2020-01-22', 'open', 'tok_x', 0)",
        )
        .bind(subject)
        .execute(&self.raw().await)
        .await
        .unwrap();
    }

    /// Issues a token directly on the store and returns its secret.
    pub async fn token(&self, role: &str, purposes: &[&str]) -> String {
        self.token_with_ttl(role, purposes, Duration::from_secs(3600))
            .await
            .1
    }

    pub async fn token_with_ttl(
        &self,
        role: &str,
        purposes: &[&str],
        ttl: Duration,
    ) -> (String, String) {
        let (info, secret) = self
            .app
            .tokens
            .issue(
                IssueRequest {
                    role: role.into(),
                    purposes: purposes.iter().map(|p| p.to_string()).collect(),
                    ttl,
                    description: "test".into(),
                    created_by: "test".into(),
                },
                &self.app.policy.current(),
                piivault::audit::Event::new("test", "operator", "admin", "test", "token.issue"),
            )
            .await
            .expect("token issued");
        let secret = secret.to_string();
        crate::leaks::remember(std::slice::from_ref(&secret));
        (info.id, secret)
    }

    /// A token that may do everything on personal data (dsr_handler, purpose dsr).
    pub async fn dsr(&self) -> String {
        self.token("dsr_handler", &["dsr"]).await
    }

    /// Sends a request with a bearer token and purpose; returns status and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        purpose: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        call_at(&self.client, &self.base, method, path, token, purpose, body).await
    }

    /// Like `call`, also returning the response's `X-Request-Id`.
    pub async fn call_rid(
        &self,
        method: Method,
        path: &str,
        token: &str,
        purpose: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value, String) {
        let (status, rid, bytes) = send(
            &self.client,
            &self.base,
            method,
            path,
            Some(token),
            Some(purpose),
            body,
        )
        .await;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json, rid)
    }

    /// The piivault binary with `args`, on this vault's data directory and store.
    pub fn cli_command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_piivault"));
        command
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--database-url")
            .arg(&self.database_url);
        command
    }

    /// The piivault binary with `args` started in the background (its output
    /// discarded), on this vault's data directory and store: a command to kill.
    pub fn cli_spawn(&self, args: &[&str]) -> std::process::Child {
        self.cli_command(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("piivault starts")
    }

    /// Runs the piivault binary on this vault's data directory and store; returns
    /// whether it succeeded and its standard output followed by standard error.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = self.cli_command(args).output().expect("piivault runs");
        (out.status.success(), output_text(&out))
    }

    /// Every audit event so far.
    pub async fn events(&self) -> Vec<piivault::store::AuditRow> {
        self.app
            .store
            .audit_events(0, 1_000_000)
            .await
            .expect("audit events")
    }

    pub async fn create(&self, token: &str, fields: Value) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/subjects",
                Some(token),
                Some("dsr"),
                Some(&serde_json::json!({ "fields": fields })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }

    /// A direct connection to the same store, for inspecting and tampering.
    pub async fn raw(&self) -> AnyPool {
        sqlx::any::install_default_drivers();
        AnyPool::connect(&self.database_url)
            .await
            .expect("raw pool")
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("server stops");
        }
        self.app.store.close().await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The leak checks (see leaks.rs), unless the test failed already.
        let checked = (!std::thread::panicking()).then(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::leaks::assert_logs_clean();
                let sent = crate::leaks::sent();
                crate::leaks::assert_dir_clean(self.dir.path(), &sent);
                if self.pg_name.is_some() {
                    crate::leaks::assert_dump_clean(&self.database_url, &sent);
                }
            }))
        });
        if let Some(name) = self.pg_name.take() {
            // Best effort, on a runtime of its own: test databases are also dropped
            // by name prefix in .ci/run.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(drop_pg_database(&name));
                }
            })
            .join();
        }
        if let Some(Err(leak)) = checked {
            std::panic::resume_unwind(leak);
        }
    }
}

/// Grants consent to `purpose` for subject `id` (body as the API takes it), calling with
/// `tok` under `purpose_hdr`.
pub async fn grant_consent(
    t: &TestApp,
    tok: &str,
    purpose_hdr: &str,
    id: &str,
    purpose: &str,
    body: Value,
) -> (StatusCode, Value) {
    t.call(
        Method::PUT,
        &format!("/v1/subjects/{id}/consents/{purpose}"),
        Some(tok),
        Some(purpose_hdr),
        Some(&body),
    )
    .await
}

/// Withdraws consent to `purpose` for subject `id`.
pub async fn withdraw_consent(
    t: &TestApp,
    tok: &str,
    purpose_hdr: &str,
    id: &str,
    purpose: &str,
) -> (StatusCode, Value) {
    t.call(
        Method::DELETE,
        &format!("/v1/subjects/{id}/consents/{purpose}"),
        Some(tok),
        Some(purpose_hdr),
        None,
    )
    .await
}

/// A complete, valid subject with distinctive values.
pub fn full_subject() -> Value {
    serde_json::json!({
        "name": "欧阳明月",
        "id_number": "11010519491231002X",
        "phone": "13912345678",
        "email": "ouyang.mingyue@example.com",
        "address": "上海市浦东新区世纪大道100号",
        "birth_date": "1949-12-31",
        "bank_card": "6222021234567894",
        "tags": ["vip", "churn_risk"],
        "tier": "gold",
        "is_minor": "no"
    })
}

pub fn assert_no_value(body: &Value, value: &str) {
    assert!(
        !body.to_string().contains(value),
        "response echoes a value: {body}"
    );
}

/// A valid mainland ID number for someone born on `yyyymmdd`, sequence `n`.
pub fn id_number_born(yyyymmdd: &str, n: u32) -> String {
    let body = format!("110105{yyyymmdd}{:03}", n % 1000);
    let w = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .bytes()
        .zip(w)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    format!(
        "{body}{}",
        "10X98765432".as_bytes()[(sum % 11) as usize] as char
    )
}

/// What an audit event must say, whole: who (token id and role), under which purpose,
/// what, about whom, with which outcome, for which request, and when.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub actor_token: &'a str,
    pub role: &'a str,
    pub purpose: &'a str,
    pub action: &'a str,
    pub subject: Option<&'a str>,
    pub field: Option<&'a str>,
    pub decision: &'a str,
    pub reason: &'a str,
    /// The `X-Request-Id` of the request that made it.
    pub request_id: &'a str,
    /// It was recorded within these milliseconds (before and after the request).
    pub between: (i64, i64),
}

/// Fails unless `e` is exactly the event `want` describes (its target aside).
pub fn assert_event(e: &piivault::store::AuditRow, want: Expect<'_>) {
    let got = (
        e.actor_token.as_str(),
        e.actor_role.as_str(),
        e.purpose.as_str(),
        e.action.as_str(),
        e.subject.as_deref(),
        e.field.as_deref(),
        e.decision.as_str(),
        e.reason.as_str(),
        e.request_id.as_str(),
    );
    let wanted = (
        want.actor_token,
        want.role,
        want.purpose,
        want.action,
        want.subject,
        want.field,
        want.decision,
        want.reason,
        want.request_id,
    );
    assert_eq!(got, wanted, "event {}", e.seq);
    assert!(
        (want.between.0..=want.between.1).contains(&e.ts),
        "event {} at {} outside {:?}",
        e.seq,
        e.ts,
        want.between
    );
}

/// Milliseconds since the Unix epoch, as the vault stamps events.
pub fn now_ms() -> i64 {
    piivault::store::now_ms()
}

/// Waits until `probe` says yes, checking every 20 ms up to a generous deadline (a
/// minute: a loaded CI machine is slow, never wrong); false if it never does.
pub async fn eventually<F, Fut>(mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A copy of a PostgreSQL store as it is now (`pg_dump` into a new database): its URL.
pub async fn pg_backup(live_url: &str) -> String {
    let (url, _) = create_pg_database().await;
    let dump = std::process::Command::new("pg_dump")
        .args(["--no-owner", live_url])
        .output()
        .expect("pg_dump runs");
    assert!(dump.status.success());
    let mut restore = std::process::Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", &url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql runs");
    use std::io::Write;
    restore
        .stdin
        .take()
        .unwrap()
        .write_all(&dump.stdout)
        .unwrap();
    assert!(restore.wait().unwrap().success());
    url
}

/// A copy of the SQLite store at `live_url` as it is now (`VACUUM INTO file`).
pub async fn sqlite_backup(live_url: &str, file: &Path) {
    let pool = sqlx::SqlitePool::connect(live_url).await.unwrap();
    sqlx::query(&format!("VACUUM INTO '{}'", file.display()))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// Writes an audit event row as it stands, behind the vault's back: what a forger, or
/// another process appending to the trail, would do.
pub async fn insert_event_row<'c, E>(db: E, e: &piivault::store::AuditRow)
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO audit_events (seq, ts, actor_token, actor_role, action, subject, field, target, purpose, decision, reason, request_id, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(e.seq)
    .bind(e.ts)
    .bind(e.actor_token.clone())
    .bind(e.actor_role.clone())
    .bind(e.action.clone())
    .bind(e.subject.clone())
    .bind(e.field.clone())
    .bind(e.target.clone())
    .bind(e.purpose.clone())
    .bind(e.decision.clone())
    .bind(e.reason.clone())
    .bind(e.request_id.clone())
    .bind(e.prev_hash.clone())
    .bind(e.hash.clone())
    .execute(db)
    .await
    .expect("event row inserted");
}
