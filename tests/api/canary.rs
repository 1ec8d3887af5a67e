//! Canary test: distinctive PI written through the API of the real binary never
//! appears in the SQLite files (scanned while the server runs, WAL included, and after),
//! the audit index, a PostgreSQL dump, the server's log output, an error body, `/metrics`
//! or the OpenAPI document.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;
use crate::process::{base_args, bin, child_store, issue_token, start, stop};

const CANARIES: &[&str] = &[
    "金丝雀鸟名",
    "320106198808087773",
    "13987654321",
    "canary.bird.7f3a@example.org",
    "金丝雀路42号测试小区",
    "6217009876543210122",
    "CANARY-RECORD-SECRET-8e1f",
    "canary_tag_51c",
    "13987650000",
];

/// No canary in `bytes`.
fn assert_clean(name: &str, bytes: &[u8]) {
    for canary in CANARIES {
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "canary {canary:?} found in {name}"
        );
    }
}

/// The SQLite files in a data directory: the database, its WAL and shared memory, and
/// the audit index with its own.
fn live_sqlite_files(data: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.starts_with("piivault.db").then_some(name)
        })
        .collect();
    names.sort();
    assert!(
        names.iter().any(|n| n == "piivault.db-audit-index"),
        "{names:?}"
    );
    names
}

