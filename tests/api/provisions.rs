//! Provision to recipients (PIPL Art. 21, 23, 25, 38–39, 45, 47), as a compliance
//! officer would check it: a provision goes only to a recipient registered for the
//! purpose and the fields, with the subject's separate consent where the law asks for
//! it; each is audited and shows in the subject's export; an erasure or a withdrawal
//! leaves a deletion notice for every recipient that received the data; transfers abroad
//! are counted per year against the thresholds.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;

async fn provide(
    t: &TestApp,
    tok: &str,
    purpose: &str,
    id: &str,
    body: Value,
) -> (StatusCode, Value) {
    t.call(
        Method::POST,
        &format!("/v1/subjects/{id}/provisions"),
        Some(tok),
        Some(purpose),
        Some(&body),
    )
    .await
}

/// Grants consent to `purpose` as the DSR handler, separate or not; it must succeed.
async fn consent(t: &TestApp, dsr: &str, id: &str, purpose: &str, separate: bool) {
    let body = json!({"notice_version": "2026-01", "separate": separate});
    let (s, b) = grant_consent(t, dsr, "dsr", id, purpose, body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

/// Writes `text` to the policy file `path` and reloads: the reload must be refused,
/// saying `says`.
async fn reload_refused(t: &TestApp, path: &std::path::Path, text: &str, says: &str) {
    std::fs::write(path, text).unwrap();
    let reload = t.app.policy.reload().await;
    let piivault::authz::Reload::Refused(e) = reload else {
        panic!("{} was accepted: {reload:?}", path.display());
    };
    assert!(e.to_string().contains(says), "{e}");
}

/// A GET with a token and a purpose.
async fn get(t: &TestApp, tok: &str, purpose: &str, path: &str) -> (StatusCode, Value) {
    t.call(Method::GET, path, Some(tok), Some(purpose), None)
        .await
}

/// The code of a refusal, with its status.
fn refusal(answer: &(StatusCode, Value)) -> (StatusCode, &str) {
    (answer.0, answer.1["error"]["code"].as_str().unwrap_or(""))
}

async fn notices(t: &TestApp, tok: &str, query: &str) -> Vec<Value> {
    let (s, b) = get(t, tok, "service", &format!("/v1/deletion-notices{query}")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["notices"].as_array().unwrap().clone()
}

both_stores!(
    a_provision_goes_only_to_a_registered_recipient_with_the_consents_it_needs,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let integration = t
            .token("integration", &["service", "billing", "marketing"])
            .await;
        let id = t
            .create(
                &dsr,
                json!({"name": "李四", "phone": "13912345678", "address": "上海市浦东新区1号", "bank_card": "6222021234567890128"}),
            )
            .await;
        let (s, b) = t
            .call(
                Method::POST,
                &format!("/v1/subjects/{id}/records/payments"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"amount": "88.00", "currency": "CNY"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");

        // An entrusted courier on the mainland, for the service: the values come back,
        // one audit event per field names the recipient.
        let answer = provide(
            &t,
            &integration,
            "service",
            &id,
            json!({"recipient": "sf_express", "fields": ["name", "phone", "address"]}),
        )
        .await;
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
        assert_eq!(answer.1["fields"]["phone"]["value"], "13912345678");
        assert_eq!(answer.1["recipient"], "sf_express");
        let provided: Vec<_> = t
            .events()
            .await
            .into_iter()
            .filter(|e| e.action == "provide" && e.decision == "allow")
            .collect();
        assert_eq!(provided.len(), 3);
        assert!(provided
            .iter()
            .all(|e| e.target.as_deref() == Some("recipient:sf_express")
                && e.subject.as_deref() == Some(id.as_str())));

        // Refusals, each with its code, each audited.
        let cs = t.token("customer_service", &["service"]).await;
        let nobody = "sub_00000000000000000000000000000000";
        let cases = [
            (
                &integration,
                "service",
                id.as_str(),
                json!({"recipient": "nobody", "fields": ["name"]}),
                StatusCode::FORBIDDEN,
                "recipient_not_registered",
            ),
            (
                &integration,
                "billing",
                &id,
                json!({"recipient": "sf_express", "fields": ["name"]}),
                StatusCode::FORBIDDEN,
                "recipient_purpose_not_registered",
            ),
            (
                &integration,
                "service",
                &id,
                json!({"recipient": "sf_express", "fields": ["name", "bank_card"]}),
                StatusCode::FORBIDDEN,
                "recipient_field_not_registered",
            ),
            (
                &cs,
                "service",
                &id,
                json!({"recipient": "sf_express", "fields": ["name"]}),
                StatusCode::FORBIDDEN,
                "policy_denied",
            ),
            (
                &integration,
                "service",
                &id,
                json!({"recipient": "sf_express"}),
                StatusCode::BAD_REQUEST,
                "nothing_to_provide",
            ),
            (
                &integration,
                "service",
                nobody,
                json!({"recipient": "sf_express", "fields": ["name"]}),
                StatusCode::NOT_FOUND,
                "subject_not_found",
            ),
        ];
        for (tok, purpose, subject, body, status, code) in cases {
            let answer = provide(&t, tok, purpose, subject, body).await;
            assert_eq!(refusal(&answer), (status, code), "{}", answer.1);
            if code == "recipient_field_not_registered" {
                assert_eq!(answer.1["error"]["field"], "bank_card");
            }
        }
        let denied: Vec<String> = t
            .events()
            .await
            .into_iter()
            .filter(|e| e.action == "provide" && e.decision == "deny")
            .map(|e| e.reason)
            .collect();
        for code in [
            "recipient_not_registered",
            "recipient_purpose_not_registered",
            "recipient_field_not_registered",
            "policy_denied",
        ] {
            assert!(
                denied.iter().any(|r| r == code),
                "{code} not audited: {denied:?}"
            );
        }

        // An independent recipient, for marketing (a consent purpose): the purpose's
        // consent first, then the subject's separate consent to that recipient.
        let bank = json!({"recipient": "partner_bank", "fields": ["name", "phone"]});
        let no_consent = provide(&t, &integration, "marketing", &id, bank.clone()).await;
        assert_eq!(
            refusal(&no_consent),
            (StatusCode::FORBIDDEN, "consent_missing")
        );
        consent(&t, &dsr, &id, "marketing", false).await;
        let no_recipient_consent = provide(&t, &integration, "marketing", &id, bank.clone()).await;
        assert_eq!(
            refusal(&no_recipient_consent),
            (StatusCode::FORBIDDEN, "recipient_consent_missing")
        );
        // Consent that is not separate does not count.
        consent(&t, &dsr, &id, "recipient:partner_bank", false).await;
        let not_separate = provide(&t, &integration, "marketing", &id, bank.clone()).await;
        assert_eq!(
            refusal(&not_separate),
            (StatusCode::FORBIDDEN, "recipient_consent_missing")
        );
        consent(&t, &dsr, &id, "recipient:partner_bank", true).await;
        let ok = provide(&t, &integration, "marketing", &id, bank.clone()).await;
        assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
        // A recipient that needs no separate consent has no consent purpose of its own.
        let (s, b) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "recipient:sf_express",
            json!({"notice_version": "2026-01"}),
        )
        .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_purpose")),
            "{b}"
        );

        // A processor abroad (Hong Kong), for billing: sensitive data, separate consent.
        let card = json!({"recipient": "hk_card_processor", "fields": ["name", "bank_card"], "collections": ["payments"]});
        let abroad = provide(&t, &integration, "billing", &id, card.clone()).await;
        assert_eq!(
            refusal(&abroad),
            (StatusCode::FORBIDDEN, "recipient_consent_missing")
        );
        assert!(abroad.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("abroad"));
        consent(&t, &dsr, &id, "recipient:hk_card_processor", true).await;
        let abroad = provide(&t, &integration, "billing", &id, card).await;
        assert_eq!(abroad.0, StatusCode::OK, "{}", abroad.1);
        assert_eq!(
            abroad.1["fields"]["bank_card"]["value"],
            "6222021234567890128"
        );
        assert_eq!(
            abroad.1["records"]["payments"][0]["document"]["amount"],
            "88.00"
        );

        // The gauge follows the provision abroad (counted off the request's path).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let text = t
                .client
                .get(format!("{}/metrics", t.base))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.contains("piivault_subjects_transferred_abroad_this_year{kind=\"sensitive\"} 1")
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gauge never counted the provision abroad"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }

        // The yearly count of subjects abroad, for the auditor.
        let auditor = t.token("auditor", &["audit"]).await;
        let (s, b) = get(&t, &auditor, "audit", "/v1/transfers/abroad").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(
            (
                b["subjects_sensitive"].as_i64(),
                b["subjects_non_sensitive"].as_i64()
            ),
            (Some(1), Some(0)),
            "{b}"
        );
        assert_eq!(b["thresholds"]["sensitive_security_assessment"], 10_000);
        assert_eq!(b["warnings"], json!([]));
        let (s, b) = get(&t, &auditor, "audit", "/v1/transfers/abroad?year=2020").await;
        assert_eq!((s, b["subjects"].as_i64()), (StatusCode::OK, Some(0)));
        let (s, _) = get(&t, &integration, "service", "/v1/transfers/abroad").await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        // The registry, for auditors and admins only.
        let (s, b) = get(&t, &auditor, "audit", "/v1/recipients").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(
            b["recipients"]["hk_card_processor"]["transfer_mechanism"],
            "standard_contract"
        );
        assert_eq!(
            b["pipia"]["pia_2026_005"]["reviewer"],
            "Data protection officer"
        );
        let (s, _) = get(&t, &cs, "service", "/v1/recipients").await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        // Art. 45: the subject's export says who received what, when.
        let (s, export) = get(&t, &dsr, "dsr", &format!("/v1/subjects/{id}/export")).await;
        assert_eq!(s, StatusCode::OK);
        let got: Vec<(String, String)> = export["provisions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["recipient"].as_str().unwrap().to_owned(),
                    p["purpose"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("sf_express", "service"),
                ("partner_bank", "marketing"),
                ("hk_card_processor", "billing")
            ]
            .map(|(r, p)| (r.to_owned(), p.to_owned()))
        );
        assert_eq!(export["provisions"][2]["region"], "HK");
        assert_eq!(export["provisions"][2]["collections"], json!(["payments"]));

        // A legal hold: storage only, no provision.
        let (s, b) = t
            .call(
                Method::PUT,
                &format!("/v1/subjects/{id}/hold"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"case": "CASE-1"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let held = provide(
            &t,
            &integration,
            "service",
            &id,
            json!({"recipient": "sf_express", "fields": ["name"]}),
        )
        .await;
        assert_eq!(refusal(&held), (StatusCode::FORBIDDEN, "legal_hold"));

        // The auditor's report: provisions by recipient, purpose and field.
        let (s, b) = get(
            &t,
            &auditor,
            "audit",
            "/v1/audit/reports/provisions?from=2000-01-01&to=2999-12-31",
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let rows = b["rows"].as_array().unwrap();
        let row = |target: &str, field: &str, decision: &str| {
            rows.iter()
                .find(|r| r["target"] == target && r["field"] == field && r["decision"] == decision)
        };
        let bank_card = row("recipient:hk_card_processor", "bank_card", "allow").unwrap();
        assert_eq!(
            (bank_card["events"].as_i64(), bank_card["subjects"].as_i64()),
            (Some(1), Some(1))
        );
        assert_eq!(
            row("recipient:sf_express", "phone", "allow").unwrap()["purpose"],
            "service"
        );
        assert!(rows
            .iter()
            .any(|r| r["decision"] == "deny" && r["reason"] == "recipient_consent_missing"));

        let (ok, said) = t.cli(&["audit", "verify"]);
        assert!(ok, "{said}");
    }
);

both_stores!(
    an_erasure_or_a_withdrawal_leaves_a_deletion_notice_for_each_recipient,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let integration = t.token("integration", &["service", "marketing"]).await;
        let make = |name: &'static str, phone: &'static str| {
            let (t, dsr) = (&t, dsr.clone());
            async move {
                t.create(
                    &dsr,
                    json!({"name": name, "phone": phone, "address": "北京市1号"}),
                )
                .await
            }
        };
        let kept = make("留下", "13900000001").await;
        let gone = make("删除", "13900000002").await;
        for id in [&kept, &gone] {
            let a = provide(
                &t,
                &integration,
                "service",
                id,
                json!({"recipient": "sf_express", "fields": ["name", "address"]}),
            )
            .await;
            assert_eq!(a.0, StatusCode::OK, "{}", a.1);
            for purpose in ["marketing", "recipient:partner_bank"] {
                consent(&t, &dsr, id, purpose, true).await;
            }
            let a = provide(
                &t,
                &integration,
                "marketing",
                id,
                json!({"recipient": "partner_bank", "fields": ["phone"]}),
            )
            .await;
            assert_eq!(a.0, StatusCode::OK, "{}", a.1);
        }
        assert!(notices(&t, &integration, "").await.is_empty());

        // Withdrawing the consent to one recipient: that recipient is told, no one else.
        let (s, b) = withdraw_consent(&t, &dsr, "dsr", &kept, "recipient:partner_bank").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let owed = notices(&t, &integration, "").await;
        assert_eq!(owed.len(), 1, "{owed:?}");
        assert_eq!(
            (
                owed[0]["subject_id"].as_str(),
                owed[0]["recipient"].as_str(),
                owed[0]["reason"].as_str(),
                owed[0]["purpose"].as_str()
            ),
            (
                Some(kept.as_str()),
                Some("partner_bank"),
                Some("consent_withdrawn"),
                Some("recipient:partner_bank")
            )
        );

        // An erasure: every recipient that received the subject's data.
        let (s, b) = t
            .call(
                Method::DELETE,
                &format!("/v1/subjects/{gone}"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let owed = notices(&t, &integration, "").await;
        let mut erased: Vec<&str> = owed
            .iter()
            .filter(|n| n["subject_id"] == gone.as_str())
            .map(|n| {
                assert_eq!(n["reason"], "erasure");
                n["recipient"].as_str().unwrap()
            })
            .collect();
        erased.sort();
        assert_eq!(erased, ["partner_bank", "sf_express"]);
        // Nothing more can go to it.
        let after = provide(
            &t,
            &integration,
            "service",
            &gone,
            json!({"recipient": "sf_express", "fields": ["name"]}),
        )
        .await;
        assert_eq!(
            refusal(&after),
            (StatusCode::NOT_FOUND, "subject_not_found")
        );

        // The integration tells each recipient, then marks the notice delivered.
        let first = owed[0]["id"].as_i64().unwrap();
        let path = format!("/v1/deletion-notices/{first}/delivered");
        let (s, b) = t
            .call(
                Method::POST,
                &path,
                Some(&integration),
                Some("service"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = t
            .call(
                Method::POST,
                &path,
                Some(&integration),
                Some("service"),
                None,
            )
            .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("notice_delivered"))
        );
        let (s, b) = t
            .call(
                Method::POST,
                "/v1/deletion-notices/999999/delivered",
                Some(&integration),
                Some("service"),
                None,
            )
            .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("notice_not_found"))
        );
        assert_eq!(notices(&t, &integration, "").await.len(), owed.len() - 1);
        let all = notices(&t, &integration, "?pending=false").await;
        assert_eq!(all.len(), owed.len());
        let delivered = all.iter().find(|n| n["id"] == first).unwrap();
        assert!(delivered["delivered_at"].as_i64().is_some());
        let sf = notices(&t, &integration, "?recipient=sf_express&pending=false").await;
        assert!(sf.iter().all(|n| n["recipient"] == "sf_express") && !sf.is_empty());
        let (s, _) = get(&t, &integration, "service", "/v1/deletion-notices?limit=0").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        // Who may not: the policy says so.
        let cs = t.token("customer_service", &["service"]).await;
        let (s, _) = get(&t, &cs, "service", "/v1/deletion-notices").await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(t
            .events()
            .await
            .iter()
            .any(|e| e.action == "notice.delivered"
                && e.target.as_deref() == Some(format!("notice:{first}").as_str())));
        let (ok, said) = t.cli(&["audit", "verify"]);
        assert!(ok, "{said}");
    }
);

both_stores!(
    a_recipient_without_its_impact_assessment_is_refused_at_policy_load,
    |db| async move {
        let (t, pol) = spawn_app_with_policy(db, "").await;
        let dsr = t.dsr().await;
        let integration = t.token("integration", &["service"]).await;
        let id = t
            .create(&dsr, json!({"name": "王五", "address": "广州市1号"}))
            .await;
        let body = json!({"recipient": "courier", "fields": ["name", "address"]});
        // The courier is not registered.
        let none = provide(&t, &integration, "service", &id, body.clone()).await;
        assert_eq!(
            refusal(&none),
            (StatusCode::FORBIDDEN, "recipient_not_registered")
        );

        // A purpose granted sensitive personal information without a PIPIA (Art. 55):
        // the whole policy is refused, with the reason.
        let purposes = pol.path().join("purposes.toml");
        let declared = std::fs::read_to_string(&purposes).unwrap();
        let without = declared.replace("pipia = \"pia_2026_002\"\n", "");
        let says = "\"billing\" is granted sensitive personal information";
        reload_refused(&t, &purposes, &without, says).await;
        std::fs::write(&purposes, declared).unwrap();
        // An entrusted processor without a PIPIA (Art. 55): the whole policy is refused,
        // with the reason, and the last good one stays in force.
        let entry = "[recipients.courier]\nname = \"Courier Ltd\"\nkind = \"entrusted\"\nregion = \"CN\"\npurposes = [\"service\"]\nfields = [\"name\", \"address\"]\ncontract = \"DPA-9\"\n";
        let recipients = pol.path().join("recipients.toml");
        reload_refused(&t, &recipients, entry, "needs a PIPIA").await;

        let still = provide(&t, &integration, "service", &id, body.clone()).await;
        assert_eq!(
            refusal(&still),
            (StatusCode::FORBIDDEN, "recipient_not_registered")
        );

        // With its assessment recorded, it loads and the provision goes through.
        let pipia = pol.path().join("pipia.toml");
        let shipped = std::fs::read_to_string(&pipia).unwrap();
        std::fs::write(
            &pipia,
            format!("{shipped}\n[pipia.pia_9]\ndate = \"2026-11-02\"\nconclusion = \"delivery only\"\nreviewer = \"DPO\"\n"),
        )
        .unwrap();
        std::fs::write(
            pol.path().join("recipients.toml"),
            format!("{entry}pipia = \"pia_9\"\n"),
        )
        .unwrap();
        let reload = t.app.policy.reload().await;
        assert!(
            matches!(reload, piivault::authz::Reload::Applied { .. }),
            "{reload:?}"
        );
        let ok = provide(&t, &integration, "service", &id, body).await;
        assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
    }
);

both_stores!(
    a_dsr_handler_sees_the_processing_rules_that_apply_to_a_subject,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let integration = t.token("integration", &["service"]).await;
        let id = t
            .create(
                &dsr,
                json!({"name": "规则", "phone": "13955556666", "address": "杭州市1号"}),
            )
            .await;
        consent(&t, &dsr, &id, "marketing", false).await;
        let a = provide(
            &t,
            &integration,
            "service",
            &id,
            json!({"recipient": "sf_express", "fields": ["name"]}),
        )
        .await;
        assert_eq!(a.0, StatusCode::OK, "{}", a.1);
        let a = provide(
            &t,
            &integration,
            "service",
            &id,
            json!({"recipient": "sf_express", "fields": ["name", "address"]}),
        )
        .await;
        assert_eq!(a.0, StatusCode::OK, "{}", a.1);

        let path = format!("/v1/subjects/{id}/processing");
        let (s, b) = get(&t, &dsr, "dsr", &path).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let purpose = |name: &str| purpose_entry(&b, name);
        assert_eq!(
            (
                purpose("service")["legal_basis"].as_str(),
                purpose("service")["applies"].as_bool()
            ),
            (Some("contract"), Some(true))
        );
        assert_eq!(
            (
                purpose("marketing")["applies"].as_bool(),
                purpose("marketing")["consent"]["notice_version"].as_str()
            ),
            (Some(true), Some("2026-01"))
        );
        assert_eq!(
            (
                purpose("analytics")["applies"].as_bool(),
                &purpose("analytics")["consent"]
            ),
            (Some(false), &Value::Null)
        );
        let fields: Vec<&str> = b["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields.len(), 3, "{fields:?}");
        assert!(b["fields"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["retention_days"].as_u64() > Some(0)));
        assert_eq!(b["provided_to"].as_array().unwrap().len(), 1);
        let sf = &b["provided_to"][0];
        assert_eq!(
            (
                sf["recipient"].as_str(),
                sf["kind"].as_str(),
                sf["region"].as_str()
            ),
            (Some("sf_express"), Some("entrusted"), Some("CN"))
        );
        assert_eq!(sf["fields"], json!(["name", "address"]));
        assert_eq!(sf["purposes"], json!(["service"]));
        assert_eq!(b["legal_hold"], false);
        // No value in it.
        assert!(!b.to_string().contains("13955556666") && !b.to_string().contains("杭州"));
        // For the DSR handler, not for a role without export.
        let cs = t.token("customer_service", &["service"]).await;
        let (s, _) = get(&t, &cs, "service", &path).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = get(
            &t,
            &dsr,
            "dsr",
            "/v1/subjects/sub_00000000000000000000000000000000/processing",
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(t
            .events()
            .await
            .iter()
            .any(|e| e.action == "processing.read" && e.subject.as_deref() == Some(id.as_str())));
    }
);

both_stores!(
    the_record_of_processing_comes_from_the_policy_for_auditors_and_the_cli,
    |db| async move {
        let t = spawn_app(db).await;
        let auditor = t.token("auditor", &["audit"]).await;
        let (s, b) = get(&t, &auditor, "audit", "/v1/inventory").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let purpose = |name: &str| purpose_entry(&b, name);
        let billing = purpose("billing");
        assert_eq!(billing["legal_basis"], "contract");
        assert_eq!(billing["pipia"]["id"], "pia_2026_002");
        assert_eq!(billing["abroad"], json!(["HK"]));
        let payment = billing["categories"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["category"] == "payment")
            .unwrap();
        assert_eq!(payment["sensitive"], true);
        assert!(payment["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "bank_card" && i["retention_days"].as_u64() > Some(0)));
        assert_eq!(billing["recipients"][0]["id"], "hk_card_processor");
        assert_eq!(
            billing["recipients"][0]["transfer_mechanism"],
            "standard_contract"
        );
        let marketing = purpose("marketing");
        assert_eq!(
            (
                marketing["automated_decision"].as_bool(),
                marketing["refusable"].as_bool()
            ),
            (Some(true), Some(true))
        );
        assert_eq!(purpose("admin")["categories"], json!([]));
        // The CLI answers the same record from the same files.
        let out = t
            .cli_command(&[
                "inventory",
                "--json",
                "--policy-dir",
                policy_dir().to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(cli, b);
        let out = t
            .cli_command(&["inventory", "--policy-dir", policy_dir().to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("PIPIA: pia_2026_002")
                && text.contains("abroad under standard_contract SC-FILING-2026-0088"),
            "{text}"
        );
        // Not for a role without the audit trail or the policies.
        let cs = t.token("customer_service", &["service"]).await;
        let (s, _) = get(&t, &cs, "service", "/v1/inventory").await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
);

both_stores!(
    a_pipia_record_is_kept_after_its_removal_from_the_policy,
    |db| async move {
        let (t, pol) = spawn_app_with_policy(db, "").await;
        let auditor = t.token("auditor", &["audit"]).await;
        let archived = || async {
            let (s, b) = get(&t, &auditor, "audit", "/v1/pipia").await;
            assert_eq!(s, StatusCode::OK, "{b}");
            b["pipia"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let wait_for = |id: &'static str| async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !archived().await.iter().any(|a| a == id) {
                assert!(std::time::Instant::now() < deadline, "{id} never archived");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        // What the policy holds at start is kept.
        wait_for("pia_2026_001").await;
        // A record added, then removed from the file: still kept.
        let file = pol.path().join("pipia.toml");
        let shipped = std::fs::read_to_string(&file).unwrap();
        let extra = "\n[pipia.pia_old_campaign]\ndate = \"2026-03-01\"\nconclusion = \"a campaign since ended\"\nreviewer = \"DPO\"\n";
        std::fs::write(&file, format!("{shipped}{extra}")).unwrap();
        assert!(matches!(
            t.app.policy.reload().await,
            piivault::authz::Reload::Applied { .. }
        ));
        wait_for("pia_old_campaign").await;
        std::fs::write(&file, &shipped).unwrap();
        assert!(matches!(
            t.app.policy.reload().await,
            piivault::authz::Reload::Applied { .. }
        ));
        assert!(archived().await.iter().any(|a| a == "pia_old_campaign"));
        // The store refuses to change it or remove it within three years of its date.
        let pool = t.raw().await;
        let update = sqlx::query("UPDATE pipia_records SET conclusion = 'x'")
            .execute(&pool)
            .await;
        assert!(update.is_err(), "an archived PIPIA record was changed");
        let delete = sqlx::query("DELETE FROM pipia_records WHERE id = 'pia_old_campaign'")
            .execute(&pool)
            .await;
        assert!(delete.unwrap_err().to_string().contains("three years"));
        // For auditors and admins only.
        let cs = t.token("customer_service", &["service"]).await;
        assert_eq!(
            get(&t, &cs, "service", "/v1/pipia").await.0,
            StatusCode::FORBIDDEN
        );
    }
);

/// The entry for purpose `name` in an answer listing `purposes` (the record of
/// processing, or a subject's processing rules).
fn purpose_entry(b: &Value, name: &str) -> Value {
    b["purposes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["purpose"] == name)
        .cloned()
        .unwrap()
}
