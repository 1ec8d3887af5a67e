use reqwest::{Method, StatusCode};
use serde_json::json;

use piivault::crypto::MasterKeySource;
use piivault::ServeOptions;

use crate::both_stores;
use crate::helpers::*;

both_stores!(health_request_ids_and_unknown_routes, |db| async move {
    let t = spawn_app(db).await;
    for path in ["/healthz", "/readyz"] {
        let resp = t
            .client
            .get(format!("{}{path}", t.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let rid = resp
            .headers()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(rid.starts_with("req_"));
        assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
    }
    let (status, body) = t.call(Method::GET, "/v1/nothing", None, None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
});

both_stores!(reopening_checks_the_master_key, |db| async move {
    let mut t = spawn_app(db).await;
    let tok = t.dsr().await;
    let id = t.create(&tok, json!({"name": "郑十一"})).await;
    t.stop().await;

    // The same key file opens the vault again and reads the data.
    let again = piivault::open(&t.settings).await.expect("reopens");
    assert!(!again.initialised_now);
    let sid = piivault::vault::SubjectId::parse(&id).unwrap();
    let fields = again
        .vault
        .read(&sid, &[("name".into(), piivault::vault::View::Clear)])
        .await
        .unwrap();
    assert_eq!(fields["name"].value, json!("郑十一"));
    again.store.close().await;

    // Another key is refused, naming the problem.
    let mut wrong = settings(t.dir.path(), t.database_url.clone());
    wrong.master =
        MasterKeySource::Inline(piivault::crypto::MasterKeyRing::generate_key_file_text());
    let err = piivault::open(&wrong).await.unwrap_err();
    assert!(format!("{err:#}").contains("does not match"), "{err:#}");

    // A missing key file is not silently replaced by a new key.
    let mut missing = settings(t.dir.path(), t.database_url.clone());
    missing.master = MasterKeySource::File {
        path: t.dir.path().join("elsewhere.key"),
        create: true,
    };
    let err = piivault::open(&missing).await.unwrap_err();
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
    assert!(!t.dir.path().join("elsewhere.key").exists());
});

both_stores!(passphrase_master_key, |db| async move {
    let dir = tempfile::tempdir().unwrap();
    let (url, pg) = match db {
        Db::Sqlite => (
            format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display()),
            None,
        ),
        Db::Postgres => {
            let (u, n) = create_pg_database().await;
            (u, Some(n))
        }
    };
    let mut s = settings(dir.path(), url.clone());
    s.master = MasterKeySource::Passphrase("correct horse battery staple".to_owned().into());
    let app = piivault::open(&s).await.expect("opens with a passphrase");
    assert!(app.initialised_now);
    let id = piivault::vault::SubjectId::generate();
    app.vault
        .create(
            &id,
            json!({"name": "冯十二"}).as_object().unwrap(),
            vec![
                piivault::audit::Event::new("test", "operator", "dsr", "test", "create")
                    .subject(id.as_str()),
            ],
        )
        .await
        .unwrap();
    app.store.close().await;
    assert!(
        !dir.path().join("master.key").exists(),
        "no key file with a passphrase"
    );

    let app = piivault::open(&s)
        .await
        .expect("reopens with the same passphrase");
    let fields = app
        .vault
        .read(&id, &[("name".into(), piivault::vault::View::Clear)])
        .await
        .unwrap();
    assert_eq!(fields["name"].value, json!("冯十二"));
    app.store.close().await;

    s.master = MasterKeySource::Passphrase("incorrect horse battery staple".to_owned().into());
    let err = piivault::open(&s).await.unwrap_err();
    assert!(format!("{err:#}").contains("does not match"), "{err:#}");
    if let Some(name) = pg {
        drop_pg_database(&name).await;
    }
});

#[tokio::test]
async fn plain_http_only_on_loopback() {
    let t = spawn_app(Db::Sqlite).await;
    let mut opts = ServeOptions::new("0.0.0.0:0".parse().unwrap());
    opts.plain_http = true;
    let refused = piivault::start(&t.app, &t.settings, &opts).await;
    assert!(refused.is_err());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    let server = piivault::start(&t.app, &t.settings, &opts)
        .await
        .expect("plain HTTP on loopback");
    assert_eq!(server.scheme, "http");
    let body = reqwest::get(format!("http://127.0.0.1:{}/healthz", server.addr.port()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("ok"));
    server.shutdown().await.unwrap();
    // The HTTPS listener refuses a client that does not trust the vault's CA.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("{}/healthz", t.base))
        .send()
        .await
        .is_err());
}
