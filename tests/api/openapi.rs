//! `GET /openapi.json`: generated from the same handlers that serve the routes; checked
//! against the running server: every documented operation is served, none is missing.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::both_stores;
use crate::helpers::*;

/// Every operation the API serves.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/v1/subjects"),
    ("post", "/v1/subjects/lookup"),
    ("get", "/v1/subjects/{id}"),
    ("patch", "/v1/subjects/{id}"),
    ("delete", "/v1/subjects/{id}"),
    ("post", "/v1/subjects/{id}/records/{collection}"),
    ("get", "/v1/subjects/{id}/records/{collection}"),
    ("get", "/v1/subjects/{id}/consents"),
    ("put", "/v1/subjects/{id}/consents/{purpose}"),
    ("delete", "/v1/subjects/{id}/consents/{purpose}"),
    ("get", "/v1/subjects/{id}/export"),
    ("put", "/v1/subjects/{id}/hold"),
    ("delete", "/v1/subjects/{id}/hold"),
    ("get", "/v1/requests"),
    ("post", "/v1/requests"),
    ("get", "/v1/requests/{id}"),
    ("patch", "/v1/requests/{id}"),
    ("post", "/v1/tokens"),
    ("get", "/v1/tokens"),
    ("get", "/v1/keys"),
    ("post", "/v1/keys/rotations"),
    ("delete", "/v1/tokens/{id}"),
    ("get", "/v1/audit/verify"),
    ("get", "/v1/audit/public-key"),
    ("get", "/v1/audit/reports"),
    ("get", "/v1/audit/reports/{name}"),
    ("post", "/v1/subjects/{id}/provisions"),
    ("get", "/v1/recipients"),
    ("get", "/v1/deletion-notices"),
    ("post", "/v1/deletion-notices/{id}/delivered"),
    ("get", "/v1/transfers/abroad"),
    ("get", "/v1/subjects/{id}/processing"),
    ("get", "/v1/subjects/{id}/access-history"),
    ("get", "/v1/subjects/{id}/explanation"),
    ("get", "/v1/inventory"),
    ("get", "/v1/pipia"),
    ("put", "/v1/subjects/{id}/deceased"),
    ("put", "/v1/subjects/{id}/instructions"),
    ("post", "/v1/exports"),
    ("get", "/v1/exports/{id}"),
    ("post", "/v1/exports/{id}/approve"),
];

both_stores!(the_openapi_document_matches_the_router, |db| async move {
    let t = spawn_app(db).await;
    let resp = t
        .client
        .get(format!("{}/openapi.json", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.clone(), path.clone()));
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}: no responses");
            if path.starts_with("/v1/") {
                // Behind a token: the purpose header, and the refusals with their codes.
                let params = op["parameters"].as_array().unwrap();
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == "X-Purpose" && p["in"] == "header"),
                    "{method} {path}: no X-Purpose"
                );
                for status in ["401", "403", "503"] {
                    let r = &responses[status];
                    assert!(
                        r["description"].as_str().unwrap().contains('`'),
                        "{method} {path} {status}: no codes listed"
                    );
                    assert!(
                        r["content"]["application/json"]["schema"]["$ref"]
                            .as_str()
                            .is_some_and(|s| s.ends_with("/ErrorBody")),
                        "{method} {path} {status}: {r}"
                    );
                }
                assert!(
                    op.get("security").is_none(),
                    "{method} {path}: security overridden"
                );
            } else {
                assert_eq!(op["security"], serde_json::json!([{}]), "{method} {path}");
            }
            for (name, p) in params_in_path(path).iter().zip(0..) {
                let _ = p;
                assert!(
                    op["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|q| q["name"] == *name && q["in"] == "path"),
                    "{method} {path}: path parameter {name} undocumented"
                );
            }
        }
    }
    let expected: BTreeSet<_> = OPERATIONS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, expected,
        "documented operations differ from the API's"
    );

    // None invented: every documented operation reaches a handler (not the fallback's
    // 404 `not_found`, not 405), with an admin token and made-up ids.
    let admin = t.token("admin", &["admin"]).await;
    for (method, path) in &expected {
        let concrete = path
            .replace("{id}", "sub_00000000000000000000000000000000")
            .replace("{collection}", "service_tickets")
            .replace("{purpose}", "marketing")
            .replace("{name}", "accesses_by_role");
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, body) = t
            .call(m, &concrete, Some(&admin), Some("admin"), None)
            .await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !(status == StatusCode::NOT_FOUND && body["error"]["code"] == "not_found"),
            "{method} {path} is documented but not served"
        );
    }
    // And an undocumented path is the fallback.
    let (status, body) = t
        .call(
            Method::GET,
            "/v1/nothing",
            Some(&admin),
            Some("admin"),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
});

fn params_in_path(path: &str) -> Vec<String> {
    path.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(n, _)| n.to_owned()))
        .collect()
}

/// Routes are registered only through `utoipa_axum::routes!` (handler and its
/// documentation together): a plain `.route(` in the HTTP layer would serve a route the
/// document does not show.
#[test]
fn no_route_is_registered_around_the_document() {
    for (file, text) in [
        ("audit.rs", include_str!("../../src/http/audit.rs")),
        ("consents.rs", include_str!("../../src/http/consents.rs")),
        ("dsr.rs", include_str!("../../src/http/dsr.rs")),
        ("health.rs", include_str!("../../src/http/health.rs")),
        ("mod.rs", include_str!("../../src/http/mod.rs")),
        ("subjects.rs", include_str!("../../src/http/subjects.rs")),
        ("tokens.rs", include_str!("../../src/http/tokens.rs")),
    ] {
        assert!(
            !text.contains(".route("),
            "src/http/{file} registers a route with .route("
        );
        assert!(
            !text.contains("axum::routing"),
            "src/http/{file} uses axum::routing"
        );
    }
}
