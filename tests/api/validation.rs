use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;

// Every rule of every built-in type, each with a bad value: 422, the field and the
// rule named, the value never echoed.
both_stores!(every_validation_rule_rejects_bad_values, |db| async move {
    let t = spawn_app(db).await;
    let tok = t.dsr().await;
    let long_name: String = "名".repeat(101);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("id_number", json!("11010519491231002"), "id_number_format"),
        ("id_number", json!("1101051949123100ZX"), "id_number_format"),
        (
            "id_number",
            json!("110105194912310021"),
            "id_number_checksum",
        ),
        ("id_number", json!("990105194912310028"), "id_number_region"),
        (
            "id_number",
            json!("110105194902300024"),
            "id_number_birth_date",
        ),
        (
            "id_number",
            json!("110105299901010027"),
            "id_number_birth_date",
        ),
        ("id_number", json!(11010519), "type"),
        ("phone", json!("12912345678"), "mobile_format"),
        ("phone", json!("1391234567"), "mobile_format"),
        ("phone", json!("+1 415 555 0100"), "mobile_format"),
        ("email", json!("ouyang.example.com"), "email_format"),
        ("email", json!("ouyang@localhost"), "email_format"),
        ("email", json!("ou yang@example.com"), "email_format"),
        ("bank_card", json!("6222021234567895"), "bank_card_luhn"),
        ("bank_card", json!("62220212"), "bank_card_format"),
        (
            "bank_card",
            json!("6222-0212-3456-789X"),
            "bank_card_format",
        ),
        ("birth_date", json!("1990-02-30"), "date_format"),
        ("birth_date", json!("31/12/1990"), "date_format"),
        ("birth_date", json!("2999-01-01"), "date_range"),
        ("name", json!(long_name), "too_long"),
        ("name", json!("   "), "empty"),
        ("name", json!("张三\u{0}"), "control_characters"),
        ("address", json!(["not", "text"]), "type"),
        ("tier", json!("diamond"), "enum_value"),
        ("tags", json!("vip"), "type"),
        ("tags", json!([1, 2]), "type"),
        ("tags", json!(["x".repeat(33)]), "too_long"),
        ("nickname", json!("Moon"), "unknown_field"),
        ("name", Value::Null, "required"),
    ];
    for (field, value, rule) in &cases {
        let body = json!({ "fields": { *field: value } });
        let (status, answer) = t
            .call(
                Method::POST,
                "/v1/subjects",
                Some(&tok),
                Some("dsr"),
                Some(&body),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field} {value}: {answer}"
        );
        assert_eq!(
            answer["error"]["code"],
            json!(rule),
            "{field} {value}: {answer}"
        );
        assert_eq!(answer["error"]["field"], json!(field), "{answer}");
        if let Some(s) = value.as_str() {
            if s.trim().len() > 3 {
                assert_no_value(&answer, s);
            }
        }
    }
    // The same rules apply to corrections; a refused correction changes nothing.
    let id = t.create(&tok, full_subject()).await;
    let (status, answer) = t
        .call(
            Method::PATCH,
            &format!("/v1/subjects/{id}"),
            Some(&tok),
            Some("dsr"),
            Some(&json!({"fields": {"phone": "13700001111", "bank_card": "6222021234567895"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["error"]["code"], "bank_card_luhn");
    let (_, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}?fields=phone"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(body["fields"]["phone"]["value"], "13912345678");
    // An empty field set is refused.
    let (status, answer) = t
        .call(
            Method::POST,
            "/v1/subjects",
            Some(&tok),
            Some("dsr"),
            Some(&json!({"fields": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["error"]["code"], "empty");
});

both_stores!(malformed_and_oversized_bodies, |db| async move {
    let t = spawn_app_with(
        db,
        Options {
            max_body_bytes: 4096,
            ..Default::default()
        },
    )
    .await;
    let tok = t.dsr().await;
    let url = format!("{}/v1/subjects", t.base);
    // Not JSON: 400, and the text is not echoed.
    let resp = t
        .client
        .post(&url)
        .bearer_auth(&tok)
        .header("X-Purpose", "dsr")
        .header("content-type", "application/json")
        .body("{\"fields\": {\"phone\": 13912345678")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_body");
    assert_no_value(&body, "13912345678");
    // Wrong shape: 400.
    let (status, body) = t
        .call(
            Method::POST,
            "/v1/subjects",
            Some(&tok),
            Some("dsr"),
            Some(&json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Larger than the limit: 413.
    let big = json!({"fields": {"address": "路".repeat(5000)}});
    let (status, body) = t
        .call(
            Method::POST,
            "/v1/subjects",
            Some(&tok),
            Some("dsr"),
            Some(&big),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");

    // Record documents: must be objects and within the collection's size.
    let id = t.create(&tok, json!({"name": "赵六"})).await;
    let path = format!("/v1/subjects/{id}/records/payments");
    let (status, body) = t
        .call(
            Method::POST,
            &path,
            Some(&tok),
            Some("dsr"),
            Some(&json!([1, 2])),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "document_type");
    let t2 = spawn_app(db).await;
    let tok2 = t2.dsr().await;
    let id2 = t2.create(&tok2, json!({"name": "赵六"})).await;
    let huge = json!({"note": "x".repeat(17000)});
    let (status, body) = t2
        .call(
            Method::POST,
            &format!("/v1/subjects/{id2}/records/payments"),
            Some(&tok2),
            Some("dsr"),
            Some(&huge),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "document_too_large");
    // Records for a subject that does not exist.
    let (status, _) = t
        .call(
            Method::POST,
            "/v1/subjects/sub_00000000000000000000000000000000/records/payments",
            Some(&tok),
            Some("dsr"),
            Some(&json!({"a": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
});

// Query strings and paths that cannot be read are refused like bodies: JSON with a stable
// code (found by the schemathesis sweep, which saw axum's plain-text answers), never
// echoing what was sent.
both_stores!(malformed_query_strings_and_paths, |db| async move {
    let t = spawn_app(db).await;
    let dsr = t.dsr().await;
    let id = t.create(&dsr, json!({"name": "查询"})).await;
    for path in [
        "/v1/requests?overdue=maybe-canary-7a1".to_owned(),
        format!("/v1/subjects/{id}?canary_param_7a1=1"),
        format!("/v1/subjects/{id}?fields=name&fields=phone"),
    ] {
        let resp = t
            .client
            .get(format!("{}{path}", t.base))
            .bearer_auth(&dsr)
            .header("X-Purpose", "dsr")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "malformed_query", "{path}: {body}");
        assert!(!body.to_string().contains("canary"), "{body}");
    }
    // A path segment that is not UTF-8 once decoded.
    let resp = t
        .client
        .get(format!("{}/v1/subjects/%FF%FE", t.base))
        .bearer_auth(&dsr)
        .header("X-Purpose", "dsr")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_path", "{body}");
});

// A body far over the limit still gets its 413: the server reads (and drops) the rest
// before answering, so the client is not cut off mid-upload with a reset connection.
both_stores!(an_oversized_body_gets_its_413, |db| async move {
    let t = spawn_app(db).await;
    let dsr = t.dsr().await;
    let body = format!(r#"{{"fields": {{"name": "{}"}}}}"#, "x".repeat(4 << 20));
    for _ in 0..5 {
        let resp = t
            .client
            .post(format!("{}/v1/subjects", t.base))
            .bearer_auth(&dsr)
            .header("X-Purpose", "dsr")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("an answer, not a broken connection");
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "payload_too_large");
    }
    // A body within the limit sent with a bad token, or to a role the policy refuses:
    // the refusal comes before any handler reads the body, and still arrives whole.
    let body = format!(r#"{{"fields": {{"name": "{}"}}}}"#, "x".repeat(200_000));
    let auditor = t.token("auditor", &["audit"]).await;
    for (tok, purpose, status) in [
        ("pvt_not_a_token", "dsr", StatusCode::UNAUTHORIZED),
        (auditor.as_str(), "audit", StatusCode::FORBIDDEN),
    ] {
        for _ in 0..5 {
            let resp = t
                .client
                .post(format!("{}/v1/subjects", t.base))
                .bearer_auth(tok)
                .header("X-Purpose", purpose)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .expect("an answer, not a broken connection");
            assert!(
                resp.status() == status || resp.status() == StatusCode::BAD_REQUEST,
                "{}",
                resp.status()
            );
            resp.json::<Value>().await.unwrap();
        }
    }
});

// "Today" is the vault's clock, here stopped at noon on 29 February 2024: a birth date or
// an ID number's birth date after it is refused, and a child under 14 needs a guardian's
// consent, until the clock moves on a day.
both_stores!(
    dates_are_judged_by_the_vaults_clock_on_29_february,
    |db| async move {
        // 2024-02-29T12:00:00Z.
        let clock = piivault::clock::Clock::manual(1_709_208_000_000);
        let t = spawn_app_with(
            db,
            Options {
                clock: Some(clock.clone()),
                ..Default::default()
            },
        )
        .await;
        let create = |tok: String, fields: Value| {
            let t = &t;
            async move {
                t.call(
                    Method::POST,
                    "/v1/subjects",
                    Some(&tok),
                    Some("dsr"),
                    Some(&json!({ "fields": fields })),
                )
                .await
            }
        };
        let refused = |(s, b): (StatusCode, Value), field: &str, rule: &str| {
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
            assert_eq!(b["error"]["field"], field, "{b}");
            assert_eq!(b["error"]["code"], rule, "{b}");
        };
        let dsr = t.dsr().await;
        assert_eq!(
            create(dsr.clone(), json!({"birth_date": "2024-02-29"}))
                .await
                .0,
            StatusCode::CREATED
        );
        assert_eq!(
            create(
                dsr.clone(),
                json!({"id_number": id_number_born("20240229", 1)})
            )
            .await
            .0,
            StatusCode::CREATED
        );
        refused(
            create(dsr.clone(), json!({"birth_date": "2024-03-01"})).await,
            "birth_date",
            "date_range",
        );
        refused(
            create(
                dsr.clone(),
                json!({"id_number": id_number_born("20240301", 2)}),
            )
            .await,
            "id_number",
            "id_number_birth_date",
        );
        // Turns 14 on 1 March 2024: still a child today.
        let child = t
            .create(&dsr, json!({"birth_date": "2010-03-01", "tier": "basic"}))
            .await;
        let (s, _) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &child,
            "marketing",
            json!({"notice_version": "2024-01"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let read = |tok: String| {
            let (t, path) = (&t, format!("/v1/subjects/{child}?fields=tier"));
            async move {
                t.call(Method::GET, &path, Some(&tok), Some("marketing"), None)
                    .await
            }
        };
        let mkt = t.token("marketing", &["marketing"]).await;
        let (s, b) = read(mkt).await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("guardian_consent_missing")),
            "{b}"
        );

        // A day later (tokens issued before have expired with the clock).
        assert!(clock.advance(std::time::Duration::from_secs(86_400)));
        let dsr = t.dsr().await;
        assert_eq!(
            create(dsr.clone(), json!({"birth_date": "2024-03-01"}))
                .await
                .0,
            StatusCode::CREATED
        );
        assert_eq!(
            create(dsr, json!({"id_number": id_number_born("20240301", 2)}))
                .await
                .0,
            StatusCode::CREATED
        );
        let mkt = t.token("marketing", &["marketing"]).await;
        let (s, b) = read(mkt).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["fields"]["tier"]["value"], "basic");
    }
);
