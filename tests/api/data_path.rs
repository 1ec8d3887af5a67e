//! The data path under the faults ordinary clients and stores cause: clients hanging up
//! mid-request, an audit batch that fails half-way, and caches that must never outlive a
//! revocation, a withdrawal, a hold or a narrowed policy, on this node or another.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::both_stores;
use crate::helpers::*;

/// What the chaos phase learnt for sure: subjects whose create was acknowledged, and
/// per subject the suffix of its last acknowledged correction (phone and e-mail are
/// always written together with the same suffix).
#[derive(Default)]
struct Acknowledged {
    created: Vec<u32>,
    unacknowledged_creates: Vec<u32>,
    corrected: BTreeMap<String, u32>,
}

fn phone(n: u32) -> String {
    format!("139{n:08}")
}

fn email(n: u32) -> String {
    format!("c{n}@example.com")
}

/// A client that gives up on a request after a random few milliseconds: it hangs up at
/// whatever point the request has reached (TLS handshake, headers, body, waiting for
/// the store or the audit commit).
fn impatient_client(t: &TestApp) -> reqwest::Client {
    let ca = std::fs::read(t.dir.path().join("tls/ca.pem")).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .https_only(true)
        // A fresh connection per request, so that every hang-up closes one.
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

both_stores!(
    clients_hanging_up_at_random_moments_poison_nothing,
    |db| async move {
        let t = Arc::new(spawn_app(db).await);
        let dsr = t.dsr().await;
        // Subjects to correct and read from the start.
        let mut seeded = Vec::new();
        for n in 0..8u32 {
            seeded.push(
                t.create(
                    &dsr,
                    json!({"name": "挂断", "phone": phone(n), "email": email(n)}),
                )
                .await,
            );
        }
        let known = Arc::new(Mutex::new(Acknowledged::default()));
        let next = Arc::new(std::sync::atomic::AtomicU32::new(1000));
        let hangups = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (t, dsr, known, next, hangups) = (
                t.clone(),
                dsr.clone(),
                known.clone(),
                next.clone(),
                hangups.clone(),
            );
            let seeded = seeded.clone();
            tasks.push(tokio::spawn(async move {
                let client = impatient_client(&t);
                for _ in 0..100 {
                    let (patience, kind, pick) = {
                        let mut rng = rand::thread_rng();
                        (
                            Duration::from_micros(rng.gen_range(200..15_000)),
                            rng.gen_range(0..5u8),
                            rng.gen_range(0..seeded.len()),
                        )
                    };
                    let subject = &seeded[pick];
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (method, path, body) = match kind {
                        0 => (
                            Method::POST,
                            "/v1/subjects".to_owned(),
                            Some(json!({"fields": {"name": "挂断", "phone": phone(n), "email": email(n)}})),
                        ),
                        1 => (
                            Method::PATCH,
                            format!("/v1/subjects/{subject}"),
                            Some(json!({"fields": {"phone": phone(n), "email": email(n)}})),
                        ),
                        2 => (
                            Method::GET,
                            format!("/v1/subjects/{subject}?fields=phone,email"),
                            None,
                        ),
                        3 => (
                            Method::PUT,
                            format!("/v1/subjects/{subject}/consents/marketing"),
                            Some(json!({"notice_version": "v1"})),
                        ),
                        _ => (
                            Method::DELETE,
                            format!("/v1/subjects/{subject}/consents/marketing"),
                            None,
                        ),
                    };
                    let mut req = client
                        .request(method, format!("{}{path}", t.base))
                        .bearer_auth(&dsr)
                        .header("X-Purpose", "dsr")
                        .timeout(patience);
                    if let Some(b) = &body {
                        req = req.json(b);
                    }
                    let status = match req.send().await {
                        Ok(resp) => resp.status(),
                        Err(_) => {
                            hangups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if kind == 0 {
                                known.lock().await.unacknowledged_creates.push(n);
                            }
                            continue;
                        }
                    };
                    let mut k = known.lock().await;
                    match kind {
                        0 => {
                            assert_eq!(status, StatusCode::CREATED);
                            k.created.push(n);
                        }
                        1 => {
                            assert_eq!(status, StatusCode::OK);
                            // Acknowledgements of one subject may arrive out of order;
                            // any acknowledged one may be the last applied, so only
                            // consistency is checked below, plus presence of one of them.
                            k.corrected.insert(subject.clone(), n);
                        }
                        2 => assert_eq!(status, StatusCode::OK),
                        // Consent: granted, or nothing to withdraw.
                        _ => assert!(
                            status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
                            "{status}"
                        ),
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let hung_up = hangups.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            hung_up >= 50,
            "only {hung_up} hang-ups: the test did not test"
        );

        // The vault answers every kind of request, many at once (more than the pool).
        let mut checks = Vec::new();
        for i in 0..24u32 {
            let (t, dsr, subject) = (t.clone(), dsr.clone(), seeded[i as usize % 8].clone());
            checks.push(tokio::spawn(async move {
                let (s, b) = t
                    .call(
                        Method::GET,
                        &format!("/v1/subjects/{subject}?fields=phone"),
                        Some(&dsr),
                        Some("dsr"),
                        None,
                    )
                    .await;
                assert_eq!(s, StatusCode::OK, "{b}");
            }));
        }
        for c in checks {
            c.await.unwrap();
        }
        let fresh = t
            .create(
                &dsr,
                json!({"name": "之后", "phone": phone(1), "email": email(1)}),
            )
            .await;
        let (s, b) = t
            .call(
                Method::PATCH,
                &format!("/v1/subjects/{fresh}"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"fields": {"phone": phone(2)}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &fresh,
            "marketing",
            json!({"notice_version": "v1"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, _) = t.call(Method::GET, "/readyz", None, None, None).await;
        assert_eq!(s, StatusCode::OK);

        let lookup = |n: u32| {
            let (t, dsr) = (t.clone(), dsr.clone());
            async move {
                let (s, b) = t
                    .call(
                        Method::POST,
                        "/v1/subjects/lookup",
                        Some(&dsr),
                        Some("dsr"),
                        Some(&json!({"field": "phone", "value": phone(n)})),
                    )
                    .await;
                assert_eq!(s, StatusCode::OK, "{b}");
                b["ids"].as_array().unwrap().clone()
            }
        };
        let read = |id: String| {
            let (t, dsr) = (t.clone(), dsr.clone());
            async move {
                let (s, b) = t
                    .call(
                        Method::GET,
                        &format!("/v1/subjects/{id}?fields=name,phone,email"),
                        Some(&dsr),
                        Some("dsr"),
                        None,
                    )
                    .await;
                assert_eq!(s, StatusCode::OK, "{b}");
                b["fields"].clone()
            }
        };
        let known = known.lock().await;
        // Every acknowledged create is there, whole (creates and corrections use
        // distinct numbers, so a phone number names one write).
        for n in &known.created {
            let ids = lookup(*n).await;
            assert_eq!(ids.len(), 1, "acknowledged create {n} is missing");
            let f = read(ids[0].as_str().unwrap().to_owned()).await;
            assert_eq!(f["phone"]["value"], json!(phone(*n)));
            assert_eq!(f["email"]["value"], json!(email(*n)));
            assert_eq!(f["name"]["value"], json!("挂断"));
        }
        // An unacknowledged create is either wholly there or not at all.
        for n in &known.unacknowledged_creates {
            for id in lookup(*n).await {
                let f = read(id.as_str().unwrap().to_owned()).await;
                assert_eq!(f["email"]["value"], json!(email(*n)), "half a create");
                assert_eq!(f["name"]["value"], json!("挂断"), "half a create");
            }
        }
        // Every seeded subject's phone and e-mail come from one write, never two.
        for subject in &seeded {
            let f = read(subject.clone()).await;
            let p = f["phone"]["value"].as_str().unwrap().to_owned();
            let n: u32 = p[3..].parse().unwrap();
            assert_eq!(
                f["email"]["value"],
                json!(email(n)),
                "fields from two writes"
            );
            if let Some(last) = known.corrected.get(subject) {
                assert!(
                    n >= 1000,
                    "acknowledged correction {last} lost on {subject}"
                );
            }
        }
        // Every subject that exists has its create events; the chain verifies.
        let events = t.events().await;
        let raw = t.raw().await;
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM subjects WHERE erased_at IS NULL")
                .fetch_all(&raw)
                .await
                .unwrap();
        raw.close().await;
        for id in ids {
            let fields: Vec<&str> = events
                .iter()
                .filter(|e| e.action == "create" && e.subject.as_deref() == Some(id.as_str()))
                .filter_map(|e| e.field.as_deref())
                .collect();
            assert!(
                fields.contains(&"phone") && fields.contains(&"email"),
                "{id} exists without its create events: {fields:?}"
            );
        }
        let (ok, text) = t.cli(&["audit", "verify"]);
        assert!(ok, "{text}");
    }
);

/// Makes every insert into the audit trail fail while `piivault_test_fault` has a row:
/// a real store error, raised in the middle of the writer's batch (after the changes
/// it carries were made, before it commits).
async fn install_audit_fault(t: &TestApp) {
    let raw = t.raw().await;
    let statements: &[&str] = match t.db {
        Db::Sqlite => &[
            "CREATE TABLE piivault_test_fault (x INTEGER)",
            "CREATE TRIGGER piivault_test_fault BEFORE INSERT ON audit_events \
             WHEN EXISTS (SELECT 1 FROM piivault_test_fault) \
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
        ],
        Db::Postgres => &[
            "CREATE TABLE piivault_test_fault (x INTEGER)",
            "CREATE FUNCTION piivault_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF EXISTS (SELECT 1 FROM piivault_test_fault) THEN \
             RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER piivault_test_fault BEFORE INSERT ON audit_events \
             FOR EACH ROW EXECUTE FUNCTION piivault_test_fault()",
        ],
    };
    for s in statements {
        sqlx::query(s).execute(&raw).await.unwrap();
    }
    raw.close().await;
}

async fn set_fault(t: &TestApp, on: bool) {
    let raw = t.raw().await;
    let sql = if on {
        "INSERT INTO piivault_test_fault (x) VALUES (1)"
    } else {
        "DELETE FROM piivault_test_fault"
    };
    sqlx::query(sql).execute(&raw).await.unwrap();
    raw.close().await;
}

both_stores!(
    an_audit_batch_that_fails_half_way_fails_closed_then_recovers,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let id = t
            .create(
                &dsr,
                json!({"name": "故障", "phone": phone(7), "email": email(7)}),
            )
            .await;
        install_audit_fault(&t).await;
        set_fault(&t, true).await;
        let before = t.events().await.len();

        // Reads fail closed: 503 and no value.
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}?fields=phone"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert_eq!(b["error"]["code"], "audit_unavailable");
        assert_no_value(&b, &phone(7));
        // Changes are not made: the create and the correction ran inside the failed
        // batch and were rolled back with it.
        let (s, b) = t
            .call(
                Method::POST,
                "/v1/subjects",
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"fields": {"name": "故障", "phone": phone(8)}})),
            )
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        let (s, _) = t
            .call(
                Method::PATCH,
                &format!("/v1/subjects/{id}"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"fields": {"phone": phone(9)}})),
            )
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        // Readiness says so.
        let (s, b) = t.call(Method::GET, "/readyz", None, None, None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert!(!t.app.audit.healthy());

        // The fault goes away; with no restart, the vault serves again.
        set_fault(&t, false).await;
        let (s, b) = t.call(Method::GET, "/readyz", None, None, None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}?fields=phone"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(
            b["fields"]["phone"]["value"],
            json!(phone(7)),
            "correction not made"
        );
        let (s, b) = t
            .call(
                Method::POST,
                "/v1/subjects/lookup",
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"field": "phone", "value": phone(8)})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["ids"], json!([]), "the failed create left nothing behind");
        t.create(&dsr, json!({"name": "恢复", "phone": phone(8)}))
            .await;
        // Nothing of the failed batches reached the trail, and the chain verifies.
        let after = t.events().await;
        assert!(after[before..]
            .iter()
            .all(|e| e.subject.as_deref() != Some(id.as_str()) || e.action != "correct"));
        let (ok, text) = t.cli(&["audit", "verify"]);
        assert!(ok, "{text}");
    }
);

