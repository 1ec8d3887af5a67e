//! Faults and recovery: PostgreSQL going away under load and coming back. The real
//! server reaches PostgreSQL through a TCP proxy this test controls; "down" closes every
//! connection and refuses new ones, as a stopped or unreachable database server does,
//! without touching the PostgreSQL other tests share.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;
use crate::process::{issue_token, start, stop};

/// A TCP proxy to PostgreSQL that can be switched off and on.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (flag, held) = (up.clone(), links.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().unwrap().push(link.abort_handle());
            }
        });
        Proxy { port, up, links }
    }

    /// Every open connection is cut and new ones are closed at once.
    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    tok: &str,
    method: Method,
    body: Option<Value>,
) -> StatusCode {
    let mut req = client
        .request(method, url)
        .bearer_auth(tok)
        .header("X-Purpose", "dsr")
        .timeout(Duration::from_secs(60));
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send()
        .await
        .expect("the vault answers while its store is away")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_under_load_gives_503_and_the_vault_recovers_without_a_restart() {
    if postgres_url().is_none() {
        return;
    }
    let (direct, name) = create_pg_database().await;
    let target = direct
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let proxy = Proxy::start(target.clone()).await;
    let url = Some(direct.replacen(&target, &format!("127.0.0.1:{}", proxy.port), 1));
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &url, 0);
    let dsr = issue_token(dir.path(), &url, "dsr_handler", "dsr", "fault load");
    let auditor = issue_token(dir.path(), &url, "auditor", "audit", "fault audit");
    let client = https_client(&dir.path().join("data"));
    let base = format!("https://localhost:{}", server.port);
    let created = client
        .post(format!("{base}/v1/subjects"))
        .bearer_auth(&dsr)
        .header("X-Purpose", "dsr")
        .json(&json!({"fields": {"name": "断线", "phone": "13700001111"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let read_url = format!("{base}/v1/subjects/{id}?fields=phone");

    // Load: reads and creates from four clients, every answer counted by status.
    let stop_load = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<(bool, StatusCode)>>> = Arc::default();
    let down_now = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for w in 0..4 {
        let (client, dsr, base, read_url) =
            (client.clone(), dsr.clone(), base.clone(), read_url.clone());
        let (stop_load, answers, down_now, sent) = (
            stop_load.clone(),
            answers.clone(),
            down_now.clone(),
            sent.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop_load.load(Ordering::SeqCst) {
                n += 1;
                // Sent while the store was known to be away (set before `down`, cleared after `up`).
                let during = down_now.load(Ordering::SeqCst);
                let status = if n % 3 == 0 {
                    let body = json!({"fields": {"name": format!("负载{w}-{n}")}});
                    send(
                        &client,
                        &format!("{base}/v1/subjects"),
                        &dsr,
                        Method::POST,
                        Some(body),
                    )
                    .await
                } else {
                    send(&client, &read_url, &dsr, Method::GET, None).await
                };
                // Sent and answered while the store was away.
                let during = during && down_now.load(Ordering::SeqCst);
                sent.fetch_add(1, Ordering::SeqCst);
                answers.lock().unwrap().push((during, status));
            }
        }));
    }
    let wait_sent = |k: usize| {
        let sent = sent.clone();
        async move {
            let target = sent.load(Ordering::SeqCst) + k;
            let deadline = Instant::now() + Duration::from_secs(120);
            while sent.load(Ordering::SeqCst) < target {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_sent(40).await;

    // The store goes away.
    proxy.down();
    // Requests already past the store may still finish; from the first refusal on,
    // nothing is served.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = send(&client, &read_url, &dsr, Method::GET, None).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            Instant::now() < deadline,
            "the vault kept serving without its store"
        );
    }
    down_now.store(true, Ordering::SeqCst);
    // Forty answers given wholly while the store was away.
    let deadline = Instant::now() + Duration::from_secs(120);
    while answers.lock().unwrap().iter().filter(|(d, _)| *d).count() < 40 {
        assert!(
            Instant::now() < deadline,
            "the load stalled while the store was away"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    // It comes back: the same process serves again.
    down_now.store(false, Ordering::SeqCst);
    proxy.up();
    let deadline = Instant::now() + Duration::from_secs(60);
    while send(&client, &read_url, &dsr, Method::GET, None).await != StatusCode::OK {
        assert!(Instant::now() < deadline, "the vault did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_sent(40).await;
    stop_load.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    let during: Vec<StatusCode> = answers
        .iter()
        .filter(|(d, _)| *d)
        .map(|(_, s)| *s)
        .collect();
    assert!(during.len() >= 40);
    assert!(
        during.iter().all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "answers while the store was away: {during:?}"
    );
    assert!(
        answers.iter().all(|(_, s)| [
            StatusCode::OK,
            StatusCode::CREATED,
            StatusCode::SERVICE_UNAVAILABLE
        ]
        .contains(s)),
        "unexpected answers: {answers:?}"
    );
    let after = answers
        .iter()
        .rev()
        .take(20)
        .filter(|(_, s)| s.is_success())
        .count();
    assert_eq!(after, 20, "the load is served again");
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let verify = client
        .get(format!("{base}/v1/audit/verify"))
        .bearer_auth(&auditor)
        .header("X-Purpose", "audit")
        .send()
        .await
        .unwrap();
    let report: Value = verify.json().await.unwrap();
    assert_eq!(report["ok"], true, "{report}");
    eprintln!(
        "postgres away and back: {} answers, {} of them 503 while it was away",
        answers.len(),
        during.len()
    );
    stop(server);
    drop_pg_database(&name).await;
}

/// Starts `serve` on a data directory expected to be refused; returns what it printed.
fn refused_start(dir: &std::path::Path) -> String {
    let mut child = std::process::Command::new(crate::process::bin())
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(crate::process::base_args(dir, &None))
        .env_remove("PIIVAULT_MASTER_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut text = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            assert!(!status.success(), "{text}");
            return text;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started although it should have been refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Master key and TLS files missing, foreign or damaged at start: a clear refusal that
// names the file, nothing made anew in their place, and a normal start once they are
// restored. (A missing audit signing key is made anew: each node keeps its own.)
#[test]
fn missing_foreign_or_damaged_key_and_tls_files_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    stop(start(dir.path(), &None, 0));
    stop(start(other.path(), &None, 0));
    let data = dir.path().join("data");
    let foreign = other.path().join("data");
    let cases: Vec<(&str, Option<std::path::PathBuf>, &str)> = vec![
        ("master.key", None, "master key file"),
        (
            "master.key",
            Some(foreign.join("master.key")),
            "does not match this database",
        ),
        ("tls/server.key", None, "server.key missing"),
        (
            "tls/server.key",
            Some(foreign.join("master.key")),
            "TLS files",
        ),
    ];
    let ca_before = std::fs::read(data.join("tls/ca.pem")).unwrap();
    for (file, replacement, says) in cases {
        let path = data.join(file);
        let saved = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        if let Some(from) = &replacement {
            std::fs::copy(from, &path).unwrap();
        }
        let text = refused_start(dir.path());
        assert!(text.contains(says), "{file}: {text}");
        assert_eq!(
            path.exists(),
            replacement.is_some(),
            "{file}: a new one was made"
        );
        assert_eq!(std::fs::read(data.join("tls/ca.pem")).unwrap(), ca_before);
        std::fs::write(&path, saved).unwrap();
    }
    stop(start(dir.path(), &None, 1));
}

/// The master key from `PIIVAULT_MASTER_KEY` instead of a file, and `--plain-http`,
/// through the binary: the key in the environment opens the data the file's key sealed
/// (no key file is made), plain HTTP serves on loopback only, and a wrong key in the
/// environment is refused at start.
#[test]
fn the_master_key_from_the_environment_and_plain_http_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), &None, 0);
    let data = dir.path().join("data");
    let dsr = crate::process::issue_token(dir.path(), &None, "dsr_handler", "dsr", "env key");
    let client = https_client(&data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(async {
        let resp = client
            .post(format!("https://localhost:{}/v1/subjects", first.port))
            .bearer_auth(&dsr)
            .header("X-Purpose", "dsr")
            .json(&serde_json::json!({"fields": {"name": "环境钥匙"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
        resp.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    stop(first);
    let key = std::fs::read_to_string(data.join("master.key")).unwrap();
    std::fs::remove_file(data.join("master.key")).unwrap();

    let serve = |extra: &[&str], key: &str| {
        let log = dir.path().join(format!("plain-{}.log", extra.len()));
        let child = std::process::Command::new(crate::process::bin())
            .arg("serve")
            .args(extra)
            .args(crate::process::base_args(dir.path(), &None))
            .env("PIIVAULT_MASTER_KEY", key)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (child, log)
    };
    // Plain HTTP on a non-loopback address: refused.
    let (mut child, log) = serve(&["--plain-http", "--listen", "0.0.0.0:0"], &key);
    assert!(!child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("loopback"), "{text}");
    // A wrong key in the environment: refused.
    let wrong = "v1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let (mut child, log) = serve(&["--listen", "127.0.0.1:0", "--log-format", "json"], wrong);
    assert!(!child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("does not match"), "{text}");
    assert!(!data.join("master.key").exists(), "a key file was made");
    // The right key in the environment, plain HTTP on loopback: serves the data.
    let (mut child, log) = serve(&["--plain-http", "--listen", "127.0.0.1:0"], &key);
    let deadline = Instant::now() + Duration::from_secs(60);
    let port: u16 = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(rest) = text.split("listening on http://127.0.0.1:").nth(1) {
            break rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let body = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/v1/subjects/{id}"))
            .bearer_auth(&dsr)
            .header("X-Purpose", "dsr")
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    assert_eq!(body["fields"]["name"]["value"], "环境钥匙", "{body}");
    assert!(!data.join("master.key").exists(), "a key file was made");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

/// Another process holding SQLite's write lock (an operator's command beside the
/// server): the server's writes (audit commits included) wait for it, in short steps of
/// their own rather than SQLite's sleeping busy handler, and go through once it lets go,
/// chained after whatever that process appended to the trail meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_write_lock_held_by_another_process_delays_writes_and_fails_none() {
    let t = spawn_app(Db::Sqlite).await;
    let dsr = t.dsr().await;
    let id = t.create(&dsr, json!({"phone": "13900000511"})).await;
    let url = t.database_url.clone();
    // Another connection, as another process would have, takes the write lock.
    sqlx::any::install_default_drivers();
    let mut other = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let create = {
        let (client, base, dsr) = (t.client.clone(), t.base.clone(), dsr.clone());
        tokio::spawn(async move {
            call_at(
                &client,
                &base,
                Method::POST,
                "/v1/subjects",
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"fields": {"phone": "13900000512"}})),
            )
            .await
        })
    };
    // The create is waiting for the lock, not failed.
    assert!(
        eventually(|| async { t.app.audit.in_flight() > 0 }).await,
        "the create never reached the audit writer"
    );
    assert!(!create.is_finished());
    // The other process appends to the trail too, while it holds the lock: the server's
    // writer must chain after that event, not after the head it saw before.
    let foreign = append_as_another_process(&mut other).await;
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    let (s, b) = create.await.unwrap();
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, v) = read_field(&t, &dsr, "dsr", &id, "phone").await;
    assert_eq!((s, v), (StatusCode::OK, json!("13900000511")));
    let created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE seq > ? AND action = 'create'")
            .bind(foreign)
            .fetch_one(&mut other)
            .await
            .unwrap();
    assert_eq!(created, 1, "the create's event follows the other process's");
    let report = t.app.verify_audit().await.unwrap();
    assert!(report.ok, "{report:?}");
}

/// Appends one event to the trail, chained after its head, as another process (an
/// operator's command) would, inside whatever transaction `conn` has open. Returns its
/// sequence number.
async fn append_as_another_process(conn: &mut sqlx::AnyConnection) -> i64 {
    let (head, prev): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    let mut row = piivault::store::AuditRow {
        seq: head + 1,
        ts: piivault::store::now_ms(),
        actor_token: "operator".into(),
        actor_role: "admin".into(),
        action: "token_issue".into(),
        purpose: "admin".into(),
        decision: "allow".into(),
        reason: "ok".into(),
        request_id: "cli".into(),
        prev_hash: prev,
        ..Default::default()
    };
    row.hash = piivault::audit::chain_hash(row.borrowed()).to_vec();
    insert_event_row(&mut *conn, &row).await;
    row.seq
}

/// The server's audit writer chains a batch of events after the head it committed last,
/// without reading it again. Another process appending between two batches (an
/// operator's command beside the server) is found, not overwritten or forked: the
/// server's next events follow that process's, and every read is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_trail_appended_by_another_process_between_batches_stays_one_chain() {
    let t = spawn_app(Db::Sqlite).await;
    let dsr = t.dsr().await;
    let id = t.create(&dsr, json!({"phone": "13900000521"})).await;
    sqlx::any::install_default_drivers();
    let mut other = <sqlx::AnyConnection as sqlx::Connection>::connect(&t.database_url)
        .await
        .unwrap();
    for round in 0..3 {
        // A read: a batch of events alone, chained after the head the writer knows.
        let (s, v) = read_field(&t, &dsr, "dsr", &id, "phone").await;
        assert_eq!(
            (s, v),
            (StatusCode::OK, json!("13900000521")),
            "round {round}"
        );
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let foreign = append_as_another_process(&mut other).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        let (s, v) = read_field(&t, &dsr, "dsr", &id, "phone").await;
        assert_eq!(
            (s, v),
            (StatusCode::OK, json!("13900000521")),
            "round {round}"
        );
        let reads_after: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_events WHERE seq > ? AND action = 'read' AND subject = ?",
        )
        .bind(foreign)
        .bind(&id)
        .fetch_one(&mut other)
        .await
        .unwrap();
        assert_eq!(
            reads_after, 1,
            "round {round}: the read follows the other process's event"
        );
    }
    let report = t.app.verify_audit().await.unwrap();
    assert!(report.ok, "{report:?}");
}
