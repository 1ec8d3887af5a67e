//! Consent: required or not per purpose, separate consent for sensitive PI and transfer
//! abroad, withdrawal at once, new purpose versions, history never rewritten.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    consent_gates_reads_for_consent_based_purposes,
    |db| async move {
        let (t, _policy) = spawn_app_with_policy(
            db,
            "p, marketing, id_number, read_masked, marketing\np, marketing, tier, read, cross_border",
        )
        .await;
        let dsr = t.dsr().await;
        let cs = t.token("customer_service", &["service"]).await;
        let mkt = t.token("marketing", &["marketing", "cross_border"]).await;
        let id = t.create(&dsr, full_subject()).await;
        let read = |tok: &str, purpose: &str, fields: &str| {
            let (tok, purpose, path) = (
                tok.to_owned(),
                purpose.to_owned(),
                format!("/v1/subjects/{id}?fields={fields}"),
            );
            let t = &t;
            async move {
                t.call(Method::GET, &path, Some(&tok), Some(&purpose), None)
                    .await
            }
        };

        // Contract purposes need no consent.
        let (s, _) = read(&cs, "service", "name").await;
        assert_eq!(s, StatusCode::OK);
        // Marketing does: refused, and the refusal is audited.
        let (s, b) = read(&mkt, "marketing", "tier").await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("consent_missing")),
            "{b}"
        );
        let last = t.events().await.pop().unwrap();
        assert_eq!(
            (
                last.action.as_str(),
                last.decision.as_str(),
                last.reason.as_str()
            ),
            ("read", "deny", "consent_missing")
        );

        // Customer service records the consent given on the phone (not separate).
        let (s, b) = grant_consent(
            &t,
            &cs,
            "service",
            &id,
            "marketing",
            json!({"notice_version": "2026-03", "channel": "phone"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["consent"]["active"], true);
        let (s, b) = read(&mkt, "marketing", "tier,tags,phone").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["fields"]["tier"]["value"], "gold");
        assert_eq!(b["fields"]["phone"]["masked"], true);
        // Sensitive PI needs separate consent (Art. 29).
        let (s, b) = read(&mkt, "marketing", "tier,id_number").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            b["fields"]["id_number"]["error"]["code"],
            "separate_consent_missing"
        );
        let (s, b) = read(&mkt, "marketing", "id_number").await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("separate_consent_missing"))
        );
        let (s, _) = grant_consent(
            &t,
            &cs,
            "service",
            &id,
            "marketing",
            json!({"notice_version": "2026-03", "separate": true}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, b) = read(&mkt, "marketing", "id_number").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["fields"]["id_number"]["value"], "110***********002X");

        // Lookup for a consent-based purpose finds only consenting subjects.
        let other = t
            .create(&dsr, json!({"name": "沈十八", "phone": "13912345678"}))
            .await;
        let (_, b) = t
            .call(
                Method::POST,
                "/v1/subjects/lookup",
                Some(&mkt),
                Some("marketing"),
                Some(&json!({"field": "phone", "value": "13912345678"})),
            )
            .await;
        assert_eq!(b["ids"], json!([id]), "{other} has not consented");

        // Withdrawal takes effect on the very next request.
        let (s, _) = withdraw_consent(&t, &cs, "service", &id, "marketing").await;
        assert_eq!(s, StatusCode::OK);
        let (s, b) = read(&mkt, "marketing", "tier").await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("consent_missing"))
        );
        let (s, b) = withdraw_consent(&t, &cs, "service", &id, "marketing").await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::BAD_REQUEST, json!("no_active_consent"))
        );

        // Transfer abroad always needs separate consent (Art. 39).
        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "cross_border",
            json!({"notice_version": "x-1"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, b) = read(&mkt, "cross_border", "tier").await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("separate_consent_missing"))
        );
        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "cross_border",
            json!({"notice_version": "x-1", "separate": true}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(read(&mkt, "cross_border", "tier").await.0, StatusCode::OK);

        // Purposes that do not rest on consent take no consent; bad input is refused.
        let (s, b) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "service",
            json!({"notice_version": "1"}),
        )
        .await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::UNPROCESSABLE_ENTITY, json!("not_consent_based"))
        );
        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "marketing",
            json!({"notice_version": ""}),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "astrology",
            json!({"notice_version": "1"}),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            "sub_00000000000000000000000000000000",
            "marketing",
            json!({"notice_version": "1"}),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        // Billing may not record consents.
        let billing = t.token("billing", &["billing"]).await;
        let (s, _) = grant_consent(
            &t,
            &billing,
            "billing",
            &id,
            "marketing",
            json!({"notice_version": "1"}),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        // The history, in order, never rewritten; customer service may write but not read it.
        let (s, _) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}/consents"),
                Some(&cs),
                Some("service"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}/consents"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let kinds: Vec<(String, String, bool)> = b["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["purpose"].as_str().unwrap().to_owned(),
                    e["kind"].as_str().unwrap().to_owned(),
                    e["separate"].as_bool().unwrap(),
                )
            })
            .collect();
        let k = |p: &str, kind: &str, sep: bool| (p.to_owned(), kind.to_owned(), sep);
        assert_eq!(
            kinds,
            vec![
                k("marketing", "grant", false),
                k("marketing", "grant", true),
                k("marketing", "withdraw", true),
                k("cross_border", "grant", false),
                k("cross_border", "grant", true),
            ]
        );
        let states = b["consents"].as_array().unwrap();
        assert!(states
            .iter()
            .any(|c| c["purpose"] == "marketing" && c["active"] == false));
        assert!(states
            .iter()
            .any(|c| c["purpose"] == "cross_border" && c["active"] == true));
        let raw = t.raw().await;
        assert!(sqlx::query("UPDATE consent_events SET kind = 'grant'")
            .execute(&raw)
            .await
            .is_err());

        // The consent_changes report lists every change.
        let auditor = t.token("auditor", &["audit"]).await;
        let (s, b) = t
            .call(
                Method::GET,
                "/v1/audit/reports/consent_changes?from=2000-01-01&to=2999-12-31",
                Some(&auditor),
                Some("audit"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let count = |action: &str, decision: &str| {
            b["rows"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["action"] == action && r["decision"] == decision)
                .count()
        };
        assert_eq!(count("consent.grant", "allow"), 4, "{b}");
        assert_eq!(count("consent.withdraw", "allow"), 1);
        assert_eq!(
            count("consent.withdraw", "error"),
            1,
            "nothing left to withdraw"
        );
        assert_eq!(
            count("consent.grant", "error"),
            3,
            "not consent-based, invalid, no such subject"
        );
        assert_eq!(count("consent.grant", "deny"), 1, "billing");
        assert_eq!(count("consent.read", "deny"), 1, "customer service");
        assert_eq!(count("consent.read", "allow"), 1);
    }
);

