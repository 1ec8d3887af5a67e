//! Re-encryption (`piivault keys rotate --data`), end to end: the CLI beside a serving
//! vault that reads, corrects, adds records and creates throughout, killed in the
//! middle and run again; then every value is intact and nothing is left under a data
//! key that existed before.

use std::collections::BTreeMap;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;

/// What each subject should hold: its phone and its payment records, oldest first.
type Expected = Arc<Mutex<BTreeMap<String, (String, Vec<Value>)>>>;

/// How many of `ids` still have a data key of version 1 (each starts with one).
async fn still_under_first_key(t: &TestApp, ids: &[String]) -> i64 {
    let raw = t.raw().await;
    let mut n = 0;
    for id in ids {
        let found: i64 = sqlx::query_scalar(
            "SELECT CAST(count(*) AS BIGINT) FROM subject_keys WHERE subject_id = $1 AND version = 1",
        )
        .bind(id)
        .fetch_one(&raw)
        .await
        .unwrap();
        n += found;
    }
    raw.close().await;
    n
}

async fn inventory(t: &TestApp) -> Value {
    let (ok, said) = t.cli(&["keys", "list", "--json"]);
    assert!(ok, "{said}");
    serde_json::from_str(&said).unwrap()
}

both_stores!(
    data_reencryption_under_load_survives_kill_9_and_leaves_nothing_under_retired_keys,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let expected: Expected = Arc::default();
        let mut ids = Vec::new();
        for i in 0..120 {
            let phone = format!("139{:08}", 50_000_000 + i);
            let id = t
                .create(&dsr, json!({"name": format!("重加密{i}"), "phone": phone}))
                .await;
            let mut records = Vec::new();
            if i % 3 == 0 {
                let doc = json!({"amount": format!("{i}.00"), "currency": "CNY"});
                let (s, b) = t
                    .call(
                        Method::POST,
                        &format!("/v1/subjects/{id}/records/payments"),
                        Some(&dsr),
                        Some("dsr"),
                        Some(&doc),
                    )
                    .await;
                assert_eq!(s, StatusCode::CREATED, "{b}");
                records.push(doc);
            }
            expected
                .lock()
                .unwrap()
                .insert(id.clone(), (phone, records));
            ids.push(id);
        }
        let raw = t.raw().await;
        let sealed_before: Vec<u8> = sqlx::query_scalar(
            "SELECT sealed FROM subject_fields WHERE subject_id = $1 AND field = 'phone'",
        )
        .bind(&ids[0])
        .fetch_one(&raw)
        .await
        .unwrap();
        raw.close().await;

        // Reads, corrections, new records and creates go on throughout; every answer
        // must be right, and every acknowledged change must be there at the end.
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (client, base, dsr, stop) =
                (t.client.clone(), t.base.clone(), dsr.clone(), stop.clone());
            let (ids, expected) = (ids.clone(), expected.clone());
            tokio::spawn(async move {
                let mut steps = 0u64;
                let mut i = 0usize;
                while !stop.load(Ordering::Acquire) {
                    let id = &ids[i % ids.len()];
                    let (phone, records) = expected.lock().unwrap()[id].clone();
                    let (s, b) = call_at(
                        &client,
                        &base,
                        Method::GET,
                        &format!("/v1/subjects/{id}?fields=phone"),
                        Some(&dsr),
                        Some("dsr"),
                        None,
                    )
                    .await;
                    assert_eq!(s, StatusCode::OK, "read during re-encryption: {b}");
                    assert_eq!(b["fields"]["phone"]["value"], phone.as_str());
                    let (s, b) = call_at(
                        &client,
                        &base,
                        Method::GET,
                        &format!("/v1/subjects/{id}/records/payments"),
                        Some(&dsr),
                        Some("dsr"),
                        None,
                    )
                    .await;
                    assert_eq!(s, StatusCode::OK, "records during re-encryption: {b}");
                    let docs: Vec<Value> = b["records"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["document"].clone())
                        .collect();
                    assert_eq!(docs, records);
                    if i % 3 == 0 {
                        let phone = format!("136{:08}", i);
                        let (s, b) = call_at(
                            &client,
                            &base,
                            Method::PATCH,
                            &format!("/v1/subjects/{id}"),
                            Some(&dsr),
                            Some("dsr"),
                            Some(&json!({"fields": {"phone": phone}})),
                        )
                        .await;
                        assert_eq!(s, StatusCode::OK, "correction during re-encryption: {b}");
                        expected.lock().unwrap().get_mut(id).unwrap().0 = phone;
                    }
                    if i % 4 == 0 {
                        let doc = json!({"amount": format!("{i}.50"), "currency": "CNY"});
                        let (s, b) = call_at(
                            &client,
                            &base,
                            Method::POST,
                            &format!("/v1/subjects/{id}/records/payments"),
                            Some(&dsr),
                            Some("dsr"),
                            Some(&doc),
                        )
                        .await;
                        assert_eq!(s, StatusCode::CREATED, "record during re-encryption: {b}");
                        expected.lock().unwrap().get_mut(id).unwrap().1.push(doc);
                    }
                    if i % 10 == 0 {
                        let phone = format!("135{:08}", i);
                        let (s, b) = call_at(
                            &client,
                            &base,
                            Method::POST,
                            "/v1/subjects",
                            Some(&dsr),
                            Some("dsr"),
                            Some(&json!({"fields": {"phone": phone}})),
                        )
                        .await;
                        assert_eq!(s, StatusCode::CREATED, "create during re-encryption: {b}");
                        let new = b["id"].as_str().unwrap().to_owned();
                        expected.lock().unwrap().insert(new, (phone, Vec::new()));
                    }
                    steps += 1;
                    i += 1;
                }
                steps
            })
        };

        // The first attempt, paced, is killed once part of the subjects moved.
        let mut first = t.cli_spawn(&[
            "keys",
            "rotate",
            "--data",
            "--batch",
            "4",
            "--max-rate",
            "40",
        ]);
        let all = ids.len() as i64;
        assert!(
            eventually(|| async { still_under_first_key(&t, &ids).await <= all - 12 }).await,
            "the re-encryption never started"
        );
        first.kill().unwrap();
        first.wait().unwrap();
        let left = still_under_first_key(&t, &ids).await;
        assert!(left > 0, "the kill came too late");
        let halfway = inventory(&t).await;
        assert!(halfway["reencryption_cursor"].is_string(), "{halfway}");
        assert!(
            halfway["items_under_retired_keys"].as_i64().unwrap() > 0,
            "{halfway}"
        );

        // Run again: it resumes after the last batch that landed and finishes.
        let out = t
            .cli_command(&["keys", "rotate", "--data", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["resumed"], true, "{report}");
        assert_eq!(report["failed"], 0, "{report}");
        assert!(report["subjects"].as_i64().unwrap() >= left, "{report}");

        stop.store(true, Ordering::Release);
        let steps = load.await.unwrap();
        assert!(steps > 0);

        // Nothing is left under a data key that existed before: every original subject's
        // first key is gone, and the inventory counts no retired key and no item under
        // one.
        assert_eq!(still_under_first_key(&t, &ids).await, 0);
        let after = inventory(&t).await;
        assert_eq!(after["retired_data_keys"], 0, "{after}");
        assert_eq!(after["items_under_retired_keys"], 0, "{after}");
        assert!(after["reencryption_cursor"].is_null(), "{after}");
        let raw = t.raw().await;
        let sealed_after: Vec<u8> = sqlx::query_scalar(
            "SELECT sealed FROM subject_fields WHERE subject_id = $1 AND field = 'phone'",
        )
        .bind(&ids[0])
        .fetch_one(&raw)
        .await
        .unwrap();
        assert_ne!(sealed_before, sealed_after);
        // Every value and record sits under a key its subject has.
        let orphans: i64 = sqlx::query_scalar(
            "SELECT CAST(count(*) AS BIGINT) FROM subject_fields f WHERE NOT EXISTS \
             (SELECT 1 FROM subject_keys k WHERE k.subject_id = f.subject_id AND k.version = f.dek_version)",
        )
        .fetch_one(&raw)
        .await
        .unwrap();
        let orphan_records: i64 = sqlx::query_scalar(
            "SELECT CAST(count(*) AS BIGINT) FROM records r WHERE NOT EXISTS \
             (SELECT 1 FROM subject_keys k WHERE k.subject_id = r.subject_id AND k.version = r.dek_version)",
        )
        .fetch_one(&raw)
        .await
        .unwrap();
        raw.close().await;
        assert_eq!((orphans, orphan_records), (0, 0));

        // Every acknowledged value and record reads back, through a fresh look at the
        // store (the server's cache was told of every change).
        let expected = expected.lock().unwrap().clone();
        for (id, (phone, records)) in &expected {
            let (s, v) = read_field(&t, &dsr, "dsr", id, "phone").await;
            assert_eq!(s, StatusCode::OK);
            assert_eq!(&v, phone);
            let (s, b) = t
                .call(
                    Method::GET,
                    &format!("/v1/subjects/{id}/records/payments"),
                    Some(&dsr),
                    Some("dsr"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK);
            let docs: Vec<Value> = b["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["document"].clone())
                .collect();
            assert_eq!(&docs, records, "{id}");
        }
        // Lookups by the blind index still find them (its key is not a data key).
        let (s, b) = t
            .call(
                Method::POST,
                "/v1/subjects/lookup",
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"field": "phone", "value": expected[&ids[1]].0})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert!(b.to_string().contains(&ids[1]), "{b}");

        // The re-encryption is in the audit trail, by the operator, and the chain
        // verifies.
        let events = t.events().await;
        let actions: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e.action.starts_with("key."))
            .map(|e| (e.action.as_str(), e.reason.as_str()))
            .collect();
        assert!(actions.contains(&("key.rotate", "started")), "{actions:?}");
        assert!(actions.contains(&("key.rotate", "finished")), "{actions:?}");
        assert!(
            actions
                .iter()
                .filter(|(a, _)| *a == "key.reencrypt")
                .count()
                >= 3,
            "{actions:?}"
        );
        for e in events.iter().filter(|e| e.action.starts_with("key.")) {
            assert_eq!(
                (e.actor_token.as_str(), e.actor_role.as_str()),
                ("cli", "operator")
            );
            assert!(e.target.as_deref().unwrap_or("").starts_with("data"));
        }
        let (ok, said) = t.cli(&["audit", "verify"]);
        assert!(ok, "{said}");
    }
);