async fn get(t: &TestApp, tok: &str, purpose: &str, path: &str) -> (StatusCode, Value) {
    t.call(Method::GET, path, Some(tok), Some(purpose), None)
        .await
}

both_stores!(
    caches_never_outlive_a_change_on_this_node,
    |db| async move {
        let pol = policies_with("");
        let t = spawn_app_with(
            db,
            Options {
                policy_dir: Some(pol.path().to_path_buf()),
                ..Default::default()
            },
        )
        .await;
        let dsr = t.dsr().await;
        let admin = t.token("admin", &["admin"]).await;
        let id = t
            .create(
                &dsr,
                json!({"name": "缓存", "phone": phone(3), "tier": "gold"}),
            )
            .await;
        let (mkt_id, mkt) = t
            .token_with_ttl("marketing", &["marketing"], Duration::from_secs(3600))
            .await;
        let cs = t.token("customer_service", &["service"]).await;
        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "marketing",
            json!({"notice_version": "v1"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let tier = format!("/v1/subjects/{id}?fields=tier");
        // Warm the caches: token and consent.
        for _ in 0..3 {
            assert_eq!(get(&t, &mkt, "marketing", &tier).await.0, StatusCode::OK);
        }

        // Consent withdrawn: the next read is refused.
        let (s, _) = withdraw_consent(&t, &dsr, "dsr", &id, "marketing").await;
        assert_eq!(s, StatusCode::OK);
        let (s, b) = get(&t, &mkt, "marketing", &tier).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        assert_eq!(b["error"]["code"], "consent_missing");

        // Granted again: honoured at once too.
        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "marketing",
            json!({"notice_version": "v2"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(get(&t, &mkt, "marketing", &tier).await.0, StatusCode::OK);

        // Token revoked: the next request is refused.
        let (s, _) = t
            .call(
                Method::DELETE,
                &format!("/v1/tokens/{mkt_id}"),
                Some(&admin),
                Some("admin"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, b) = get(&t, &mkt, "marketing", &tier).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
        assert_eq!(b["error"]["code"], "token_revoked");

        // Legal hold placed: the next read by a role that may not read held data is refused.
        let phone_path = format!("/v1/subjects/{id}?fields=phone");
        assert_eq!(get(&t, &cs, "service", &phone_path).await.0, StatusCode::OK);
        let (s, _) = t
            .call(
                Method::PUT,
                &format!("/v1/subjects/{id}/hold"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"case": "case-1"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, b) = get(&t, &cs, "service", &phone_path).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        assert_eq!(b["error"]["code"], "legal_hold");
        let (s, _) = t
            .call(
                Method::DELETE,
                &format!("/v1/subjects/{id}/hold"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(get(&t, &cs, "service", &phone_path).await.0, StatusCode::OK);

        // The policy narrowed: once reloaded, the next request is refused.
        let csv = pol.path().join("policy.csv");
        let text = std::fs::read_to_string(&csv).unwrap();
        let narrowed: String = text
            .lines()
            .filter(|l| !l.starts_with("p, customer_service, phone,"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&csv, narrowed).unwrap();
        assert!(matches!(
            t.app.policy.reload().await,
            piivault::authz::Reload::Applied { .. }
        ));
        let (s, b) = get(&t, &cs, "service", &phone_path).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        assert_eq!(b["error"]["code"], "policy_denied");
    }
);

both_stores!(
    caches_on_another_node_honour_changes_within_the_bound,
    |db| async move {
        let a = spawn_app(db).await;
        // A second node on the same store and master key, with its own caches. Its
        // change-feed poller runs too; the test also reads the feed explicitly.
        let mut settings_b = settings(a.dir.path(), a.database_url.clone());
        let dir_b = tempfile::tempdir().unwrap();
        settings_b.audit_key_file = dir_b.path().join("node-b.key");
        let b = piivault::open(&settings_b).await.unwrap();
        let server_b = piivault::start(
            &b,
            &settings_b,
            &piivault::ServeOptions::new("127.0.0.1:0".parse().unwrap()),
        )
        .await
        .unwrap();
        let base_b = format!("https://localhost:{}", server_b.addr.port());
        let on_b = |tok: String, purpose: &'static str, path: String| {
            let client = a.client.clone();
            let base_b = base_b.clone();
            async move {
                let resp = client
                    .get(format!("{base_b}{path}"))
                    .bearer_auth(tok)
                    .header("X-Purpose", purpose)
                    .send()
                    .await
                    .unwrap();
                let s = resp.status();
                (s, resp.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let dsr = a.dsr().await;
        let id = a
            .create(
                &dsr,
                json!({"name": "两节点", "phone": phone(4), "tier": "gold"}),
            )
            .await;
        let (s, _) = grant_consent(
            &a,
            &dsr,
            "dsr",
            &id,
            "marketing",
            json!({"notice_version": "v1"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (mkt_id, mkt) = a
            .token_with_ttl("marketing", &["marketing"], Duration::from_secs(3600))
            .await;
        let (_, mkt2) = a
            .token_with_ttl("marketing", &["marketing"], Duration::from_secs(3600))
            .await;
        let tier = format!("/v1/subjects/{id}?fields=tier");
        // Node B caches both tokens and the consent.
        for tok in [&mkt, &mkt2] {
            let (s, body) = on_b(tok.clone(), "marketing", tier.clone()).await;
            assert_eq!(s, StatusCode::OK, "{body}");
        }

        // Withdrawn on A: once B has read the change feed, B refuses.
        let (s, _) = withdraw_consent(&a, &dsr, "dsr", &id, "marketing").await;
        assert_eq!(s, StatusCode::OK);
        b.changes.sync().await.unwrap();
        let (s, body) = on_b(mkt2.clone(), "marketing", tier.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "consent_missing");

        // Revoked on A: once B has read the feed, B refuses the token.
        a.app
            .tokens
            .revoke(
                &mkt_id,
                piivault::audit::Event::new("test", "operator", "admin", "test", "token.revoke"),
            )
            .await
            .unwrap();
        b.changes.sync().await.unwrap();
        let (s, body) = on_b(mkt.clone(), "marketing", tier.clone()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");

        // And without the explicit read: B's own poller picks a change up by itself.
        let (s, _) = grant_consent(
            &a,
            &dsr,
            "dsr",
            &id,
            "marketing",
            json!({"notice_version": "v2"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            eventually(|| {
                let probe = on_b(mkt2.clone(), "marketing", tier.clone());
                async move { probe.await.0 == StatusCode::OK }
            })
            .await,
            "node B never saw the new grant"
        );
        let (s, _) = withdraw_consent(&a, &dsr, "dsr", &id, "marketing").await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            eventually(|| {
                let probe = on_b(mkt2.clone(), "marketing", tier.clone());
                async move { probe.await.0 == StatusCode::FORBIDDEN }
            })
            .await,
            "node B never saw the withdrawal"
        );

        // Subjects cached on B: a correction and an erasure on A reach B too.
        let phone_path = format!("/v1/subjects/{id}?fields=phone");
        let (s, body) = on_b(dsr.clone(), "dsr", phone_path.clone()).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body["fields"]["phone"]["value"], json!(phone(4)));
        let (s, _) = a
            .call(
                Method::PATCH,
                &format!("/v1/subjects/{id}"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"fields": {"phone": phone(5)}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        b.changes.sync().await.unwrap();
        let (_, body) = on_b(dsr.clone(), "dsr", phone_path.clone()).await;
        assert_eq!(body["fields"]["phone"]["value"], json!(phone(5)));
        let (s, _) = a
            .call(
                Method::DELETE,
                &format!("/v1/subjects/{id}"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        b.changes.sync().await.unwrap();
        let (s, body) = on_b(dsr.clone(), "dsr", phone_path.clone()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
        assert_no_value(&body, &phone(5));
        server_b.shutdown().await.unwrap();
        b.store.close().await;
    }
);

both_stores!(
    the_pipeline_decides_and_audits_without_http,
    |db| async move {
        use piivault::pipeline::{subjects, Credentials, ReadInput};
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let cs = t.token("customer_service", &["service"]).await;
        let id = t
            .create(
                &dsr,
                json!({"name": "管道", "phone": phone(6), "id_number": "11010519491231002X"}),
            )
            .await;
        let pipeline = t.app.pipeline(Default::default());
        let bearer = format!("Bearer {cs}");
        let creds = Credentials {
            authorization: Some(&bearer),
            purpose: Some("service"),
            request_id: "req_pipeline_test",
            client: None,
        };
        let who = pipeline.authorize(&creds).await.unwrap();
        let read = |fields: &str| ReadInput {
            fields: Some(fields.to_owned()),
            masked: None,
        };
        // Masked by policy, and audited under the request id the interface gave.
        let answer = subjects::read(&pipeline, &who, &id, &read("phone"))
            .await
            .unwrap();
        assert_eq!(answer["fields"]["phone"]["masked"], json!(true));
        assert_no_value(&answer, &phone(6));
        // Refused by policy, and the refusal audited.
        let refused = subjects::read(&pipeline, &who, &id, &read("id_number")).await;
        assert!(matches!(
            refused,
            Err(piivault::pipeline::Error::Forbidden {
                code: "policy_denied",
                ..
            })
        ));
        let events: Vec<_> = t
            .events()
            .await
            .into_iter()
            .filter(|e| e.request_id == "req_pipeline_test")
            .map(|e| (e.action, e.field, e.decision))
            .collect();
        assert_eq!(
            events,
            vec![
                (
                    "read_masked".to_owned(),
                    Some("phone".to_owned()),
                    "allow".to_owned()
                ),
                (
                    "read".to_owned(),
                    Some("id_number".to_owned()),
                    "deny".to_owned()
                ),
            ]
        );
        // A purpose the token may not claim, and a bad token, are refused before anything.
        let wrong = Credentials {
            purpose: Some("billing"),
            ..creds
        };
        assert!(matches!(
            pipeline.authorize(&wrong).await,
            Err(piivault::pipeline::Error::Forbidden {
                code: "purpose_not_allowed",
                ..
            })
        ));
        let forged = Credentials {
            authorization: Some("Bearer pvt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            ..creds
        };
        assert!(matches!(
            pipeline.authorize(&forged).await,
            Err(piivault::pipeline::Error::Unauthorized {
                code: "token_invalid",
                ..
            })
        ));
    }
);

/// PostgreSQL drops every connection the vault holds (pool, writer, audit writer), as
/// it does on a restart or a failover: the vault fails closed meanwhile and serves
/// again by itself, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_by_postgres_are_replaced_without_a_restart() {
    if postgres_url().is_none() {
        return;
    }
    let t = spawn_app(Db::Postgres).await;
    let dsr = t.dsr().await;
    let id = t
        .create(&dsr, json!({"name": "断线", "phone": phone(11)}))
        .await;
    let path = format!("/v1/subjects/{id}?fields=phone");
    assert_eq!(get(&t, &dsr, "dsr", &path).await.0, StatusCode::OK);
    let raw = t.raw().await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&raw)
    .await
    .unwrap();
    raw.close().await;
    assert!(
        killed.len() >= 2,
        "the vault's connections: {}",
        killed.len()
    );
    // Whatever the first requests meet, nothing leaks, and the vault comes back.
    assert!(
        eventually(|| {
            let (t, dsr, path) = (&t, &dsr, &path);
            async move {
                let (s, b) = get(t, dsr, "dsr", path).await;
                if s != StatusCode::OK {
                    // A failure says so, and carries no value.
                    assert_no_value(&b, &phone(11));
                }
                s == StatusCode::OK
            }
        })
        .await,
        "reads never came back"
    );
    t.create(&dsr, json!({"name": "恢复", "phone": phone(12)}))
        .await;
    let (s, _) = t.call(Method::GET, "/readyz", None, None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (ok, text) = t.cli(&["audit", "verify"]);
    assert!(ok, "{text}");
}
