use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_stores;
use crate::helpers::*;

// Ciphertexts are bound to subject, field and key version: copied anywhere else they
// fail to decrypt, and the API answers an error, never garbage or another's data.
both_stores!(
    ciphertext_moved_between_subjects_or_fields_fails,
    |db| async move {
        let t = spawn_app(db).await;
        let tok = t.dsr().await;
        let a = t.create(&tok, full_subject()).await;
        let b = t
            .create(
                &tok,
                json!({"name": "周九", "phone": "13611112222", "email": "zhou@example.com"}),
            )
            .await;
        let ra = t
            .call(
                Method::POST,
                &format!("/v1/subjects/{a}/records/payments"),
                Some(&tok),
                Some("dsr"),
                Some(&json!({"amount": "88.00"})),
            )
            .await;
        let rb = t
            .call(
                Method::POST,
                &format!("/v1/subjects/{b}/records/payments"),
                Some(&tok),
                Some("dsr"),
                Some(&json!({"amount": "1.00"})),
            )
            .await;
        assert_eq!((ra.0, rb.0), (StatusCode::CREATED, StatusCode::CREATED));
        let raw = t.raw().await;
        let sealed = |subject: String, field: &'static str| {
            let raw = raw.clone();
            async move {
                let (s,): (Vec<u8>,) = sqlx::query_as(
                    "SELECT sealed FROM subject_fields WHERE subject_id = $1 AND field = $2",
                )
                .bind(subject)
                .bind(field)
                .fetch_one(&raw)
                .await
                .unwrap();
                s
            }
        };
        // Tampering behind the vault's back: the vault may keep serving the authentic
        // ciphertext it cached; these tests want the next read to meet the tampered one.
        let vault = t.app.vault.clone();
        let set = |subject: String, field: &'static str, value: Vec<u8>| {
            let raw = raw.clone();
            vault.forget(&subject);
            async move {
                sqlx::query(
                    "UPDATE subject_fields SET sealed = $3 WHERE subject_id = $1 AND field = $2",
                )
                .bind(subject)
                .bind(field)
                .bind(value)
                .execute(&raw)
                .await
                .unwrap();
            }
        };

        // A's phone ciphertext copied over B's phone.
        set(b.clone(), "phone", sealed(a.clone(), "phone").await).await;
        let (status, body) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{b}?fields=phone"),
                Some(&tok),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(body["error"]["code"], "integrity_error");
        assert_no_value(&body, "13912345678");
        // B's other fields are still readable.
        let (status, body) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{b}?fields=email"),
                Some(&tok),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["fields"]["email"]["value"], "zhou@example.com");

        // A's phone ciphertext copied into A's own email field.
        set(a.clone(), "email", sealed(a.clone(), "phone").await).await;
        let (status, body) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{a}?fields=email"),
                Some(&tok),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "integrity_error");

        // A single flipped bit.
        let mut flipped = sealed(a.clone(), "name").await;
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        set(a.clone(), "name", flipped).await;
        let (status, _) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{a}?fields=name"),
                Some(&tok),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);

        // A's record moved to B.
        sqlx::query("UPDATE records SET subject_id = $1 WHERE subject_id = $2")
            .bind(&b)
            .bind(&a)
            .execute(&raw)
            .await
            .unwrap();
        let (status, body) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{b}/records/payments"),
                Some(&tok),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_no_value(&body, "88.00");

        // A's wrapped data key moved to B: B's key no longer unwraps.
        let (wrapped,): (Vec<u8>,) =
            sqlx::query_as("SELECT wrapped FROM subject_keys WHERE subject_id = $1")
                .bind(&a)
                .fetch_one(&raw)
                .await
                .unwrap();
        sqlx::query("UPDATE subject_keys SET wrapped = $1 WHERE subject_id = $2")
            .bind(wrapped)
            .bind(&b)
            .execute(&raw)
            .await
            .unwrap();
        t.app.vault.forget(&b);
        let (status, body) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{b}?fields=email"),
                Some(&tok),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "integrity_error");
    }
);

// Two records of one subject, same collection and data key: only the record id in the
// associated data tells their ciphertexts apart, and that is enough.
both_stores!(
    ciphertexts_swapped_between_two_records_of_one_subject_fail,
    |db| async move {
        let t = spawn_app(db).await;
        let tok = t.dsr().await;
        let a = t.create(&tok, json!({"name": "郑十一"})).await;
        let path = format!("/v1/subjects/{a}/records/payments");
        for amount in ["11.00", "22.00"] {
            let (s, b) = t
                .call(
                    Method::POST,
                    &path,
                    Some(&tok),
                    Some("dsr"),
                    Some(&json!({"amount": amount})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
        let raw = t.raw().await;
        let rows: Vec<(String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT id, sealed, dek_version FROM records WHERE subject_id = $1 ORDER BY id",
        )
        .bind(&a)
        .fetch_all(&raw)
        .await
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].2, rows[1].2, "one data key seals both");
        for (from, to) in [(0, 1), (1, 0)] {
            sqlx::query("UPDATE records SET sealed = $1 WHERE id = $2")
                .bind(rows[from].1.clone())
                .bind(&rows[to].0)
                .execute(&raw)
                .await
                .unwrap();
        }
        let (status, body) = t
            .call(Method::GET, &path, Some(&tok), Some("dsr"), None)
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(body["error"]["code"], "integrity_error");
        assert_no_value(&body, "11.00");
        assert_no_value(&body, "22.00");
    }
);