async fn call(
    client: &reqwest::Client,
    port: u16,
    tok: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = client
        .request(method, format!("https://localhost:{port}{path}"))
        .bearer_auth(tok)
        .header("X-Purpose", "dsr");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

both_stores!(
    canary_values_never_reach_disk_dump_or_logs,
    |db| async move {
        let dir = tempfile::tempdir().unwrap();
        let (url, pg_name) = child_store(db).await;
        let first = start(dir.path(), &url, 1);
        let stdout = std::fs::read_to_string(&first.stdout).unwrap();
        assert!(stdout.contains("Bootstrap admin token"), "{stdout}");
        let data = dir.path().join("data");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(data.join("master.key")), 0o600);
        assert_eq!(mode(data.join("tls/server.key")), 0o600);
        assert_eq!(mode(data.clone()), 0o700);
        if db == Db::Sqlite {
            assert_eq!(mode(data.join("piivault.db")), 0o600);
        }

        // The CLI issues a token: the secret alone on standard output.
        let tok = issue_token(dir.path(), &url, "dsr_handler", "dsr", "");

        let client = https_client(&data);
        let port = first.port;
        use reqwest::Method;
        let (status, body) = call(&client, port, &tok, Method::POST, "/v1/subjects", Some(json!({"fields": {
        "name": CANARIES[0], "id_number": CANARIES[1], "phone": CANARIES[2], "email": CANARIES[3],
        "address": CANARIES[4], "bank_card": CANARIES[5], "tags": [CANARIES[7]], "birth_date": "1988-08-08"
    }}))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        let (status, _) = call(
            &client,
            port,
            &tok,
            Method::POST,
            &format!("/v1/subjects/{id}/records/service_tickets"),
            Some(json!({"text": CANARIES[6]})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = call(
            &client,
            port,
            &tok,
            Method::POST,
            "/v1/subjects/lookup",
            Some(json!({"field": "id_number", "value": CANARIES[1]})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(
            &client,
            port,
            &tok,
            Method::PATCH,
            &format!("/v1/subjects/{id}"),
            Some(json!({"fields": {"phone": CANARIES[8]}})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        // Bad input carrying canaries is refused without logging them or echoing them.
        let (status, refusal) = call(
            &client,
            port,
            &tok,
            Method::POST,
            "/v1/subjects",
            Some(
                json!({"fields": {"phone": format!("{}9", CANARIES[2]), "nickname": CANARIES[0]}}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_clean("a 422 body", refusal.to_string().as_bytes());
        let (status, body) = call(
            &client,
            port,
            &tok,
            Method::GET,
            &format!("/v1/subjects/{id}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["fields"]["id_number"]["value"], CANARIES[1]);

        // --log-format json: one object a line, no colour codes, and the lines logged
        // while serving a request carry the request id its audit events carry.
        let resp = client
            .get(format!(
                "https://localhost:{port}/v1/subjects/{id}?fields=phone"
            ))
            .bearer_auth(&tok)
            .header("X-Purpose", "dsr")
            .send()
            .await
            .unwrap();
        let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(resp.status(), StatusCode::OK);
        let stderr_log = dir.path().join("stderr-1.log");
        let carries_id = |line: &Value| {
            line["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["request_id"] == request_id.as_str()))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&stderr_log).unwrap();
            assert!(!text.contains('\u{1b}'), "colour codes in a log file");
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
                .collect();
            if lines
                .iter()
                .any(|l| carries_id(l) && l["target"] == "piivault::access")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no log line carries {request_id}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // While the server runs: its database files (the WAL above all), the audit index,
        // /metrics and the OpenAPI document.
        if db == Db::Sqlite {
            let names = live_sqlite_files(&data);
            assert!(names.iter().any(|n| n == "piivault.db-wal"), "{names:?}");
            for name in names {
                assert_clean(&name, &std::fs::read(data.join(&name)).unwrap());
            }
        }
        for path in ["/metrics", "/openapi.json"] {
            let text = client
                .get(format!("https://localhost:{port}{path}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(text.len() > 1000, "{path} is nearly empty");
            assert_clean(path, text.as_bytes());
        }
        stop(first);

        // Second start: same key, same certificate, no new bootstrap token, data readable.
        let key_before = std::fs::read(data.join("master.key")).unwrap();
        let ca_before = std::fs::read(data.join("tls/ca.pem")).unwrap();
        let second = start(dir.path(), &url, 2);
        let stdout = std::fs::read_to_string(&second.stdout).unwrap();
        assert!(
            !stdout.contains("token"),
            "second start printed a token: {stdout}"
        );
        assert_eq!(std::fs::read(data.join("master.key")).unwrap(), key_before);
        assert_eq!(std::fs::read(data.join("tls/ca.pem")).unwrap(), ca_before);
        let (status, body) = call(
            &client,
            second.port,
            &tok,
            Method::GET,
            &format!("/v1/subjects/{id}?fields=phone,name"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["fields"]["phone"]["value"], CANARIES[8]);
        assert_eq!(body["fields"]["name"]["value"], CANARIES[0]);
        // The CLI lists and revokes; the running server honours the revocation within
        // the change feed's bound (it reads the feed every 250 ms).
        let out = Command::new(bin())
            .args(["token", "list", "--json"])
            .args(base_args(dir.path(), &url))
            .output()
            .unwrap();
        assert!(out.status.success());
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed = listed.as_array().unwrap();
        assert_eq!(listed.len(), 2, "bootstrap and dsr tokens");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(&tok),
            "list shows no secret"
        );
        let dsr_id = listed.iter().find(|t| t["role"] == "dsr_handler").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let revoke = |id: &str| {
            Command::new(bin())
                .args(["token", "revoke", id])
                .args(base_args(dir.path(), &url))
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(revoke(&dsr_id));
        assert!(!revoke(&dsr_id), "revoking twice fails");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let (status, body) = loop {
            let (status, body) = call(
                &client,
                second.port,
                &tok,
                Method::GET,
                &format!("/v1/subjects/{id}"),
                None,
            )
            .await;
            if status != StatusCode::OK || std::time::Instant::now() > deadline {
                break (status, body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "token_revoked");
        stop(second);

        // Where the canaries must not be.
        let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                haystacks.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
        match db {
            Db::Sqlite => {
                for name in live_sqlite_files(&data) {
                    haystacks.push((name.clone(), std::fs::read(data.join(&name)).unwrap()));
                }
                assert!(haystacks
                    .iter()
                    .any(|(n, b)| n == "piivault.db" && b.len() > 4096));
            }
            Db::Postgres => {
                let dump = Command::new("pg_dump")
                    .arg("--data-only")
                    .arg(url.as_deref().unwrap())
                    .output()
                    .expect("pg_dump runs");
                assert!(
                    dump.status.success(),
                    "{}",
                    String::from_utf8_lossy(&dump.stderr)
                );
                assert!(String::from_utf8_lossy(&dump.stdout).contains("subject_fields"));
                haystacks.push(("pg_dump".into(), dump.stdout));
            }
        }
        let logs: usize = haystacks
            .iter()
            .filter(|(n, _)| n.ends_with(".log"))
            .map(|(_, b)| b.len())
            .sum();
        assert!(
            logs > 1000,
            "the server logged almost nothing; the scan would prove little"
        );
        for (name, bytes) in &haystacks {
            assert_clean(name, bytes);
        }
        if let Some(name) = pg_name {
            drop_pg_database(&name).await;
        }
    }
);
