//! The disk fills under a vault on SQLite (a tmpfs of a few MB): writes and audited reads
//! fail closed with 503 and a clear code, no value goes out without its audit event, and
//! once space is freed the same process serves again, with every acknowledged write
//! there and a trail that verifies.
//!
//! Mounting a tmpfs needs root. `.ci/run` runs as root and sets
//! `PIIVAULT_REQUIRE_ROOT_TESTS=1`, so there the test cannot be skipped; elsewhere, as
//! another user, it says it was skipped.

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::process::{self, start};

/// A tmpfs mounted for the test's life.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(at).unwrap();
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(at.to_path_buf()))
}

fn free_bytes(at: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(at)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_closed_and_the_vault_recovers_when_space_is_freed() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("small");
    let Some(_mount) = mount_tmpfs(&root, "12m") else {
        assert!(
            std::env::var("PIIVAULT_REQUIRE_ROOT_TESTS").is_err(),
            "cannot mount a tmpfs (needs root), and PIIVAULT_REQUIRE_ROOT_TESTS is set"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let server = start(&root, &None, 0);
    let base = format!("https://localhost:{}", server.port);
    let client = https_client(&root.join("data"));
    let dsr = process::issue_token(&root, &None, "dsr_handler", "dsr", "disk full");
    // Leave about 1.5 MB: a ballast file takes the rest.
    let ballast = root.join("ballast");
    let keep = 1_500_000u64;
    let take = free_bytes(&root).saturating_sub(keep);
    std::fs::write(&ballast, vec![0u8; take as usize]).unwrap();

    let create = |i: usize| {
        let (client, base, dsr) = (client.clone(), base.clone(), dsr.clone());
        async move {
            let resp = client
                .post(format!("{base}/v1/subjects"))
                .bearer_auth(&dsr)
                .header("X-Purpose", "dsr")
                .json(&json!({"fields": {"name": format!("满盘{i}"), "phone": "13755556666", "address": "北京市朝阳区建国路".repeat(20)}}))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // A read: its status, body and request id.
    let read = |id: String| {
        let (client, base, dsr) = (client.clone(), base.clone(), dsr.clone());
        async move {
            let resp = client
                .get(format!("{base}/v1/subjects/{id}?fields=name"))
                .bearer_auth(&dsr)
                .header("X-Purpose", "dsr")
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let rid = resp
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (
                status,
                resp.json::<Value>().await.unwrap_or(Value::Null),
                rid,
            )
        }
    };

    // Create until the disk is full: several refusals in a row.
    let mut acked = Vec::new();
    let mut refusals = 0;
    for i in 0..100_000 {
        let (s, b) = create(i).await;
        if s == StatusCode::CREATED {
            acked.push((b["id"].as_str().unwrap().to_owned(), format!("满盘{i}")));
            refusals = 0;
            continue;
        }
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        let code = b["error"]["code"].as_str().unwrap_or_default();
        assert!(
            code == "store_unavailable" || code == "audit_unavailable",
            "{b}"
        );
        refusals += 1;
        if refusals == 5 {
            break;
        }
    }
    assert_eq!(refusals, 5, "the disk never filled");
    assert!(!acked.is_empty());
    // While it is full, an audited read either cannot write its event, and hands out
    // nothing, or did write it (a small event may still fit): checked below by request
    // id, once the trail can be read again.
    let mut served = Vec::new();
    let mut refused_reads = 0;
    for (id, _) in acked.iter().take(20) {
        let (s, b, rid) = read(id.clone()).await;
        match s {
            StatusCode::OK => served.push(rid),
            StatusCode::SERVICE_UNAVAILABLE => {
                refused_reads += 1;
                assert!(b.get("fields").is_none(), "{b}");
                assert!(!b.to_string().contains("满盘"), "{b}");
            }
            other => panic!("{other}: {b}"),
        }
    }

    // Space comes back: the same process serves again.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (s, _, _) = read(acked[0].0.clone()).await;
        if s == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no recovery: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (s, b) = create(1_000_000).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    for (id, name) in &acked {
        let (s, b, _) = read(id.clone()).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["fields"]["name"]["value"], json!(name));
    }
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    process::stop(server);
    let out = Command::new(process::bin())
        .args(["audit", "verify"])
        .args(process::base_args(&root, &None))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    // Every read served while the disk was full has its event in the trail.
    use sqlx::Connection as _;
    let db = root.join("data/piivault.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    for rid in &served {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_events WHERE request_id = $1 AND action = 'read'",
        )
        .bind(rid)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(n, 1, "a read served while full has no event: {rid}");
    }
    eprintln!(
        "disk full: {} creates acknowledged, {} reads refused and {} served (each audited) while full",
        acked.len(),
        refused_reads,
        served.len()
    );
}
