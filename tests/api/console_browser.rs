//! The web console in headless Chromium (Debian's `chromium`), driven by Playwright's
//! `playwright-core` from `tests/console/e2e.mjs`: sign-in, a report with its chart and
//! CSV, the chain, an incident report, a policy refusal, the request queue, an export
//! download and an erasure; every page checked for personal values, token secrets,
//! browser storage and CSP violations. Screenshots of each view are kept under
//! `target/console-screenshots/<store>/`.
//!
//! Needs node, `npm ci --prefix tests/console` and chromium; without them the test says
//! SKIPPED, unless `PIIVAULT_REQUIRE_BROWSER=1` (as `.ci/run` sets, after installing them).

use std::path::{Path, PathBuf};

use crate::both_stores;
use crate::helpers::*;

/// node and the browser, if this machine has them.
fn browser_tools() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (!node_ok).then_some("node"),
        (!root
            .join("tests/console/node_modules/playwright-core")
            .exists())
        .then_some("playwright-core (npm ci --prefix tests/console)"),
        (!Path::new(&chromium).exists()).then_some("chromium (apt-get install chromium)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Some(root.join("tests/console/e2e.mjs"));
    }
    if std::env::var("PIIVAULT_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!(
            "the browser test is required but {} missing",
            missing.join(", ")
        );
    }
    eprintln!(
        "SKIPPED: the console browser test needs {}",
        missing.join(", ")
    );
    None
}

both_stores!(the_console_in_headless_chromium, |db| async move {
    let Some(script) = browser_tools() else {
        return;
    };
    let t = spawn_app(db).await;
    let (id, rid, dsr_id, dsr) = crate::console::scene(&t).await;
    let (auditor_id, auditor) = t
        .token_with_ttl("auditor", &["audit"], std::time::Duration::from_secs(3600))
        .await;
    let store = match db {
        Db::Sqlite => "sqlite",
        Db::Postgres => "postgres",
    };
    let shots = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/console-screenshots")
        .join(store);
    let _ = std::fs::remove_dir_all(&shots);
    let canaries = serde_json::to_string(&crate::console::canaries()).unwrap();
    let mut node = std::process::Command::new("node");
    node.arg(&script)
        .env("PIIVAULT_BASE", &t.base)
        .env("AUDITOR", &auditor)
        .env("DSR", &dsr)
        .env("DSR_TOKEN_ID", &dsr_id)
        .env("SUBJECT", &id)
        .env("REQUEST", &rid)
        .env("CANARIES", canaries)
        .env("SCREENSHOTS", &shots);
    // The server runs on this test's runtime: wait for the browser on a thread of its own.
    let out = tokio::task::spawn_blocking(move || node.output())
        .await
        .unwrap()
        .expect("node runs");
    let text = output_text(&out);
    assert!(out.status.success(), "the browser checks failed:\n{text}");
    assert!(text.contains("all console checks passed"), "{text}");
    let taken = std::fs::read_dir(&shots).unwrap().count();
    assert!(taken >= 12, "{taken} screenshots kept");

    // What the browser did is on the trail, under each person's own token.
    let events = t.events().await;
    let did = |token: &str, action: &str| {
        events
            .iter()
            .any(|e| e.actor_token == token && e.action == action)
    };
    for (token, action) in [
        (auditor_id.as_str(), "console.sign_in"),
        (auditor_id.as_str(), "audit.report"),
        (auditor_id.as_str(), "audit.verify"),
        (dsr_id.as_str(), "console.sign_in"),
        (dsr_id.as_str(), "export"),
        (dsr_id.as_str(), "erase"),
    ] {
        assert!(
            did(token, action),
            "{action} by the browser's token is not on the trail"
        );
    }
    assert!(events.iter().any(|e| e.actor_token == auditor_id
        && e.decision == "deny"
        && e.reason == "purpose_not_allowed"));
});