both_stores!(
    a_new_purpose_version_voids_older_consents,
    |db| async move {
        let (t, pol) = spawn_app_with_policy(db, "").await;
        let dsr = t.dsr().await;
        let mkt = t.token("marketing", &["marketing"]).await;
        let id = t.create(&dsr, full_subject()).await;
        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "marketing",
            json!({"notice_version": "2026-01"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let path = format!("/v1/subjects/{id}?fields=tier");
        assert_eq!(
            t.call(Method::GET, &path, Some(&mkt), Some("marketing"), None)
                .await
                .0,
            StatusCode::OK
        );

        let purposes = pol.path().join("purposes.toml");
        let text = std::fs::read_to_string(&purposes).unwrap();
        assert!(text.contains("legal_basis = \"consent\"\nversion = 1"));
        std::fs::write(
            &purposes,
            text.replacen(
                "legal_basis = \"consent\"\nversion = 1",
                "legal_basis = \"consent\"\nversion = 2",
                1,
            ),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, b) = t
                .call(Method::GET, &path, Some(&mkt), Some("marketing"), None)
                .await;
            if s == StatusCode::FORBIDDEN {
                assert_eq!(b["error"]["code"], "consent_outdated");
                break;
            }
            assert!(Instant::now() < deadline, "the new version never applied");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (s, b) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "marketing",
            json!({"notice_version": "2026-06"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["consent"]["purpose_version"], 2);
        assert_eq!(
            t.call(Method::GET, &path, Some(&mkt), Some("marketing"), None)
                .await
                .0,
            StatusCode::OK
        );
    }
);

both_stores!(minors_need_a_guardians_consent, |db| async move {
    let t = spawn_app(db).await;
    let dsr = t.dsr().await;
    let mkt = t.token("marketing", &["marketing"]).await;
    // About ten years ago, by days: `replace_year` fails on 29 February.
    let ten_years_ago = time::OffsetDateTime::now_utc().date() - time::Duration::days(3653);
    let child = t
        .create(
            &dsr,
            json!({"name": "小明", "birth_date": ten_years_ago.to_string(), "tier": "basic"}),
        )
        .await;
    let flagged = t
        .create(
            &dsr,
            json!({"name": "小红", "birth_date": "1990-01-01", "is_minor": "yes", "tier": "basic"}),
        )
        .await;
    let adult = t
        .create(
            &dsr,
            json!({"name": "大人", "birth_date": "1990-01-01", "tier": "basic"}),
        )
        .await;
    for id in [&child, &flagged, &adult] {
        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            id,
            "marketing",
            json!({"notice_version": "2026-01"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    let read = |id: &str| {
        let path = format!("/v1/subjects/{id}?fields=tier");
        let (t, mkt) = (&t, mkt.clone());
        async move {
            t.call(Method::GET, &path, Some(&mkt), Some("marketing"), None)
                .await
        }
    };
    assert_eq!(read(&adult).await.0, StatusCode::OK);
    for id in [&child, &flagged] {
        let (s, b) = read(id).await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("guardian_consent_missing")),
            "{b}"
        );
        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            id,
            "marketing",
            json!({"notice_version": "2026-01", "guardian": true, "channel": "paper"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(read(id).await.0, StatusCode::OK);
    }
    // Contract purposes do not ask.
    let cs = t.token("customer_service", &["service"]).await;
    let (s, _) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{child}?fields=name"),
            Some(&cs),
            Some("service"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
});

// Records are consent-gated as fields are: under a purpose that rests on consent, a
// collection is listed only with consent in force, and a sensitive one (payments) only
// with separate consent; each refusal and each record read is one whole audit event.
both_stores!(
    records_need_consent_under_a_consent_purpose,
    |db| async move {
        let (t, _policy) = spawn_app_with_policy(
            db,
            "p, marketing, feedback, read, marketing\np, marketing, payments, read, marketing",
        )
        .await;
        let dsr = t.dsr().await;
        let (mkt_id, mkt) = t
            .token_with_ttl("marketing", &["marketing"], Duration::from_secs(3600))
            .await;
        let id = t
            .create(&dsr, json!({"name": "钱十九", "tier": "gold"}))
            .await;
        for (collection, doc) in [
            ("feedback", json!({"text": "很满意"})),
            ("payments", json!({"amount": "12.50"})),
        ] {
            let (s, b) = t
                .call(
                    Method::POST,
                    &format!("/v1/subjects/{id}/records/{collection}"),
                    Some(&dsr),
                    Some("dsr"),
                    Some(&doc),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
        // Lists a collection as marketing; checks the answer's status and code and that the
        // request left exactly the events expected (one deny, or one allow per record).
        let list = |collection: &'static str, want: StatusCode, code: Option<&'static str>| {
            let (t, id, mkt, mkt_id) = (&t, id.clone(), mkt.clone(), mkt_id.clone());
            async move {
                let before = now_ms();
                let (s, b, rid) = t
                    .call_rid(
                        Method::GET,
                        &format!("/v1/subjects/{id}/records/{collection}"),
                        &mkt,
                        "marketing",
                        None,
                    )
                    .await;
                let after = now_ms();
                assert_eq!(s, want, "{collection}: {b}");
                assert_eq!(b["error"]["code"].as_str(), code, "{b}");
                let events: Vec<_> = t
                    .events()
                    .await
                    .into_iter()
                    .filter(|e| e.request_id == rid)
                    .collect();
                assert_eq!(events.len(), 1, "{events:?}");
                let (decision, reason) = match code {
                    Some(c) => ("deny", c),
                    None => ("allow", "ok"),
                };
                assert_event(
                    &events[0],
                    Expect {
                        actor_token: &mkt_id,
                        role: "marketing",
                        purpose: "marketing",
                        action: "record.read",
                        subject: Some(&id),
                        field: Some(collection),
                        decision,
                        reason,
                        request_id: &rid,
                        between: (before, after),
                    },
                );
                if code.is_none() {
                    assert_eq!(
                        events[0].target.as_deref(),
                        b["records"][0]["id"].as_str(),
                        "the event names the record read"
                    );
                }
                b
            }
        };
        list("feedback", StatusCode::FORBIDDEN, Some("consent_missing")).await;
        list("payments", StatusCode::FORBIDDEN, Some("consent_missing")).await;

        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "marketing",
            json!({"notice_version": "2026-03"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let b = list("feedback", StatusCode::OK, None).await;
        assert_eq!(b["records"][0]["document"], json!({"text": "很满意"}));
        let b = list(
            "payments",
            StatusCode::FORBIDDEN,
            Some("separate_consent_missing"),
        )
        .await;
        assert!(b.get("records").is_none(), "{b}");

        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "marketing",
            json!({"notice_version": "2026-03", "separate": true}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let b = list("payments", StatusCode::OK, None).await;
        assert_eq!(b["records"][0]["document"], json!({"amount": "12.50"}));

        // Withdrawn: refused again at once.
        let (s, _) = withdraw_consent(&t, &dsr, "dsr", &id, "marketing").await;
        assert_eq!(s, StatusCode::OK);
        list("feedback", StatusCode::FORBIDDEN, Some("consent_missing")).await;
        list("payments", StatusCode::FORBIDDEN, Some("consent_missing")).await;

        // A purpose that rests on a contract does not ask.
        let cs = t.token("customer_service", &["service"]).await;
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}/records/feedback"),
                Some(&cs),
                Some("service"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["records"].as_array().map(Vec::len), Some(1));
    }
);

both_stores!(
    a_subject_who_refuses_personalised_marketing_is_out_of_it_at_once,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let mkt = t.token("marketing", &["marketing"]).await;
        let integration = t.token("integration", &["marketing"]).await;
        let id = t
            .create(
                &dsr,
                json!({"name": "拒绝", "phone": "13977778888", "tier": "gold"}),
            )
            .await;
        for purpose in ["marketing", "recipient:partner_bank"] {
            let body = json!({"notice_version": "2026-01", "separate": true});
            let (s, b) = grant_consent(&t, &dsr, "dsr", &id, purpose, body).await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
        let read = || async {
            t.call(
                Method::GET,
                &format!("/v1/subjects/{id}?fields=tier"),
                Some(&mkt),
                Some("marketing"),
                None,
            )
            .await
        };
        let lookup = || async {
            let body = json!({"field": "phone", "value": "13977778888"});
            let (s, b) = t
                .call(
                    Method::POST,
                    "/v1/subjects/lookup",
                    Some(&mkt),
                    Some("marketing"),
                    Some(&body),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            b["ids"].clone()
        };
        let provide = || async {
            let body = json!({"recipient": "partner_bank", "fields": ["phone"]});
            t.call(
                Method::POST,
                &format!("/v1/subjects/{id}/provisions"),
                Some(&integration),
                Some("marketing"),
                Some(&body),
            )
            .await
        };
        assert_eq!(read().await.0, StatusCode::OK);
        assert_eq!(lookup().await, json!([id]));
        assert_eq!(provide().await.0, StatusCode::OK);

        // The subject refuses personalised marketing: every read, lookup and provision for
        // it stops at once, with its own code.
        let opt_out = json!({"notice_version": "2026-01", "channel": "app"});
        let (s, b) = grant_consent(&t, &dsr, "dsr", &id, "opt_out:marketing", opt_out).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = read().await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("opted_out")),
            "{b}"
        );
        assert_eq!(lookup().await, json!([]));
        let (s, b) = provide().await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("opted_out")),
            "{b}"
        );

        // Distinct from a withdrawal: the marketing consent is still in force, and both are
        // in the history.
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}/consents"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let active = |purpose: &str| {
            b["consents"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["purpose"] == purpose && c["active"] == true)
        };
        assert!(active("marketing") && active("opt_out:marketing"), "{b}");
        assert!(b["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["purpose"] == "opt_out:marketing" && h["kind"] == "grant"));

        // Lifted: marketing reads go through again.
        let (s, b) = withdraw_consent(&t, &dsr, "dsr", &id, "opt_out:marketing").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(read().await.0, StatusCode::OK);
        assert_eq!(lookup().await, json!([id]));

        // Only a purpose declared refusable can be refused this way.
        let (s, b) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "opt_out:service",
            json!({"notice_version": "1"}),
        )
        .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_purpose")),
            "{b}"
        );
        assert!(t
            .events()
            .await
            .iter()
            .any(|e| e.action == "read" && e.reason == "opted_out"));
    }
);
