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

both_stores!(
    a_subject_is_kept_and_no_row_names_a_missing_one,
    |db| async move {
        // Subjects are never deleted and keep their ids; every row of a subject names one
        // that exists. On PostgreSQL the tie is checked once per statement (not by a
        // foreign key per row): a statement with one good row and one bad one fails whole.
        let t = spawn_app(db).await;
        let tok = t.dsr().await;
        let live = t.create(&tok, full_subject()).await;
        let erased = t.create(&tok, json!({"name": "吴十"})).await;
        let (status, _) = t
            .call(
                Method::DELETE,
                &format!("/v1/subjects/{erased}"),
                Some(&tok),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let raw = t.raw().await;
        let (kek,): (i64,) =
            sqlx::query_as("SELECT kek_version FROM subject_keys WHERE subject_id = $1")
                .bind(&live)
                .fetch_one(&raw)
                .await
                .unwrap();
        let missing = "sub_00000000000000000000000000000000";
        let bad_inserts = [
            (
                "subject_fields",
                "INSERT INTO subject_fields (subject_id, field, dek_version, sealed, updated_at) \
                 VALUES ($1, 'not_a_field', $4, $3, 0), ($2, 'not_a_field', $4, $3, 0)",
            ),
            (
                "blind_index",
                "INSERT INTO blind_index (field, digest, subject_id, key_version) \
                 VALUES ('phone', $3, $1, $4), ('phone', $3, $2, $4)",
            ),
            (
                "subject_keys",
                "INSERT INTO subject_keys (subject_id, version, kek_version, wrapped, encryptions, created_at) \
                 VALUES ($1, 99, $4, $3, 0, 0), ($2, 99, $4, $3, 0, 0)",
            ),
            (
                "records",
                "INSERT INTO records (id, subject_id, collection, dek_version, sealed, created_at) \
                 VALUES ('rec_a', $1, 'service_tickets', $4, $3, 0), ('rec_b', $2, 'service_tickets', $4, $3, 0)",
            ),
        ];
        for (table, sql) in bad_inserts {
            let count = format!("SELECT count(*) FROM {table} WHERE subject_id IN ($1, $2)");
            let rows = || async {
                let (n,): (i64,) = sqlx::query_as(&count)
                    .bind(&live)
                    .bind(missing)
                    .fetch_one(&raw)
                    .await
                    .unwrap();
                n
            };
            let before = rows().await;
            let refused = sqlx::query(sql)
                .bind(&live)
                .bind(missing)
                .bind(vec![7u8; 32])
                .bind(kek)
                .execute(&raw)
                .await
                .expect_err("a row for a missing subject was stored");
            assert!(
                refused.to_string().contains("subject")
                    || refused.to_string().contains("FOREIGN KEY"),
                "{table}: refused for another reason: {refused}"
            );
            assert_eq!(
                rows().await,
                before,
                "{table}: the statement was not undone whole"
            );
        }
        // A row moved to a missing subject is refused too.
        for table in ["subject_fields", "blind_index"] {
            assert!(
                sqlx::query(&format!(
                    "UPDATE {table} SET subject_id = $2 WHERE subject_id = $1"
                ))
                .bind(&live)
                .bind(missing)
                .execute(&raw)
                .await
                .is_err(),
                "{table}: a row was moved to a missing subject"
            );
        }
        // Inside a transaction too: on SQLite the index entry's tie is checked when the
        // transaction commits (a deferred foreign key, which needs no statement journal),
        // on PostgreSQL after the statement; either way nothing of it stays.
        let mut tx = raw.begin().await.unwrap();
        let inserted = sqlx::query(
            "INSERT INTO blind_index (field, digest, subject_id, key_version) VALUES ('phone', $2, $1, 1)",
        )
        .bind(missing)
        .bind(vec![5u8; 32])
        .execute(&mut *tx)
        .await;
        let committed = match inserted {
            Ok(_) => tx.commit().await,
            Err(e) => Err(e),
        };
        assert!(
            committed.is_err(),
            "an index entry for a missing subject was committed"
        );
        let (left,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM blind_index WHERE subject_id = $1")
                .bind(missing)
                .fetch_one(&raw)
                .await
                .unwrap();
        assert_eq!(left, 0);
        // The subject rows themselves: never deleted, never renamed, erased or not.
        for id in [&live, &erased] {
            assert!(sqlx::query("DELETE FROM subjects WHERE id = $1")
                .bind(id)
                .execute(&raw)
                .await
                .is_err());
            assert!(sqlx::query("UPDATE subjects SET id = $2 WHERE id = $1")
                .bind(id)
                .bind(missing)
                .execute(&raw)
                .await
                .is_err());
        }
        if db == Db::Postgres {
            assert!(sqlx::query("TRUNCATE subjects CASCADE")
                .execute(&raw)
                .await
                .is_err());
        }
        // Good rows still go in, and the subject still reads.
        sqlx::query(
            "INSERT INTO blind_index (field, digest, subject_id, key_version) VALUES ('phone', $2, $1, 1)",
        )
        .bind(&live)
        .bind(vec![9u8; 32])
        .execute(&raw)
        .await
        .unwrap();
        let (status, body) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{live}"),
                Some(&tok),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
);
