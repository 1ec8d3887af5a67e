//! `GET /metrics`: Prometheus text with the request, audit, cache, token, policy and
//! pool figures, and nothing in it that is a value, a subject id or a token.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    metrics_count_everything_and_show_no_personal_data,
    |db| async move {
        let t = spawn_app(db).await;
        let (name, phone, id_number) = ("金丝雀度量", "13987651234", "320106198808087773");
        let dsr = t.dsr().await;
        let id = t
            .create(
                &dsr,
                json!({"name": name, "phone": phone, "id_number": id_number}),
            )
            .await;
        let cs = t.token("customer_service", &["service"]).await;
        for _ in 0..3 {
            let (s, _) = t
                .call(
                    Method::GET,
                    &format!("/v1/subjects/{id}?fields=phone"),
                    Some(&cs),
                    Some("service"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK);
        }
        // A field the role may not read, a lookup by a value, a bad token.
        t.call(
            Method::GET,
            &format!("/v1/subjects/{id}?fields=id_number"),
            Some(&cs),
            Some("service"),
            None,
        )
        .await;
        t.call(
            Method::POST,
            "/v1/subjects/lookup",
            Some(&dsr),
            Some("dsr"),
            Some(&json!({"field": "id_number", "value": id_number})),
        )
        .await;
        let (s, _) = t
            .call(
                Method::GET,
                "/v1/subjects/nope",
                Some("pv_not_a_token"),
                Some("service"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        // Every operation of the API, with the canaries in its path, query and body.
        let admin = t.token("admin", &["admin"]).await;
        let body = json!({"fields": {"name": name, "phone": phone}, "field": "phone", "value": phone,
            "subject": id, "kind": "access", "case": "case-1", "notice_version": name, "channel": phone,
            "role": "auditor", "purposes": ["audit"], "ttl_seconds": 60, "status": "completed", "text": name});
        for (method, path) in crate::openapi::OPERATIONS {
            let concrete = path
                .replace("{id}", &id)
                .replace("{collection}", "service_tickets")
                .replace("{purpose}", "marketing")
                .replace("{name}", "accesses_by_role");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let with_query = format!("{concrete}?fields=phone&from=2026-01-01&q={phone}");
            for (token, purpose) in [(&admin, "admin"), (&dsr, "dsr")] {
                t.call(
                    m.clone(),
                    &with_query,
                    Some(token),
                    Some(purpose),
                    Some(&body),
                )
                .await;
            }
        }
        let resp = t
            .client
            .get(format!("{}/metrics", t.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let page = resp.text().await.unwrap();

        for expected in [
            r#"piivault_http_requests_total{route="/v1/subjects/{id}",method="GET",status="200"}"#,
            r#"piivault_http_requests_total{route="/v1/subjects/lookup",method="POST""#,
            "piivault_http_request_duration_seconds_bucket{",
            "piivault_audit_batch_events_bucket{",
            "piivault_audit_commit_duration_seconds_bucket{",
            "piivault_audit_queue_depth",
            r#"piivault_cache_lookups_total{cache="subjects",result="hit"}"#,
            r#"piivault_cache_lookups_total{cache="tokens",result="hit"}"#,
            r#"piivault_tokens_refused_total{code="token_invalid"}"#,
            r#"piivault_policy_refusals_total{role="customer_service"}"#,
            r#"piivault_db_pool_connections{state="in_use"}"#,
            "# HELP piivault_http_requests_total",
        ] {
            assert!(page.contains(expected), "{expected} missing from:\n{page}");
        }
        // Nothing personal, no ids, no tokens: not the values, not the subject, not the
        // token or its id, not a path with an id in it.
        let token_id = t.app.tokens.list().await.unwrap()[0].id.clone();
        for secret in [
            name,
            phone,
            id_number,
            id.as_str(),
            &id[4..],
            cs.as_str(),
            dsr.as_str(),
            token_id.as_str(),
            "pv_not_a_token",
            "/v1/subjects/sub_",
            "nope",
        ] {
            assert!(!page.contains(secret), "{secret:?} appears in /metrics");
        }
    }
);
