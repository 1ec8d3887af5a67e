use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_stores;
use crate::helpers::*;

both_stores!(bad_tokens_get_401, |db| async move {
    // Tokens are issued and checked by a clock the test moves: expiry is tested by
    // moving time past it, not by sleeping and racing the machine.
    let clock = piivault::clock::Clock::manual(piivault::store::now_ms());
    let t = spawn_app_with(
        db,
        Options {
            clock: Some(clock.clone()),
            ..Default::default()
        },
    )
    .await;
    let id = t.create(&t.dsr().await, json!({"name": "钱七"})).await;
    let path = format!("/v1/subjects/{id}");
    let good = t.dsr().await;

    let (status, body) = t.call(Method::GET, &path, None, Some("dsr"), None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("token_missing"))
    );

    // Wrong secret of the right shape, wrong shape, and a different scheme.
    let forged = format!("pvt_{}", "A".repeat(43));
    for bad in [
        forged.as_str(),
        "pvt_short",
        "not-a-token",
        &good[..good.len() - 1],
    ] {
        let (status, body) = t
            .call(Method::GET, &path, Some(bad), Some("dsr"), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(body["error"]["code"], "token_invalid");
    }
    let resp = t
        .client
        .get(format!("{}{}", t.base, path))
        .header("Authorization", format!("Basic {good}"))
        .header("X-Purpose", "dsr")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Expired: valid up to its last millisecond (and cached as valid), refused after.
    let (_, short) = t
        .token_with_ttl("dsr_handler", &["dsr"], Duration::from_secs(60))
        .await;
    let (status, _) = t
        .call(Method::GET, &path, Some(&short), Some("dsr"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    clock.advance(Duration::from_millis(59_999));
    let (status, _) = t
        .call(Method::GET, &path, Some(&short), Some("dsr"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    clock.advance(Duration::from_millis(1));
    let (status, body) = t
        .call(Method::GET, &path, Some(&short), Some("dsr"), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("token_expired"))
    );

    // Revoked: works before, refused right after.
    let (tok_id, secret) = t
        .token_with_ttl("dsr_handler", &["dsr"], Duration::from_secs(600))
        .await;
    let (status, _) = t
        .call(Method::GET, &path, Some(&secret), Some("dsr"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(t
        .app
        .tokens
        .revoke(
            &tok_id,
            piivault::audit::Event::new("test", "operator", "admin", "test", "token.revoke")
        )
        .await
        .unwrap());
    assert!(!t
        .app
        .tokens
        .revoke(
            &tok_id,
            piivault::audit::Event::new("test", "operator", "admin", "test", "token.revoke")
        )
        .await
        .unwrap());
    let (status, body) = t
        .call(Method::GET, &path, Some(&secret), Some("dsr"), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("token_revoked"))
    );

    // The good token still works; 401s come before anything about the subject.
    let (status, _) = t
        .call(Method::GET, &path, Some(&good), Some("dsr"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = t
        .call(
            Method::GET,
            "/v1/subjects/sub_00000000000000000000000000000000",
            Some("nope"),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
});

both_stores!(purpose_is_required_and_checked, |db| async move {
    let t = spawn_app(db).await;
    let tok = t.dsr().await;
    let id = t.create(&tok, json!({"name": "孙八"})).await;
    let path = format!("/v1/subjects/{id}");
    let (status, body) = t.call(Method::GET, &path, Some(&tok), None, None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("purpose_missing"))
    );
    let (status, body) = t
        .call(Method::GET, &path, Some(&tok), Some("marketing"), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("purpose_not_allowed"))
    );
    // Admin and auditor tokens never reach personal data.
    for (role, purpose) in [("admin", "admin"), ("auditor", "audit")] {
        let other = t.token(role, &[purpose]).await;
        let (status, body) = t
            .call(Method::GET, &path, Some(&other), Some(purpose), None)
            .await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("policy_denied")),
            "{role}"
        );
    }
});

both_stores!(
    token_secrets_are_stored_only_as_keyed_hashes,
    |db| async move {
        let t = spawn_app(db).await;
        let (id, secret) = t
            .token_with_ttl("billing", &["billing"], Duration::from_secs(60))
            .await;
        let raw = t.raw().await;
        let (hash,): (Vec<u8>,) = sqlx::query_as("SELECT secret_hash FROM tokens WHERE id = $1")
            .bind(&id)
            .fetch_one(&raw)
            .await
            .unwrap();
        assert_eq!(hash.len(), 32);
        use sha2::Digest;
        assert_ne!(
            hash,
            sha2::Sha256::digest(secret.as_bytes()).to_vec(),
            "hash must be keyed"
        );
        assert!(!String::from_utf8_lossy(&hash).contains(&secret[4..12]));
        // Bad issue requests are refused with a reason.
        for (role, purposes, ttl) in [
            ("root", vec!["dsr"], 60),
            ("billing", vec![], 60),
            ("billing", vec!["fun"], 60),
            ("billing", vec!["billing"], 0),
            ("billing", vec!["dsr"], 60),
            ("billing", vec!["billing"], 91 * 86400),
        ] {
            let err = t
                .app
                .tokens
                .issue(
                    piivault::authz::IssueRequest {
                        role: role.into(),
                        purposes: purposes.iter().map(|p| p.to_string()).collect(),
                        ttl: Duration::from_secs(ttl),
                        description: String::new(),
                        created_by: "test".into(),
                    },
                    &t.app.policy.current(),
                    piivault::audit::Event::new("test", "operator", "admin", "test", "token.issue"),
                )
                .await;
            assert!(err.is_err(), "{role} {purposes:?} {ttl}");
        }
    }
);
