use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_stores;
use crate::helpers::*;

both_stores!(erasure_destroys_the_key_and_every_row, |db| async move {
    let t = spawn_app(db).await;
    let tok = t.dsr().await;
    let gone = t.create(&tok, full_subject()).await;
    let kept = t
        .create(&tok, json!({"name": "吴十", "phone": "13912345678"}))
        .await;
    let (status, _) = t
        .call(
            Method::POST,
            &format!("/v1/subjects/{gone}/records/service_tickets"),
            Some(&tok),
            Some("dsr"),
            Some(&json!({"text": "退款问题"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let raw = t.raw().await;
    // Keep the wrapped key as an attacker with an old backup would.
    let (backup_wrapped,): (Vec<u8>,) =
        sqlx::query_as("SELECT wrapped FROM subject_keys WHERE subject_id = $1")
            .bind(&gone)
            .fetch_one(&raw)
            .await
            .unwrap();

    let (status, body) = t
        .call(
            Method::DELETE,
            &format!("/v1/subjects/{gone}"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["erased"], true);

    for path in [
        format!("/v1/subjects/{gone}"),
        format!("/v1/subjects/{gone}/records/service_tickets"),
    ] {
        let (status, body) = t
            .call(Method::GET, &path, Some(&tok), Some("dsr"), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["code"], "subject_not_found");
    }
    let (status, _) = t
        .call(
            Method::DELETE,
            &format!("/v1/subjects/{gone}"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = t
        .call(
            Method::PATCH,
            &format!("/v1/subjects/{gone}"),
            Some(&tok),
            Some("dsr"),
            Some(&json!({"fields": {"name": "复活"}})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = t
        .call(
            Method::POST,
            "/v1/subjects/lookup",
            Some(&tok),
            Some("dsr"),
            Some(&json!({"field": "phone", "value": "13912345678"})),
        )
        .await;
    assert_eq!(body["ids"], json!([kept]), "only the kept subject is found");

    for table in ["subject_keys", "subject_fields", "blind_index", "records"] {
        let (n,): (i64,) = sqlx::query_as(&format!(
            "SELECT COUNT(*) FROM {table} WHERE subject_id = $1"
        ))
        .bind(&gone)
        .fetch_one(&raw)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table} still holds rows of the erased subject");
    }
    // Only a tombstone is left.
    let (erased_at,): (Option<i64>,) =
        sqlx::query_as("SELECT erased_at FROM subjects WHERE id = $1")
            .bind(&gone)
            .fetch_one(&raw)
            .await
            .unwrap();
    assert!(erased_at.is_some());
    if t.db == Db::Sqlite {
        // secure_delete and the checkpoint leave no copy of the wrapped key in the files.
        let mut bytes = std::fs::read(t.dir.path().join("piivault.db")).unwrap();
        bytes.extend(std::fs::read(t.dir.path().join("piivault.db-wal")).unwrap_or_default());
        assert!(
            !bytes
                .windows(backup_wrapped.len())
                .any(|w| w == backup_wrapped.as_slice()),
            "the wrapped key of an erased subject is still in the SQLite files"
        );
    } else {
        // A dump (what a backup taken now would hold) has no copy of the wrapped key:
        // not only no row for it, no bytes of it anywhere (pg_dump writes bytea in hex).
        let dump = std::process::Command::new("pg_dump")
            .arg("--data-only")
            .arg(&t.database_url)
            .output()
            .expect("pg_dump runs");
        assert!(dump.status.success(), "{}", output_text(&dump));
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(
            text.contains("subject_keys"),
            "the dump holds the key table"
        );
        assert!(
            !text.contains(&hex::encode(&backup_wrapped)),
            "the wrapped key of an erased subject is in a PostgreSQL dump"
        );
        // The search would find one: the other subject's wrapped key is there.
        let (kept_wrapped,): (Vec<u8>,) =
            sqlx::query_as("SELECT wrapped FROM subject_keys WHERE subject_id = $1")
                .bind(&kept)
                .fetch_one(&raw)
                .await
                .unwrap();
        assert!(text.contains(&hex::encode(&kept_wrapped)));
    }
    // The other subject is untouched.
    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{kept}"),
            Some(&tok),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["fields"]["name"]["value"], "吴十");
});