both_stores!(
    a_write_sealed_under_a_key_a_reencryption_replaced_is_refused_as_a_conflict,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let id = t.create(&dsr, json!({"phone": "13900000123"})).await;
        let (ok, said) = t.cli(&["keys", "rotate", "--data"]);
        assert!(ok, "{said}");
        // A correction and a record prepared under data key 1, before the
        // re-encryption replaced it, reach the store after: both are refused (the
        // vault then makes them again under the subject's current key), and nothing
        // of them lands.
        let store = &t.app.store;
        let correction = store.write_subject_op(piivault::store::SubjectWrite {
            subject_id: id.clone(),
            new_key: None,
            key_version: 1,
            set: vec![piivault::store::FieldRow {
                field: "phone".into(),
                dek_version: 1,
                sealed: vec![0; 40],
            }],
            remove: Vec::new(),
            index: Vec::new(),
        });
        assert!(
            matches!(
                store.transact(correction).await,
                Err(piivault::store::StoreError::Conflict)
            ),
            "a value under a replaced key was written"
        );
        let record = store.insert_record_op(
            &id,
            None,
            piivault::store::RecordRow {
                id: "rec_stale".into(),
                collection: "payments".into(),
                dek_version: 1,
                sealed: vec![0; 40],
                created_at: now_ms(),
            },
        );
        assert!(matches!(
            store.transact(record).await,
            Err(piivault::store::StoreError::Conflict)
        ));
        assert_eq!(
            read_field(&t, &dsr, "dsr", &id, "phone").await.1,
            "13900000123"
        );
        // Through the API the same writes succeed (made with the current key).
        let (s, b) = t
            .call(
                Method::PATCH,
                &format!("/v1/subjects/{id}"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"fields": {"phone": "13900000124"}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(
            read_field(&t, &dsr, "dsr", &id, "phone").await.1,
            "13900000124"
        );
    }
);

/// How many blind-index entries were made under key `version`.
async fn entries_under(t: &TestApp, version: i64) -> i64 {
    let raw = t.raw().await;
    let n: i64 = sqlx::query_scalar(
        "SELECT CAST(count(*) AS BIGINT) FROM blind_index WHERE key_version = $1",
    )
    .bind(version)
    .fetch_one(&raw)
    .await
    .unwrap();
    raw.close().await;
    n
}

both_stores!(
    a_blind_index_rotation_keeps_lookups_working_survives_kill_9_and_retires_the_old_key,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let mut subjects = Vec::new();
        for i in 0..60 {
            let (phone, email) = (
                format!("139{:08}", 70_000_000 + i),
                format!("bi{i}@example.com"),
            );
            let id = t
                .create(&dsr, json!({"phone": phone, "email": email}))
                .await;
            subjects.push((id, phone));
        }
        assert_eq!(entries_under(&t, 1).await, 120);

        // Lookups (and creates) go on throughout; each must find exactly its subject.
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (client, base, dsr, stop) =
                (t.client.clone(), t.base.clone(), dsr.clone(), stop.clone());
            let subjects = subjects.clone();
            tokio::spawn(async move {
                let (mut i, mut created) = (0usize, Vec::new());
                while !stop.load(Ordering::Acquire) {
                    let (id, phone) = &subjects[i % subjects.len()];
                    let (s, b) = call_at(
                        &client,
                        &base,
                        Method::POST,
                        "/v1/subjects/lookup",
                        Some(&dsr),
                        Some("dsr"),
                        Some(&json!({"field": "phone", "value": phone})),
                    )
                    .await;
                    assert_eq!(s, StatusCode::OK, "lookup during the rotation: {b}");
                    assert_eq!(b["ids"], json!([id]), "lookup of {phone}");
                    if i % 7 == 0 {
                        let phone = format!("134{:08}", i);
                        let (s, b) = call_at(
                            &client,
                            &base,
                            Method::POST,
                            "/v1/subjects",
                            Some(&dsr),
                            Some("dsr"),
                            Some(&json!({"fields": {"phone": phone}})),
                        )
                        .await;
                        assert_eq!(s, StatusCode::CREATED, "{b}");
                        created.push((b["id"].as_str().unwrap().to_owned(), phone));
                    }
                    i += 1;
                }
                created
            })
        };

        let mut first = t.cli_spawn(&[
            "keys",
            "rotate",
            "--blind-index",
            "--batch",
            "4",
            "--max-rate",
            "30",
        ]);
        // (Entries under version 2 alone would not tell: once the server has loaded it,
        // which the rotation waits for, the subjects the load creates are indexed under it.)
        assert!(
            eventually(|| async {
                t.events()
                    .await
                    .iter()
                    .filter(|e| e.action == "key.reencrypt")
                    .count()
                    >= 3
            })
            .await,
            "the walk never started"
        );
        first.kill().unwrap();
        first.wait().unwrap();
        assert!(entries_under(&t, 1).await > 0, "the kill came too late");
        // As a node that had not loaded version 2 yet would: an entry under version 1 for
        // a subject the walk has passed.
        let raw = t.raw().await;
        sqlx::query(
            "INSERT INTO blind_index (field, digest, subject_id, key_version) VALUES ('phone', $1, $2, 1)",
        )
        .bind(vec![7u8; 32])
        .bind(&subjects[0].0)
        .execute(&raw)
        .await
        .unwrap();
        raw.close().await;

        let out = t
            .cli_command(&["keys", "rotate", "--blind-index", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["version"], 2, "{report}");
        assert_eq!(report["resumed"], true, "{report}");
        assert_eq!(report["remaining"], 0, "{report}");
        assert!(report["stragglers"].as_u64().unwrap() >= 1, "{report}");

        stop.store(true, Ordering::Release);
        let created = load.await.unwrap();
        assert_eq!(entries_under(&t, 1).await, 0);

        // Version 1 goes; version 2 cannot.
        let (ok, said) = t.cli(&["keys", "retire", "--blind-index", "2"]);
        assert!(!ok && said.contains("is the active version"), "{said}");
        let (ok, said) = t.cli(&["keys", "retire", "--blind-index", "1"]);
        assert!(ok, "{said}");
        assert!(
            eventually(|| async { t.app.vault.keys().0.system_versions().0 == vec![2] }).await,
            "the server never dropped blind-index key version 1"
        );
        for (id, phone) in subjects.iter().chain(created.iter()) {
            let (s, b) = t
                .call(
                    Method::POST,
                    "/v1/subjects/lookup",
                    Some(&dsr),
                    Some("dsr"),
                    Some(&json!({"field": "phone", "value": phone})),
                )
                .await;
            assert_eq!(s, StatusCode::OK);
            assert_eq!(b["ids"], json!([id]), "lookup of {phone} after retirement");
        }
        let (s, b) = t
            .call(
                Method::POST,
                "/v1/subjects/lookup",
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"field": "email", "value": "bi5@example.com"})),
            )
            .await;
        assert_eq!((s, &b["ids"]), (StatusCode::OK, &json!([subjects[5].0])));
        let inventory = inventory(&t).await;
        let blind: Vec<(i64, String, i64)> = inventory["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kind"] == "blind_index")
            .map(|k| {
                (
                    k["version"].as_i64().unwrap(),
                    k["state"].as_str().unwrap().to_owned(),
                    k["items"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            blind,
            vec![(2, "active".to_owned(), entries_under(&t, 2).await)]
        );
        let events = t.events().await;
        assert!(events.iter().any(|e| e.action == "key.rotate"
            && e.target.as_deref() == Some("blind_index:v2")
            && e.reason == "finished"));
        assert!(events
            .iter()
            .any(|e| e.action == "key.retire" && e.target.as_deref() == Some("blind_index:v1")));
        let (ok, said) = t.cli(&["audit", "verify"]);
        assert!(ok, "{said}");
    }
);

/// The algorithms `keys list` reports for data keys and for blind-index keys.
async fn algorithms(t: &TestApp) -> (Vec<String>, Vec<String>) {
    let inventory = inventory(t).await;
    let of = |kind: &str| {
        let mut names: Vec<String> = inventory["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kind"] == kind)
            .map(|k| k["algorithm"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    (of("data"), of("blind_index"))
}

/// Each live master-key version with the cipher it wraps with.
async fn master_ciphers(t: &TestApp) -> Vec<(i64, String)> {
    inventory(t).await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kind"] == "master" && k["state"] != "destroyed")
        .map(|k| {
            (
                k["version"].as_i64().unwrap(),
                k["algorithm"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

both_stores!(
    a_store_moves_from_aes_to_sm4_and_sm3_and_back_reading_throughout,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let mut subjects = Vec::new();
        for i in 0..12 {
            let phone = format!("139{:08}", 80_000_000 + i);
            let id = t
                .create(&dsr, json!({"name": format!("商密{i}"), "phone": phone}))
                .await;
            let doc = json!({"amount": format!("{i}.00"), "currency": "CNY"});
            let (s, b) = t
                .call(
                    Method::POST,
                    &format!("/v1/subjects/{id}/records/payments"),
                    Some(&dsr),
                    Some("dsr"),
                    Some(&doc),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
            subjects.push((id, phone, doc));
        }
        let check = |subjects: Vec<(String, String, Value)>| {
            let (t, dsr) = (&t, dsr.clone());
            async move {
                for (id, phone, doc) in &subjects {
                    assert_eq!(
                        read_field(t, &dsr, "dsr", id, "phone").await.1,
                        phone.as_str()
                    );
                    let (s, b) = t
                        .call(
                            Method::GET,
                            &format!("/v1/subjects/{id}/records/payments"),
                            Some(&dsr),
                            Some("dsr"),
                            None,
                        )
                        .await;
                    assert_eq!(s, StatusCode::OK);
                    assert_eq!(&b["records"][0]["document"], doc);
                    let (s, b) = t
                        .call(
                            Method::POST,
                            "/v1/subjects/lookup",
                            Some(&dsr),
                            Some("dsr"),
                            Some(&json!({"field": "phone", "value": phone})),
                        )
                        .await;
                    assert_eq!((s, &b["ids"]), (StatusCode::OK, &json!([id])));
                }
            }
        };
        assert_eq!(
            algorithms(&t).await,
            (
                vec!["AES-256-GCM".to_owned()],
                vec!["HMAC-SHA256".to_owned()]
            )
        );

        // A setting that names no suite is refused.
        let bad = t.dir.path().join("bad.toml");
        std::fs::write(&bad, "crypto_suite = \"des\"\n").unwrap();
        let (ok, said) = t.cli(&["keys", "list", "--config", bad.to_str().unwrap()]);
        assert!(!ok && said.contains("crypto_suite must be"), "{said}");

        // To China's commercial cryptography: data keys SM4-GCM, blind index HMAC-SM3.
        let sm = t.dir.path().join("sm.toml");
        std::fs::write(&sm, "crypto_suite = \"sm\"\n").unwrap();
        let sm = sm.to_str().unwrap();
        let (ok, said) = t.cli(&["keys", "rotate", "--data", "--config", sm]);
        assert!(ok, "{said}");
        assert_eq!(algorithms(&t).await.0, vec!["SM4-GCM".to_owned()]);
        check(subjects.clone()).await;
        let (ok, said) = t.cli(&["keys", "rotate", "--blind-index", "--config", sm]);
        assert!(ok, "{said}");
        let (ok, said) = t.cli(&["keys", "retire", "--blind-index", "1"]);
        assert!(ok, "{said}");
        assert_eq!(
            algorithms(&t).await,
            (vec!["SM4-GCM".to_owned()], vec!["HMAC-SM3".to_owned()])
        );
        assert!(
            eventually(|| async { t.app.vault.keys().0.system_versions().0 == vec![2] }).await,
            "the server never loaded the SM3 blind-index key alone"
        );
        check(subjects.clone()).await;

        // The master key wraps with SM4-GCM too once a version is made for the suite:
        // every data and system key wrapped again under it, the AES version retired.
        assert_eq!(
            master_ciphers(&t).await,
            vec![(1, "AES-256-GCM".to_owned())]
        );
        let (ok, said) = t.cli(&["keys", "rotate", "--master", "--config", sm]);
        assert!(ok, "{said}");
        let (ok, said) = t.cli(&["keys", "retire", "--master", "1"]);
        assert!(ok, "{said}");
        assert_eq!(master_ciphers(&t).await, vec![(2, "SM4-GCM".to_owned())]);
        assert!(
            eventually(|| async { t.app.vault.keys().0.master().versions() == vec![2] }).await,
            "the server never dropped master key version 1"
        );
        assert_eq!(
            t.app.vault.keys().0.master().cipher(2),
            piivault::crypto::DataCipher::Sm4Gcm
        );
        check(subjects.clone()).await;

        // This server still makes AES keys for what it creates: both read side by side.
        let phone = "13980000099".to_owned();
        let id = t.create(&dsr, json!({"phone": phone})).await;
        let (s, _) = t
            .call(
                Method::POST,
                &format!("/v1/subjects/{id}/records/payments"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"amount": "1.00"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        subjects.push((id, phone, json!({"amount": "1.00"})));
        assert_eq!(
            algorithms(&t).await.0,
            vec!["AES-256-GCM".to_owned(), "SM4-GCM".to_owned()]
        );
        check(subjects.clone()).await;

        // And back to AES-256-GCM, the master key too.
        let (ok, said) = t.cli(&["keys", "rotate", "--data"]);
        assert!(ok, "{said}");
        assert_eq!(algorithms(&t).await.0, vec!["AES-256-GCM".to_owned()]);
        let (ok, said) = t.cli(&["keys", "rotate", "--master"]);
        assert!(ok, "{said}");
        assert_eq!(
            master_ciphers(&t).await,
            vec![(2, "SM4-GCM".to_owned()), (3, "AES-256-GCM".to_owned())]
        );
        check(subjects.clone()).await;
        check(subjects.clone()).await;
        let (ok, said) = t.cli(&["audit", "verify"]);
        assert!(ok, "{said}");
    }
);
