//! Every shipped role × every classified field and collection × every action × every
//! declared purpose, through the real HTTP API, against an expectation table written
//! here from SPEC section 4 (not derived from the policy file under test).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;

/// Each shipped role and the one purpose it may claim.
const ROLES: &[(&str, &str)] = &[
    ("onboarding", "service"),
    ("customer_service", "service"),
    ("billing", "billing"),
    ("marketing", "marketing"),
    ("dsr_handler", "dsr"),
    ("auditor", "audit"),
    ("admin", "admin"),
];
const PURPOSES: &[&str] = &[
    "service",
    "billing",
    "marketing",
    "analytics",
    "cross_border",
    "dsr",
    "audit",
    "admin",
];
const FIELDS: &[&str] = &[
    "name",
    "id_number",
    "phone",
    "email",
    "address",
    "birth_date",
    "bank_card",
    "tags",
    "tier",
];
const SEARCHABLE: &[&str] = &["id_number", "phone", "email"];
const COLLECTIONS: &[&str] = &["payments", "service_tickets", "feedback"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Clear,
    Masked,
    Denied,
}

fn expected_read(role: &str, field: &str) -> Read {
    use Read::*;
    match (role, field) {
        ("customer_service", "name" | "phone" | "email" | "address") => Masked,
        ("billing", "name" | "bank_card") => Clear,
        ("marketing", "tier" | "tags") => Clear,
        ("marketing", "phone") => Masked,
        ("dsr_handler", _) => Clear,
        _ => Denied,
    }
}

fn expected_write(role: &str, _field: &str) -> bool {
    matches!(role, "onboarding" | "dsr_handler")
}

/// (may read, may add) records of a collection.
fn expected_records(role: &str, collection: &str) -> (bool, bool) {
    match (role, collection) {
        ("onboarding", _) => (false, true),
        ("customer_service", "service_tickets" | "feedback") => (true, true),
        ("billing", "payments") => (true, true),
        ("dsr_handler", _) => (true, true),
        _ => (false, false),
    }
}

fn expected_erase(role: &str) -> bool {
    role == "dsr_handler"
}

