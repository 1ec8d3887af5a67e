//! Token API, policy reload and the bad-token limiter.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    admin_issues_lists_and_revokes_tokens_over_http,
    |db| async move {
        let t = spawn_app(db).await;
        let admin = t.token("admin", &["admin"]).await;
        let id = t.create(&t.dsr().await, full_subject()).await;
        let body = json!({"role": "billing", "purposes": ["billing"], "ttl_seconds": 600, "description": "billing service"});
        let (s, b) = t
            .call(
                Method::POST,
                "/v1/tokens",
                Some(&admin),
                Some("admin"),
                Some(&body),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let secret = b["token"].as_str().unwrap().to_owned();
        let tok_id = b["id"].as_str().unwrap().to_owned();
        assert_eq!(b["role"], "billing");
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}?fields=bank_card"),
                Some(&secret),
                Some("billing"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["fields"]["bank_card"]["value"], "6222021234567894");

        let (s, b) = t
            .call(Method::GET, "/v1/tokens", Some(&admin), Some("admin"), None)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert!(b["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == json!(tok_id)));
        assert!(
            !b.to_string().contains(&secret),
            "the list never holds secrets"
        );

        // Refused requests say why.
        for (bad, why) in [
            (
                json!({"role": "root", "purposes": ["admin"], "ttl_seconds": 60}),
                "unknown role",
            ),
            (
                json!({"role": "billing", "purposes": ["marketing"], "ttl_seconds": 60}),
                "may not claim",
            ),
            (
                json!({"role": "billing", "purposes": ["billing"], "ttl_seconds": 400 * 86400}),
                "lifetime",
            ),
            (
                json!({"role": "billing", "purposes": [], "ttl_seconds": 60}),
                "purpose",
            ),
        ] {
            let (s, b) = t
                .call(
                    Method::POST,
                    "/v1/tokens",
                    Some(&admin),
                    Some("admin"),
                    Some(&bad),
                )
                .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
            assert!(b["error"]["message"].as_str().unwrap().contains(why), "{b}");
        }
        // Only admin may manage tokens.
        let dsr = t.dsr().await;
        let (s, b) = t
            .call(
                Method::POST,
                "/v1/tokens",
                Some(&dsr),
                Some("dsr"),
                Some(&body),
            )
            .await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("policy_denied"))
        );

        let (s, _) = t
            .call(
                Method::DELETE,
                &format!("/v1/tokens/{tok_id}"),
                Some(&admin),
                Some("admin"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}?fields=bank_card"),
                Some(&secret),
                Some("billing"),
                None,
            )
            .await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::UNAUTHORIZED, json!("token_revoked"))
        );
        let (s, _) = t
            .call(
                Method::DELETE,
                &format!("/v1/tokens/{tok_id}"),
                Some(&admin),
                Some("admin"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
);

/// A vault reading its policy from a copy the test may edit: the copy, the vault, a
/// billing token, the path of a subject's phone (which billing may not read as shipped)
/// and the subject's id.
async fn editable_policy(
    db: Db,
    serve: Option<fn(&mut piivault::ServeOptions)>,
) -> (tempfile::TempDir, TestApp, String, String, String) {
    let pol = tempfile::tempdir().unwrap();
    copy_policies(pol.path());
    let t = spawn_app_with(
        db,
        Options {
            policy_dir: Some(pol.path().to_path_buf()),
            serve,
            ..Default::default()
        },
    )
    .await;
    let id = t.create(&t.dsr().await, full_subject()).await;
    let billing = t.token("billing", &["billing"]).await;
    let path = format!("/v1/subjects/{id}?fields=phone");
    (pol, t, billing, path, id)
}

/// The policy as shipped, plus billing reading phones masked.
fn with_masked_phone(original: &str) -> String {
    format!("{original}\np, billing, phone, read_masked, billing\n")
}

/// Waits for the newest `policy.reload` event to have `decision` (`allow`: applied;
/// `error`: refused), returning it; the refusal names the digest still in force.
async fn wait_for_reload(t: &TestApp, decision: &str) -> piivault::store::AuditRow {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let newest = t
            .events()
            .await
            .into_iter()
            .rev()
            .find(|e| e.action == "policy.reload");
        if let Some(e) = newest.filter(|e| e.decision == decision) {
            return e;
        }
        assert!(Instant::now() < deadline, "no policy.reload {decision}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for(t: &TestApp, path: &str, tok: &str, purpose: &str, want: StatusCode) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, b) = t
            .call(Method::GET, path, Some(tok), Some(purpose), None)
            .await;
        if s == want {
            return b;
        }
        assert!(Instant::now() < deadline, "still {s} after 10 s: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both_stores!(
    policy_changes_apply_without_restart_and_broken_files_are_refused,
    |db| async move {
        let (pol, t, billing, path, id) = editable_policy(db, None).await;
        let (s, _) = t
            .call(Method::GET, &path, Some(&billing), Some("billing"), None)
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        let csv = pol.path().join("policy.csv");
        let original = std::fs::read_to_string(&csv).unwrap();
        std::fs::write(&csv, with_masked_phone(&original)).unwrap();
        let b = wait_for(&t, &path, &billing, "billing", StatusCode::OK).await;
        assert_eq!(b["fields"]["phone"]["value"], "139****5678");

        // A broken file is refused; the last good policy stays in force.
        std::fs::write(
            &csv,
            format!(
                "{original}\np, billing, phone, read, billing\np, billing, phonee, read, billing\n"
            ),
        )
        .unwrap();
        wait_for_reload(&t, "error").await;
        let (s, b) = t
            .call(Method::GET, &path, Some(&billing), Some("billing"), None)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            b["fields"]["phone"]["masked"], true,
            "the broken policy must not apply"
        );
        let reload = t.app.policy.reload().await;
        assert!(
            matches!(
                reload,
                piivault::authz::Reload::Refused(piivault::authz::PolicyError::Line { .. })
            ),
            "{reload:?}"
        );

        // Back to the shipped policy: the grant is gone again.
        std::fs::write(&csv, &original).unwrap();
        wait_for(&t, &path, &billing, "billing", StatusCode::FORBIDDEN).await;
        // A deployment can add a role by editing policies/ alone.
        std::fs::write(
            &csv,
            format!(
                "{original}\ng, billing_lead, billing\np, billing_lead, phone, read, billing\n"
            ),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.app.policy.current().is_role("billing_lead") {
            assert!(Instant::now() < deadline, "new role not loaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lead = t.token("billing_lead", &["billing"]).await;
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}?fields=phone,bank_card"),
                Some(&lead),
                Some("billing"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["fields"]["phone"]["value"], "13912345678");
        assert_eq!(b["fields"]["bank_card"]["value"], "6222021234567894");
    }
);

both_stores!(
    bad_tokens_over_budget_are_refused_per_address,
    |db| async move {
        let (t, good, path, bad) = limited(db, 3, Duration::ZERO).await;
        for _ in 0..3 {
            let (s, _) = t
                .call(Method::GET, &path, Some(&bad), Some("dsr"), None)
                .await;
            assert_eq!(s, StatusCode::UNAUTHORIZED);
        }
        let resp = bad_request(&t, &path, &bad).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(resp.headers().get("retry-after").is_some());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "too_many_failures");
        // A good token from the same address is not refused.
        let (s, _) = t
            .call(Method::GET, &path, Some(&good), Some("dsr"), None)
            .await;
        assert_eq!(s, StatusCode::OK);
        // Another client address has its own budget.
        let resp = from_address(&t, [127, 0, 0, 2])
            .get(format!("{}{}", t.base, path))
            .bearer_auth(&bad)
            .header("X-Purpose", "dsr")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
);

/// A vault whose limiter allows `max_failures` bad tokens an hour per address, then
/// delays by `penalty`; a good token, a subject's path, and a bad token.
async fn limited(
    db: Db,
    max_failures: u32,
    penalty: Duration,
) -> (TestApp, String, String, String) {
    let t = spawn_app_with(
        db,
        Options {
            bad_token_limit: Some(piivault::authz::LimitConfig {
                max_failures,
                window: Duration::from_secs(3600),
                penalty,
            }),
            ..Default::default()
        },
    )
    .await;
    let good = t.dsr().await;
    let id = t.create(&good, json!({"name": "褚十三"})).await;
    let path = format!("/v1/subjects/{id}");
    (t, good, path, format!("pvt_{}", "B".repeat(43)))
}

fn bad_request(t: &TestApp, path: &str, bad: &str) -> reqwest::RequestBuilder {
    t.client
        .get(format!("{}{}", t.base, path))
        .bearer_auth(bad)
        .header("X-Purpose", "dsr")
}

fn from_address(t: &TestApp, ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(
                &std::fs::read(t.dir.path().join("tls/ca.pem")).unwrap(),
            )
            .unwrap(),
        )
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .unwrap()
}

/// The delay on a bad token over budget holds that request only. With a penalty of an
/// hour, the request over budget is still unanswered when the client gives up on it
/// (after 2 s: a slow machine can only make that more certain), and a good request from
/// the same address is answered at once (an hour cannot pass during the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_penalty_delays_the_bad_request_and_nothing_else() {
    let (t, good, path, bad) = limited(Db::Sqlite, 1, Duration::from_secs(3600)).await;
    let (s, _) = t
        .call(Method::GET, &path, Some(&bad), Some("dsr"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let held = bad_request(&t, &path, &bad)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        held.as_ref().is_err_and(|e| e.is_timeout()),
        "the bad token over budget was answered at once: {held:?}"
    );
    let (s, _) = t
        .call(Method::GET, &path, Some(&good), Some("dsr"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
}

/// An editor that truncates a file and writes it again leaves, for a moment, half a
/// file; the watcher may catch it (refused) and must still see the whole one, even when
/// both have the same modification time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_file_rewritten_in_place_is_reloaded_even_with_the_same_mtime() {
    let (pol, t, billing, path, _) = editable_policy(Db::Sqlite, None).await;
    let csv = pol.path().join("policy.csv");
    let original = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, format!("{original}\np, billing, phone, read_mas")).unwrap();
    let refused = wait_for_reload(&t, "error").await;
    assert_eq!(refused.reason, "policy_refused");
    // The whole file, given the half-written one's modification time before it lands.
    let half_written = std::fs::metadata(&csv).unwrap().modified().unwrap();
    let whole = pol.path().join("policy.csv.new");
    std::fs::write(&whole, with_masked_phone(&original)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&whole)
        .unwrap()
        .set_modified(half_written)
        .unwrap();
    std::fs::rename(&whole, &csv).unwrap();
    assert_eq!(
        std::fs::metadata(&csv).unwrap().modified().unwrap(),
        half_written
    );
    let b = wait_for(&t, &path, &billing, "billing", StatusCode::OK).await;
    assert_eq!(b["fields"]["phone"]["value"], "139****5678");
    let applied = wait_for_reload(&t, "allow").await;
    assert_eq!(
        applied.target.as_deref(),
        Some(t.app.policy.current().digest())
    );
}

/// SIGHUP reloads at once (the periodic check is an hour away here); a reload that is
/// refused is audited, and the last good policy stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_at_once_and_a_refused_reload_is_audited() {
    fn hourly(s: &mut piivault::ServeOptions) {
        s.policy_reload = Duration::from_secs(3600);
    }
    let (pol, t, billing, path, _) = editable_policy(Db::Sqlite, Some(hourly)).await;
    let hup = || {
        // This test process: every vault running in it reloads (the others' files are
        // unchanged, so nothing happens there). Its handler is installed by `start`.
        signal(std::process::id(), "-HUP");
    };
    let csv = pol.path().join("policy.csv");
    let original = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, with_masked_phone(&original)).unwrap();
    hup();
    let b = wait_for(&t, &path, &billing, "billing", StatusCode::OK).await;
    assert_eq!(b["fields"]["phone"]["masked"], true);
    let applied = wait_for_reload(&t, "allow").await;
    assert_eq!(applied.actor_role, "vault");
    assert_eq!(applied.purpose, "admin");
    assert_eq!(
        applied.target.as_deref(),
        Some(t.app.policy.current().digest())
    );
    let good_digest = t.app.policy.current().digest().to_owned();

    std::fs::write(
        &csv,
        format!("{original}\np, billing, phonee, read, billing\n"),
    )
    .unwrap();
    hup();
    let refused = wait_for_reload(&t, "error").await;
    assert_eq!(refused.reason, "policy_refused");
    assert_eq!(refused.target.as_deref(), Some(good_digest.as_str()));
    let (s, b) = t
        .call(Method::GET, &path, Some(&billing), Some("billing"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["fields"]["phone"]["masked"], true);
}

#[test]
fn policy_check_explains_decisions() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_piivault"))
            .args(["policy", "check", "--policy-dir"])
            .arg(policy_dir())
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap())
    };
    let (ok, out) = run(&[
        "--role",
        "customer_service",
        "--field",
        "phone",
        "--action",
        "read_masked",
        "--purpose",
        "service",
    ]);
    assert!(ok, "{out}");
    assert!(out.starts_with("ALLOW"), "{out}");
    assert!(
        out.contains("matched: p, customer_service, phone, read_masked, service"),
        "{out}"
    );
    let (ok, out) = run(&[
        "--role",
        "dsr_handler",
        "--field",
        "bank_card",
        "--action",
        "read",
        "--purpose",
        "dsr",
    ]);
    assert!(ok);
    assert!(
        out.contains("bank_card belongs to category:payment"),
        "{out}"
    );
    assert!(
        out.contains("matched: p, dsr_handler, category:payment, read, dsr"),
        "{out}"
    );
    let (ok, out) = run(&[
        "--role",
        "customer_service",
        "--field",
        "phone",
        "--action",
        "read",
        "--purpose",
        "service",
    ]);
    assert!(!ok);
    assert!(out.starts_with("DENY"), "{out}");
    assert!(out.contains("read_masked is allowed"), "{out}");
    let (ok, out) = run(&[
        "--role",
        "billing",
        "--field",
        "bank_card",
        "--action",
        "read",
        "--purpose",
        "marketing",
    ]);
    assert!(!ok);
    assert!(out.contains("default deny"), "{out}");
    let (ok, out) = run(&[
        "--role",
        "nobody",
        "--field",
        "phone",
        "--action",
        "read",
        "--purpose",
        "service",
    ]);
    assert!(!ok);
    assert!(out.contains("appears nowhere"), "{out}");
}
