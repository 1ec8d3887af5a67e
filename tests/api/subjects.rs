use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_stores;
use crate::helpers::*;

both_stores!(round_trip_every_field_type_and_records, |db| async move {
    let t = spawn_app(db).await;
    let tok = t.dsr().await;
    let id = t
        .create(
            &tok,
            json!({
                "name": " 欧阳明月 ",
                "id_number": "11010519491231002x",
                "phone": "+86 139-1234-5678",
                "email": "OuYang.MingYue@Example.com",
                "address": "上海市浦东新区世纪大道100号",
                "birth_date": "1949-12-31",
                "bank_card": "6222 0212 3456 7894",
                "tags": ["vip", "churn_risk", "vip"],
                "tier": "gold"
            }),
        )
        .await;
    assert!(id.starts_with("sub_") && id.len() == 36);
    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], json!(id));
    let expected = json!({
        "name": "欧阳明月",
        "id_number": "11010519491231002X",
        "phone": "13912345678",
        "email": "ouyang.mingyue@example.com",
        "address": "上海市浦东新区世纪大道100号",
        "birth_date": "1949-12-31",
        "bank_card": "6222021234567894",
        "tags": ["churn_risk", "vip"],
        "tier": "gold"
    });
    for (name, value) in expected.as_object().unwrap() {
        assert_eq!(
            body["fields"][name],
            json!({ "value": value, "masked": false }),
            "{name}"
        );
    }

    // Only the fields asked for.
    let (_, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}?fields=phone,tier"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(body["fields"].as_object().unwrap().len(), 2);

    // Records: two documents, listed oldest first, other collections empty.
    let pay1 =
        json!({"amount": "199.00", "currency": "CNY", "card_last4": "7894", "at": "2026-11-01"});
    let pay2 = json!({"amount": "-20.00", "currency": "CNY", "refund": true, "items": [1, 2, 3]});
    let mut rec_ids = Vec::new();
    for doc in [&pay1, &pay2] {
        let (status, body) = t
            .call(
                Method::POST,
                &format!("/v1/subjects/{id}/records/payments"),
                Some(&tok),
                Some("dsr"),
                Some(doc),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        rec_ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}/records/payments"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["id"], json!(rec_ids[0]));
    assert_eq!(records[0]["document"], pay1);
    assert_eq!(records[1]["document"], pay2);
    let (_, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}/records/service_tickets"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(body["records"], json!([]));
    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}/records/diary"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "collection_not_found");

    // Correction: a new phone, tags removed; the blind index follows.
    let (status, body) = t
        .call(
            Method::PATCH,
            &format!("/v1/subjects/{id}"),
            Some(&tok),
            Some("dsr"),
            Some(&json!({"fields": {"phone": "13700001111", "tags": null}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(body["fields"]["phone"]["value"], "13700001111");
    assert!(body["fields"].get("tags").is_none());
    let lookup = |value: &str| json!({"field": "phone", "value": value});
    let (_, body) = t
        .call(
            Method::POST,
            "/v1/subjects/lookup",
            Some(&tok),
            Some("dsr"),
            Some(&lookup("13700001111")),
        )
        .await;
    assert_eq!(body["ids"], json!([id]));
    let (_, body) = t
        .call(
            Method::POST,
            "/v1/subjects/lookup",
            Some(&tok),
            Some("dsr"),
            Some(&lookup("13912345678")),
        )
        .await;
    assert_eq!(body["ids"], json!([]));
    // The same value written again stays findable.
    let (status, _) = t
        .call(
            Method::PATCH,
            &format!("/v1/subjects/{id}"),
            Some(&tok),
            Some("dsr"),
            Some(&json!({"fields": {"phone": "13700001111", "email": "again@example.com"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = t
        .call(
            Method::POST,
            "/v1/subjects/lookup",
            Some(&tok),
            Some("dsr"),
            Some(&lookup("13700001111")),
        )
        .await;
    assert_eq!(body["ids"], json!([id]));

    // Unknown subject, malformed id.
    for path in [
        "/v1/subjects/sub_00000000000000000000000000000000",
        "/v1/subjects/not-an-id",
    ] {
        let (status, body) = t
            .call(Method::GET, path, Some(&tok), Some("dsr"), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "subject_not_found");
    }
});

both_stores!(masking_for_each_type, |db| async move {
    let t = spawn_app(db).await;
    let tok = t.dsr().await;
    let id = t.create(&tok, full_subject()).await;
    let all = "name,id_number,phone,email,address,birth_date,bank_card,tags,tier";
    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}?masked={all}"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expected = json!({
        "name": "欧***",
        "id_number": "110***********002X",
        "phone": "139****5678",
        "email": "o***@example.com",
        "address": "上海市浦东新*********",
        "birth_date": "1949-**-**",
        "bank_card": "************7894",
        "tags": ["***", "***"],
        "tier": "gold"
    });
    for (name, value) in expected.as_object().unwrap() {
        assert_eq!(
            body["fields"][name],
            json!({ "value": value, "masked": true }),
            "{name}"
        );
    }
    // Masked output never holds the clear value.
    for clear in [
        "欧阳明月",
        "11010519491231002X",
        "13912345678",
        "6222021234567894",
        "世纪大道",
    ] {
        assert_no_value(&body, clear);
    }
    // Masking a field that is not classified is an error, not silence.
    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}?masked=nickname"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "unknown_field");
});

both_stores!(lookup_by_id_number_and_phone, |db| async move {
    let t = spawn_app(db).await;
    let tok = t.dsr().await;
    let a = t.create(&tok, full_subject()).await;
    let b = t
        .create(
            &tok,
            json!({"name": "李四", "phone": "13912345678", "id_number": "440308199001011239"}),
        )
        .await;
    let find = |field: &str, value: &str| json!({"field": field, "value": value});
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    let cases = [
        (find("id_number", "11010519491231002x"), json!([a])),
        (find("id_number", "440308199001011239"), json!([b])),
        (find("phone", "+86 139 1234 5678"), json!(both)),
        (find("email", "OUYANG.MINGYUE@example.com"), json!([a])),
        (find("phone", "13800000000"), json!([])),
    ];
    for (query, ids) in cases {
        let (status, body) = t
            .call(
                Method::POST,
                "/v1/subjects/lookup",
                Some(&tok),
                Some("dsr"),
                Some(&query),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["ids"], ids, "{query}");
    }
    // Not searchable, unknown, invalid value: 422 without the value.
    for (query, code) in [
        (find("name", "欧阳明月"), "not_searchable"),
        (find("nickname", "x"), "unknown_field"),
        (
            find("id_number", "110105194912310021"),
            "id_number_checksum",
        ),
    ] {
        let (status, body) = t
            .call(
                Method::POST,
                "/v1/subjects/lookup",
                Some(&tok),
                Some("dsr"),
                Some(&query),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], code);
        assert_no_value(&body, query["value"].as_str().unwrap());
    }
});

both_stores!(data_keys_rotate_at_their_usage_bound, |db| async move {
    let t = spawn_app_with(
        db,
        Options {
            key_usage_limit: Some(3),
            ..Default::default()
        },
    )
    .await;
    let tok = t.dsr().await;
    let id = t
        .create(&tok, json!({"name": "王五", "phone": "13512345678"}))
        .await;
    for phone in ["13512340001", "13512340002", "13512340003"] {
        let (status, _) = t
            .call(
                Method::PATCH,
                &format!("/v1/subjects/{id}"),
                Some(&tok),
                Some("dsr"),
                Some(&json!({"fields": {"phone": phone}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = t
        .call(
            Method::POST,
            &format!("/v1/subjects/{id}/records/feedback"),
            Some(&tok),
            Some("dsr"),
            Some(&json!({"score": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let raw = t.raw().await;
    let versions: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT version, encryptions FROM subject_keys WHERE subject_id = $1 ORDER BY version",
    )
    .bind(&id)
    .fetch_all(&raw)
    .await
    .unwrap();
    assert!(versions.len() >= 2, "{versions:?}");
    assert!(versions.iter().all(|(_, n)| *n <= 3), "{versions:?}");
    // Values sealed under old and new DEK versions all read back.
    let (_, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(body["fields"]["name"]["value"], "王五");
    assert_eq!(body["fields"]["phone"]["value"], "13512340003");
    let (_, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}/records/feedback"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(body["records"][0]["document"], json!({"score": 5}));
});

both_stores!(
    a_lookup_is_answered_and_audited_a_page_at_a_time,
    |db| async move {
        let t = spawn_app(db).await;
        let tok = t.dsr().await;
        let mut created = Vec::new();
        for i in 0..5 {
            created.push(
                t.create(
                    &tok,
                    json!({"name": format!("总机{i}"), "phone": "13611112222"}),
                )
                .await,
            );
        }
        created.sort();
        let lookup = |body: serde_json::Value| {
            let t = &t;
            let tok = &tok;
            async move {
                t.call(
                    Method::POST,
                    "/v1/subjects/lookup",
                    Some(tok),
                    Some("dsr"),
                    Some(&body),
                )
                .await
            }
        };
        // Pages of two: every subject once, in id order; each page audits its own subjects.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let before = t.events().await.len();
            let (s, b) = lookup(
                json!({"field": "phone", "value": "13611112222", "limit": 2, "after": after}),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            let ids: Vec<String> = b["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            let events = t.events().await[before..].to_vec();
            let audited: Vec<String> = events
                .iter()
                .filter(|e| e.action == "lookup")
                .map(|e| e.subject.clone().unwrap())
                .collect();
            assert_eq!(audited, ids, "one lookup event per subject in this page");
            seen.extend(ids);
            pages += 1;
            match b["next"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => break,
            }
            assert!(pages < 10, "the pages end");
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, created);
        // The default page holds them all, with no next page.
        let (s, b) = lookup(json!({"field": "phone", "value": "13611112222"})).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["ids"].as_array().unwrap().len(), 5);
        assert!(b["next"].is_null());
        // Bad pages are refused, naming the parameter and the rule.
        for (body, field, code) in [
            (
                json!({"field": "phone", "value": "13611112222", "limit": 0}),
                "limit",
                "out_of_range",
            ),
            (
                json!({"field": "phone", "value": "13611112222", "limit": 1001}),
                "limit",
                "out_of_range",
            ),
            (
                json!({"field": "phone", "value": "13611112222", "after": "not-an-id"}),
                "after",
                "invalid",
            ),
        ] {
            let (s, b) = lookup(body).await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
            assert_eq!(b["error"]["field"], field, "{b}");
            assert_eq!(b["error"]["code"], code, "{b}");
        }
        let (s, b) =
            lookup(json!({"field": "phone", "value": "13611112222", "limit": "ten"})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    }
);

both_stores!(
    a_correction_is_audited_with_keyed_digests_of_the_old_and_new_values,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let id = t
            .create(&dsr, json!({"name": "更正", "phone": "13911112222"}))
            .await;
        let correct = |fields: serde_json::Value| {
            let (t, dsr, id) = (&t, dsr.clone(), id.clone());
            async move {
                let (s, b) = t
                    .call(
                        Method::PATCH,
                        &format!("/v1/subjects/{id}"),
                        Some(&dsr),
                        Some("dsr"),
                        Some(&json!({ "fields": fields })),
                    )
                    .await;
                assert_eq!(s, StatusCode::OK, "{b}");
                // The newest correct event per field: (old, new) digests.
                let events = t.events().await;
                let digests = |field: &str| {
                    let e = events
                        .iter()
                        .rev()
                        .find(|e| e.action == "correct" && e.field.as_deref() == Some(field))?;
                    let target = e.target.clone().unwrap();
                    let (old, new) = target.split_once(',').unwrap();
                    Some((
                        old.strip_prefix("old=").unwrap().to_owned(),
                        new.strip_prefix("new=").unwrap().to_owned(),
                    ))
                };
                (digests("phone"), digests("email"))
            }
        };
        let (a, b) = correct(json!({"phone": "13933334444"})).await.0.unwrap();
        let (phone, email) =
            correct(json!({"phone": "13911112222", "email": "x@example.com"})).await;
        let ((b2, a2), (no_email, email)) = (phone.unwrap(), email.unwrap());
        // Each digest names its key version and is 128 bits; the old value's digest of one
        // correction is the new value's of the one before; equal values, equal digests.
        for d in [&a, &b, &email] {
            assert!(d.starts_with("bi1:") && d.len() == 4 + 32, "{d}");
        }
        assert_ne!(a, b);
        assert_eq!(b, b2);
        assert_eq!(a, a2);
        assert_eq!(no_email, "-", "a field the subject did not have");
        // Removing a field: its new digest is "-".
        let (email_before, removed) = correct(json!({"email": null})).await.1.unwrap();
        assert_eq!((email_before, removed.as_str()), (email, "-"));
        // The digests are not the values, nor their blind-index entries.
        for e in t.events().await {
            let target = e.target.unwrap_or_default();
            for value in ["13911112222", "13933334444", "x@example.com"] {
                assert!(!target.contains(value), "{target}");
            }
        }
        let (ok, said) = t.cli(&["audit", "verify"]);
        assert!(ok, "{said}");
    }
);