fn expected_token_admin(role: &str) -> bool {
    role == "admin"
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

both_stores!(every_role_field_action_and_purpose, |db| async move {
    let t = spawn_app(db).await;
    let dsr = t.dsr().await;
    let subject = full_subject();
    let id = t.create(&dsr, subject.clone()).await;
    for c in COLLECTIONS {
        let (s, _) = t
            .call(
                Method::POST,
                &format!("/v1/subjects/{id}/records/{c}"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"n": 1})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    // Marketing reads need the subject's consent (tested on their own in consent.rs).
    let (s, b) = t
        .call(
            Method::PUT,
            &format!("/v1/subjects/{id}/consents/marketing"),
            Some(&dsr),
            Some("dsr"),
            Some(&json!({"notice_version": "2026-01", "separate": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let clear = |f: &str| -> Value {
        let v = &subject[f];
        if f == "tags" {
            json!(["churn_risk", "vip"])
        } else {
            v.clone()
        }
    };
    let mut checked = 0usize;

    for (role, own) in ROLES {
        // Tokens can be issued only for the purposes the role may claim.
        for purpose in PURPOSES {
            let issued = t
                .app
                .tokens
                .issue(
                    piivault::authz::IssueRequest {
                        role: (*role).into(),
                        purposes: vec![(*purpose).into()],
                        ttl: std::time::Duration::from_secs(600),
                        description: String::new(),
                        created_by: "matrix".into(),
                    },
                    &t.app.policy.current(),
                    piivault::audit::Event::new("test", "operator", "admin", "test", "token.issue"),
                )
                .await;
            assert_eq!(issued.is_ok(), purpose == own, "issue {role} for {purpose}");
        }
        let tok = t.token(role, &[own]).await;
        let victim = t.create(&dsr, json!({"name": "待删除"})).await;

        for purpose in PURPOSES {
            let p = Some(*purpose);
            let tk = Some(tok.as_str());
            let own_purpose = purpose == own;
            let refused = |status: StatusCode, body: &Value, what: &str| {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role}/{purpose} {what}: {body}"
                );
                assert_eq!(code(body), "purpose_not_allowed", "{role}/{purpose} {what}");
            };
            for field in FIELDS {
                // read
                let (s, b) = t
                    .call(
                        Method::GET,
                        &format!("/v1/subjects/{id}?fields={field}"),
                        tk,
                        p,
                        None,
                    )
                    .await;
                if !own_purpose {
                    refused(s, &b, "read");
                } else {
                    match expected_read(role, field) {
                        Read::Clear => {
                            assert_eq!(s, StatusCode::OK, "{role} read {field}: {b}");
                            assert_eq!(
                                b["fields"][field],
                                json!({"value": clear(field), "masked": false}),
                                "{role} read {field}"
                            );
                        }
                        Read::Masked => {
                            assert_eq!(s, StatusCode::OK, "{role} read {field}: {b}");
                            assert_eq!(
                                b["fields"][field]["masked"],
                                json!(true),
                                "{role} read {field}"
                            );
                            assert_ne!(
                                b["fields"][field]["value"],
                                clear(field),
                                "{role} read {field}"
                            );
                        }
                        Read::Denied => {
                            assert_eq!(s, StatusCode::FORBIDDEN, "{role} read {field}: {b}");
                            assert_eq!(code(&b), "policy_denied");
                            assert_eq!(b["error"]["field"], json!(field));
                        }
                    }
                }
                // read_masked: asking for the masked value
                let (s, b) = t
                    .call(
                        Method::GET,
                        &format!("/v1/subjects/{id}?fields={field}&masked={field}"),
                        tk,
                        p,
                        None,
                    )
                    .await;
                if !own_purpose {
                    refused(s, &b, "read_masked");
                } else if expected_read(role, field) == Read::Denied {
                    assert_eq!(s, StatusCode::FORBIDDEN, "{role} read_masked {field}");
                } else {
                    assert_eq!(s, StatusCode::OK, "{role} read_masked {field}: {b}");
                    assert_eq!(b["fields"][field]["masked"], json!(true));
                }
                // write (correction with the same value)
                let (s, b) = t
                    .call(
                        Method::PATCH,
                        &format!("/v1/subjects/{id}"),
                        tk,
                        p,
                        Some(&json!({"fields": {*field: subject[*field].clone()}})),
                    )
                    .await;
                if !own_purpose {
                    refused(s, &b, "write");
                } else if expected_write(role, field) {
                    assert_eq!(s, StatusCode::OK, "{role} write {field}: {b}");
                } else {
                    assert_eq!(s, StatusCode::FORBIDDEN, "{role} write {field}: {b}");
                    assert_eq!(b["error"]["field"], json!(field));
                }
                // lookup (searchable fields): needs read or read_masked
                if SEARCHABLE.contains(field) {
                    let (s, b) = t
                        .call(
                            Method::POST,
                            "/v1/subjects/lookup",
                            tk,
                            p,
                            Some(&json!({"field": field, "value": subject[*field].clone()})),
                        )
                        .await;
                    if !own_purpose {
                        refused(s, &b, "lookup");
                    } else if expected_read(role, field) != Read::Denied {
                        assert_eq!(s, StatusCode::OK, "{role} lookup {field}: {b}");
                        assert!(b["ids"].as_array().unwrap().contains(&json!(id)));
                    } else {
                        assert_eq!(s, StatusCode::FORBIDDEN, "{role} lookup {field}: {b}");
                    }
                }
                checked += 4;
            }
            for c in COLLECTIONS {
                let (may_read, may_add) = expected_records(role, c);
                let (s, b) = t
                    .call(
                        Method::GET,
                        &format!("/v1/subjects/{id}/records/{c}"),
                        tk,
                        p,
                        None,
                    )
                    .await;
                if !own_purpose {
                    refused(s, &b, "records read");
                } else if may_read {
                    assert_eq!(s, StatusCode::OK, "{role} read {c}: {b}");
                    assert!(!b["records"].as_array().unwrap().is_empty());
                } else {
                    assert_eq!(
                        (s, code(&b)),
                        (StatusCode::FORBIDDEN, "policy_denied"),
                        "{role} read {c}"
                    );
                }
                let (s, b) = t
                    .call(
                        Method::POST,
                        &format!("/v1/subjects/{id}/records/{c}"),
                        tk,
                        p,
                        Some(&json!({"n": 2})),
                    )
                    .await;
                if !own_purpose {
                    refused(s, &b, "records add");
                } else if may_add {
                    assert_eq!(s, StatusCode::CREATED, "{role} add {c}: {b}");
                } else {
                    assert_eq!(
                        (s, code(&b)),
                        (StatusCode::FORBIDDEN, "policy_denied"),
                        "{role} add {c}"
                    );
                }
                checked += 2;
            }
            // delete (erasure of a whole subject)
            let (s, b) = t
                .call(
                    Method::DELETE,
                    &format!("/v1/subjects/{victim}"),
                    tk,
                    p,
                    None,
                )
                .await;
            if !own_purpose {
                refused(s, &b, "delete");
            } else if expected_erase(role) {
                assert_eq!(s, StatusCode::OK, "{role} delete: {b}");
            } else {
                assert_eq!(
                    (s, code(&b)),
                    (StatusCode::FORBIDDEN, "policy_denied"),
                    "{role} delete"
                );
            }
            // admin (token management)
            let (s, b) = t.call(Method::GET, "/v1/tokens", tk, p, None).await;
            if !own_purpose {
                refused(s, &b, "admin");
            } else if expected_token_admin(role) {
                assert_eq!(s, StatusCode::OK, "{role} admin: {b}");
            } else {
                assert_eq!(
                    (s, code(&b)),
                    (StatusCode::FORBIDDEN, "policy_denied"),
                    "{role} admin"
                );
            }
            checked += 2;
        }
    }
    assert!(checked > 2000, "{checked}");

    // Actions that are not about one field: export (the DSR bundle) and audit (the
    // trail's verification), for every role and purpose, over HTTP.
    for (role, own) in ROLES {
        let tok = t.token(role, &[own]).await;
        for purpose in PURPOSES {
            let mine = purpose == own;
            for (path, allowed_role) in [
                (format!("/v1/subjects/{id}/export"), "dsr_handler"),
                ("/v1/audit/verify".to_owned(), "auditor"),
            ] {
                let (s, b) = t
                    .call(Method::GET, &path, Some(&tok), Some(purpose), None)
                    .await;
                if !mine {
                    assert_eq!(
                        (s, code(&b)),
                        (StatusCode::FORBIDDEN, "purpose_not_allowed"),
                        "{role} {path}"
                    );
                } else if *role == allowed_role {
                    assert_eq!(s, StatusCode::OK, "{role} {path}: {b}");
                } else {
                    assert_eq!(
                        (s, code(&b)),
                        (StatusCode::FORBIDDEN, "policy_denied"),
                        "{role} {path}"
                    );
                }
            }
        }
    }
    // No role may export, audit, administer or erase through a field or collection.
    let policy = t.app.policy.current();
    for (role, _) in ROLES {
        for purpose in PURPOSES {
            for object in FIELDS.iter().chain(COLLECTIONS) {
                for action in ["export", "audit", "admin", "delete"] {
                    assert!(
                        !policy.allows(role, object, action, purpose),
                        "{role} {action} {object}"
                    );
                }
            }
        }
    }
});

both_stores!(multi_field_reads_answer_per_field, |db| async move {
    let t = spawn_app(db).await;
    let id = t.create(&t.dsr().await, full_subject()).await;
    let cs = t.token("customer_service", &["service"]).await;
    let (s, b) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}?fields=name,phone,id_number,bank_card"),
            Some(&cs),
            Some("service"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["fields"]["name"],
        json!({"value": "欧***", "masked": true})
    );
    assert_eq!(
        b["fields"]["phone"],
        json!({"value": "139****5678", "masked": true})
    );
    assert_eq!(b["fields"]["id_number"]["error"]["code"], "policy_denied");
    assert_eq!(b["fields"]["bank_card"]["error"]["code"], "policy_denied");
    assert_no_value(&b, "11010519491231002X");
    // Without a field list: exactly what the role may see.
    let (s, b) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}"),
            Some(&cs),
            Some("service"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut seen: Vec<&String> = b["fields"].as_object().unwrap().keys().collect();
    seen.sort();
    assert_eq!(seen, vec!["address", "email", "name", "phone"]);
    // A role that may read nothing is told so.
    let onb = t.token("onboarding", &["service"]).await;
    let (s, b) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}"),
            Some(&onb),
            Some("service"),
            None,
        )
        .await;
    assert_eq!((s, code(&b)), (StatusCode::FORBIDDEN, "policy_denied"));
    // Creating with one field the role may not write refuses the whole subject.
    let billing = t.token("billing", &["billing"]).await;
    let (s, b) = t
        .call(
            Method::POST,
            "/v1/subjects",
            Some(&billing),
            Some("billing"),
            Some(&json!({"fields": {"name": "x"}})),
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].clone()),
        (StatusCode::FORBIDDEN, json!("name"))
    );
});
