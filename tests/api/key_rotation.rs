//! Master-key rotation and retirement, end to end: the CLI beside a serving vault,
//! killed in the middle and run again, then the old version destroyed; and what that
//! destruction means for a backup taken before it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;

/// How many keys each master-key version wraps, straight from the store.
async fn wrapped_under(t: &TestApp) -> std::collections::BTreeMap<i64, i64> {
    t.app
        .store
        .wrapped_counts()
        .await
        .unwrap()
        .into_iter()
        .map(|(v, c)| (v, c.total()))
        .collect()
}

/// Waits for `cond` (see [`eventually`]); fails the test naming `what` if it never holds.
async fn wait_for<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(eventually(cond).await, "timed out waiting for {what}");
}

fn key_file_versions(t: &TestApp) -> Vec<String> {
    std::fs::read_to_string(t.dir.path().join("master.key"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('v'))
        .map(|l| l.split(':').next().unwrap().to_owned())
        .collect()
}

both_stores!(
    master_rotation_under_load_survives_kill_9_then_the_old_version_is_destroyed,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let mut subjects = Vec::new();
        for i in 0..120 {
            let phone = format!("139{:08}", 40_000_000 + i);
            let id = t
                .create(&dsr, json!({"name": format!("轮换{i}"), "phone": phone}))
                .await;
            subjects.push((id, phone));
        }

        // Nothing to retire yet: version 1 is active and wraps everything.
        let (ok, said) = t.cli(&["keys", "retire", "--master", "1"]);
        assert!(!ok, "{said}");
        assert!(said.contains("is the active version"), "{said}");

        // Reads and creates go on throughout; every answer must be right.
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (client, base, dsr, stop) =
                (t.client.clone(), t.base.clone(), dsr.clone(), stop.clone());
            let subjects = subjects.clone();
            tokio::spawn(async move {
                let (mut reads, mut created) = (0u64, Vec::new());
                let mut i = 0usize;
                while !stop.load(Ordering::Acquire) {
                    let (id, phone) = &subjects[i % subjects.len()];
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
                    assert_eq!(s, StatusCode::OK, "read during rotation: {b}");
                    assert_eq!(b["fields"]["phone"]["value"], phone.as_str());
                    reads += 1;
                    if i % 10 == 0 {
                        let phone = format!("137{:08}", i);
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
                        assert_eq!(s, StatusCode::CREATED, "create during rotation: {b}");
                        created.push((b["id"].as_str().unwrap().to_owned(), phone));
                    }
                    i += 1;
                }
                (reads, created)
            })
        };

        // The first attempt, paced, is killed once part of the keys moved.
        let mut first = t.cli_spawn(&[
            "keys",
            "rotate",
            "--master",
            "--batch",
            "4",
            "--max-rate",
            "100",
        ]);
        // (Keys under version 2 alone would not tell: once the server has loaded it, the
        // subjects the load creates are wrapped under it too.)
        wait_for("a few batches re-wrapped", || async {
            t.events()
                .await
                .iter()
                .filter(|e| e.action == "key.rewrap")
                .count()
                >= 3
        })
        .await;
        // Frozen there (SIGSTOP), so that how long the server takes to hear of the new
        // version below cannot let the paced rotation run to its end first.
        signal(first.id(), "-STOP");
        // The server has picked the new version up (change feed): it wraps new keys
        // under it from now on.
        wait_for("the server to load version 2", || async {
            t.app.vault.keys().0.master().current_version() == 2
        })
        .await;
        first.kill().unwrap();
        first.wait().unwrap();
        let halfway = wrapped_under(&t).await;
        assert!(
            halfway.get(&1).copied().unwrap_or(0) > 0,
            "the kill came too late: {halfway:?}"
        );
        assert_eq!(key_file_versions(&t), ["v1", "v2"]);

        // Run again: it resumes toward version 2 (no third version) and finishes.
        let out = t
            .cli_command(&["keys", "rotate", "--master", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["version"], 2);
        assert_eq!(report["resumed"], true);
        assert_eq!(report["remaining"], 0);
        assert_eq!(report["failed"], 0);
        assert_eq!(key_file_versions(&t), ["v1", "v2"]);

        stop.store(true, Ordering::Release);
        let (reads, created) = load.await.unwrap();
        assert!(reads > 0);
        let after = wrapped_under(&t).await;
        assert_eq!(after.get(&1).copied().unwrap_or(0), 0, "{after:?}");

        // The rotation is in the audit trail, and the chain verifies.
        let events = t.events().await;
        let actions: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e.action.starts_with("key."))
            .map(|e| (e.action.as_str(), e.reason.as_str()))
            .collect();
        assert!(actions.contains(&("key.rotate", "started")), "{actions:?}");
        assert!(actions.contains(&("key.rotate", "finished")), "{actions:?}");
        assert!(
            actions.iter().filter(|(a, _)| *a == "key.rewrap").count() >= 3,
            "{actions:?}"
        );
        for e in events.iter().filter(|e| e.action.starts_with("key.")) {
            assert_eq!(
                (e.actor_token.as_str(), e.actor_role.as_str()),
                ("cli", "operator")
            );
            assert!(
                e.target.as_deref().unwrap_or("").starts_with("master:v2"),
                "{:?}",
                e.target
            );
        }
        let (ok, said) = t.cli(&["audit", "verify"]);
        assert!(ok, "{said}");

        // Destroy version 1: gone from the store's live versions and from the file.
        let (ok, said) = t.cli(&["keys", "retire", "--master", "1"]);
        assert!(ok, "{said}");
        assert_eq!(key_file_versions(&t), ["v2"]);
        let (ok, said) = t.cli(&["keys", "list", "--json"]);
        assert!(ok, "{said}");
        assert!(said.contains("\"destroyed\""), "{said}");
        let (ok, said) = t.cli(&["keys", "retire", "--master", "2"]);
        assert!(!ok && said.contains("is the active version"), "{said}");

        // The server drops version 1 (change feed) and still answers every value.
        wait_for("the server to drop version 1", || async {
            !t.app.vault.keys().0.master().contains(1)
        })
        .await;
        for (id, phone) in subjects.iter().chain(created.iter()) {
            let (s, v) = read_field(&t, &dsr, "dsr", id, "phone").await;
            assert_eq!(s, StatusCode::OK);
            assert_eq!(v, phone.as_str());
        }
        let id = t.create(&dsr, json!({"phone": "13900000077"})).await;
        assert_eq!(
            read_field(&t, &dsr, "dsr", &id, "phone").await.1,
            "13900000077"
        );
        let (ok, said) = t.cli(&["audit", "verify"]);
        assert!(ok, "{said}");

        // Nothing may be wrapped under the destroyed version again, whoever writes it.
        let raw = t.raw().await;
        let refused = sqlx::query("UPDATE subject_keys SET kek_version = 1 WHERE subject_id = $1")
            .bind(&id)
            .execute(&raw)
            .await;
        assert!(
            refused.is_err(),
            "a key was wrapped under a destroyed version"
        );
    }
);

/// A copy of the store as it is now, as a new store URL.
async fn backup(t: &TestApp, into: &std::path::Path) -> String {
    match t.db {
        Db::Sqlite => {
            let file = into.join("backup.db");
            sqlite_backup(&t.database_url, &file).await;
            format!("sqlite://{}", file.display())
        }
        Db::Postgres => pg_backup(&t.database_url).await,
    }
}

both_stores!(
    a_backup_cannot_be_read_for_a_subject_erased_before_its_master_key_version_was_destroyed,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let erased = t
            .create(&dsr, json!({"name": "备份里的人", "phone": "13900000123"}))
            .await;
        let kept = t.create(&dsr, json!({"phone": "13900000124"})).await;
        let elsewhere = tempfile::tempdir().unwrap();
        let backup_url = backup(&t, elsewhere.path()).await;
        let old_key_text = std::fs::read_to_string(t.dir.path().join("master.key")).unwrap();

        let (s, b) = t
            .call(
                Method::DELETE,
                &format!("/v1/subjects/{erased}"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (ok, said) = t.cli(&["keys", "rotate", "--master"]);
        assert!(ok, "{said}");
        let (ok, said) = t.cli(&["keys", "retire", "--master", "1"]);
        assert!(ok, "{said}");
        assert_eq!(
            read_field(&t, &dsr, "dsr", &kept, "phone").await.1,
            "13900000124"
        );

        // The backup still holds the erased subject's wrapped data key…
        sqlx::any::install_default_drivers();
        let old = sqlx::AnyPool::connect(&backup_url).await.unwrap();
        let (version, kek, wrapped): (i64, i64, Vec<u8>) = sqlx::query_as(
            "SELECT version, kek_version, wrapped FROM subject_keys WHERE subject_id = $1",
        )
        .bind(&erased)
        .fetch_one(&old)
        .await
        .unwrap();
        old.close().await;
        assert_eq!(kek, 1);
        // …which the destroyed version could have opened (the control)…
        let before = piivault::crypto::MasterKeyRing::parse(&old_key_text).unwrap();
        assert!(before
            .unwrap_subject_key(&erased, version, kek, &wrapped)
            .is_ok());
        // …but the key set as it is now cannot.
        let now_text = std::fs::read_to_string(t.dir.path().join("master.key")).unwrap();
        let now = piivault::crypto::MasterKeyRing::parse(&now_text).unwrap();
        assert_eq!(now.versions(), [2]);
        assert!(matches!(
            now.unwrap_subject_key(&erased, version, kek, &wrapped),
            Err(piivault::crypto::CryptoError::UnknownKekVersion(1))
        ));
        // And a vault opened on the backup beside the current key file refuses to start.
        let beside = tempfile::tempdir().unwrap();
        let mut settings = settings(beside.path(), backup_url.clone());
        settings.master = piivault::crypto::MasterKeySource::File {
            path: t.dir.path().join("master.key"),
            create: false,
        };
        let opened = piivault::open(&settings).await;
        let said = match opened {
            Ok(_) => panic!("the backup must not open"),
            Err(e) => format!("{e:#}"),
        };
        assert!(said.contains("live version"), "{said}");
        if let Db::Postgres = t.db {
            drop_pg_database(backup_url.rsplit('/').next().unwrap()).await;
        }
    }
);

both_stores!(
    a_node_without_the_new_master_version_answers_key_unavailable_until_its_key_file_has_it,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let id = t.create(&dsr, json!({"phone": "13900000555"})).await;
        // The rotation runs with a copy of the key file, as on another machine: the
        // serving node's own file never gets version 2.
        let other = tempfile::tempdir().unwrap();
        let other_key = other.path().join("master.key");
        std::fs::copy(t.dir.path().join("master.key"), &other_key).unwrap();
        let rotate = |force: bool| {
            let mut args = vec![
                "keys",
                "rotate",
                "--master",
                "--master-key-file",
                other_key.to_str().unwrap(),
            ];
            if force {
                args.push("--force");
            }
            t.cli(&args)
        };
        // The serving node reports the versions it holds.
        wait_for("the node to report itself", || async {
            let (_, said) = t.cli(&["keys", "list", "--json"]);
            let inventory: Value = serde_json::from_str(&said).unwrap();
            inventory["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 1 && n[0]["master_versions"] == "1")
        })
        .await;
        // The rotation sees that it lacks the new version, waits for it, and stops,
        // naming it: nothing is re-wrapped.
        let (ok, said) = rotate(false);
        assert!(!ok, "{said}");
        assert!(
            said.contains("have not loaded master key version 2"),
            "{said}"
        );
        assert!(
            said.contains(&t.base.rsplit(':').next().unwrap().to_owned()),
            "{said}"
        );
        assert_eq!(wrapped_under(&t).await.get(&2).copied().unwrap_or(0), 0);
        assert_eq!(
            read_field(&t, &dsr, "dsr", &id, "phone").await.1,
            "13900000555"
        );

        // Forced, it goes ahead (resuming toward version 2).
        let (ok, said) = rotate(true);
        assert!(ok, "{said}");
        assert!(said.contains("resumed"), "{said}");
        assert_eq!(key_file_versions(&t), ["v1"]);

        // Its cached copy of the subject is forgotten (the change feed names a new
        // version); read again, the key is under a version it cannot load: 503, with
        // no value, until the version arrives.
        wait_for("the node to answer key_unavailable", || async {
            let (s, b) = t
                .call(
                    Method::GET,
                    &format!("/v1/subjects/{id}?fields=phone"),
                    Some(&dsr),
                    Some("dsr"),
                    None,
                )
                .await;
            s == StatusCode::SERVICE_UNAVAILABLE && b["error"]["code"] == "key_unavailable"
        })
        .await;

        // The operator gives this node the new key file: it recovers without a restart.
        std::fs::copy(&other_key, t.dir.path().join("master.key")).unwrap();
        wait_for("the node to read again", || async {
            read_field(&t, &dsr, "dsr", &id, "phone").await.1 == "13900000555"
        })
        .await;
        let id2 = t.create(&dsr, json!({"phone": "13900000556"})).await;
        assert_eq!(
            read_field(&t, &dsr, "dsr", &id2, "phone").await.1,
            "13900000556"
        );
    }
);

both_stores!(
    admins_read_the_key_inventory_over_http_and_no_one_else,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        t.create(&dsr, json!({"phone": "13900000888"})).await;
        let (ok, said) = t.cli(&["keys", "rotate", "--master"]);
        assert!(ok, "{said}");
        let admin = t.token("admin", &["admin"]).await;
        let (s, b, rid) = t
            .call_rid(Method::GET, "/v1/keys", &admin, "admin", None)
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let keys = b["keys"].as_array().unwrap();
        let master: Vec<(i64, &str, i64)> = keys
            .iter()
            .filter(|k| k["kind"] == "master")
            .map(|k| {
                (
                    k["version"].as_i64().unwrap(),
                    k["state"].as_str().unwrap(),
                    k["keys"].as_i64().unwrap(),
                )
            })
            .collect();
        // Version 2 wraps the subject's key and the two system keys.
        assert_eq!(master, [(1, "decrypt-only", 0), (2, "active", 3)]);
        let data = keys.iter().find(|k| k["kind"] == "data").unwrap();
        assert_eq!(
            (data["wrapped_by"].as_i64(), data["keys"].as_i64()),
            (Some(2), Some(1))
        );
        assert_eq!(
            b["audit"][0]["key_id"],
            t.app.trusted_audit_keys()[0].key_id()
        );
        // No key material: neither the key file's secrets nor wrapped keys.
        let text = std::fs::read_to_string(t.dir.path().join("master.key")).unwrap();
        for line in text.lines().filter(|l| l.starts_with('v')) {
            assert!(!b.to_string().contains(line.split(':').nth(1).unwrap()));
        }
        let events = t.events().await;
        let e = events
            .iter()
            .rev()
            .find(|e| e.action == "key.list")
            .unwrap();
        assert_eq!(
            (
                e.actor_role.as_str(),
                e.decision.as_str(),
                e.request_id.as_str()
            ),
            ("admin", "allow", rid.as_str())
        );

        let (s, b) = t
            .call(Method::GET, "/v1/keys", Some(&dsr), Some("dsr"), None)
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        assert_eq!(b["error"]["code"], "policy_denied");
        let (s, _) = t
            .call(Method::GET, "/v1/keys", None, Some("admin"), None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
);

both_stores!(
    the_audit_signing_key_rotates_while_serving_and_the_chain_verifies_across_both_keys,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let auditor = t.token("auditor", &["audit"]).await;
        let id = t.create(&dsr, json!({"phone": "13900000311"})).await;
        let old = t.app.audit.key().unwrap().public().key_id().to_owned();
        t.app.audit.checkpoint_now().await.unwrap();

        let (ok, said) = t.cli(&["keys", "rotate", "--audit"]);
        assert!(ok, "{said}");
        assert!(said.contains(&old), "{said}");
        let key_dir = t.dir.path().join("audit");
        let key_file = key_dir.join("signing.key");
        let new = piivault::crypto::AuditKey::parse(&std::fs::read_to_string(&key_file).unwrap())
            .unwrap()
            .public()
            .key_id()
            .to_owned();
        assert_ne!(new, old);
        assert!(key_dir.join(format!("signing-{old}.pub")).exists());

        // The server picks the new key up through the change feed and signs with it.
        wait_for("the server to sign with the new key", || async {
            t.app.audit.key().unwrap().public().key_id() == new
        })
        .await;
        read_field(&t, &dsr, "dsr", &id, "phone").await;
        t.app.audit.checkpoint_now().await.unwrap();
        let signers: std::collections::BTreeSet<String> = t
            .app
            .store
            .checkpoints()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.key_id)
            .collect();
        assert!(
            signers.contains(&old) && signers.contains(&new),
            "{signers:?}"
        );

        // The rotation is audited, and the chain verifies across both keys, from the
        // CLI and over HTTP, which lists both public keys.
        let events = t.events().await;
        let rotated = events
            .iter()
            .find(|e| e.action == "key.rotate")
            .expect("a key.rotate event");
        assert_eq!(
            rotated.target.as_deref(),
            Some(format!("audit:{new}").as_str())
        );
        assert_eq!(rotated.reason, format!("replaces {old}"));
        let (ok, said) = t.cli(&["audit", "verify", "--json"]);
        assert!(ok, "{said}");
        let report: Value = serde_json::from_str(&said).unwrap();
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["checkpoints_unknown_key"], 0, "{report}");
        let (s, b) = t
            .call(
                Method::GET,
                "/v1/audit/verify",
                Some(&auditor),
                Some("audit"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["ok"], true, "{b}");
        let (s, b) = t
            .call(
                Method::GET,
                "/v1/audit/public-key",
                Some(&auditor),
                Some("audit"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let ids: Vec<&str> = b["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key_id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&old.as_str()) && ids.contains(&new.as_str()),
            "{b}"
        );

        // Without the old public key, what it signed can no longer be vouched for.
        std::fs::remove_file(key_dir.join(format!("signing-{old}.pub"))).unwrap();
        let (_, said) = t.cli(&["audit", "verify", "--json"]);
        let report: Value = serde_json::from_str(&said).unwrap();
        assert!(
            report["checkpoints_unknown_key"].as_u64().unwrap() > 0,
            "{report}"
        );
    }
);

both_stores!(
    a_token_hash_key_rotation_keeps_issued_tokens_valid_and_retires_the_old_key_once_none_is_under_it,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let auditor = t.token("auditor", &["audit"]).await;
        let id = t.create(&dsr, json!({"phone": "13900000411"})).await;
        let under = |version: i64| {
            let store = t.app.store.clone();
            async move {
                store
                    .tokens_per_hash_key(now_ms())
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|(v, _, _)| *v == version)
                    .map_or(0, |(_, live, _)| live)
            }
        };
        assert_eq!(under(1).await, 2);

        let (ok, said) = t.cli(&["keys", "rotate", "--token-hash"]);
        assert!(ok, "{said}");
        wait_for("the server to load token-hash key version 2", || async {
            t.app.vault.keys().0.system_versions().1 == vec![2, 1]
        })
        .await;

        // Tokens issued before the rotation still work, and move to version 2 as they
        // are used; a new token is hashed under version 2 at once.
        assert_eq!(
            read_field(&t, &dsr, "dsr", &id, "phone").await.1,
            "13900000411"
        );
        wait_for("the used token to move to version 2", || async {
            under(1).await == 1
        })
        .await;
        let fresh = t.token("dsr_handler", &["dsr"]).await;
        assert_eq!(under(2).await, 2);
        assert_eq!(
            read_field(&t, &fresh, "dsr", &id, "phone").await.1,
            "13900000411"
        );

        // Version 1 cannot go while a live token is hashed under it.
        let (ok, said) = t.cli(&["keys", "retire", "--token-hash", "1"]);
        assert!(!ok, "{said}");
        assert!(said.contains("1 live token(s)"), "{said}");
        let (ok, said) = t.cli(&["keys", "list", "--json"]);
        assert!(ok, "{said}");
        let inventory: Value = serde_json::from_str(&said).unwrap();
        let v1 = inventory["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == "token_hash" && k["version"] == 1)
            .unwrap()
            .clone();
        assert_eq!((v1["state"].as_str(), v1["items"].as_i64()), (Some("verify-only"), Some(1)));

        // Once that token is used, it moves too, and version 1 is destroyed.
        let (s, b) = t
            .call(Method::GET, "/v1/audit/verify", Some(&auditor), Some("audit"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        wait_for("the auditor's token to move to version 2", || async {
            under(1).await == 0
        })
        .await;
        let (ok, said) = t.cli(&["keys", "retire", "--token-hash", "1"]);
        assert!(ok, "{said}");
        let (ok, said) = t.cli(&["keys", "retire", "--token-hash", "2"]);
        assert!(!ok && said.contains("is the active version"), "{said}");
        wait_for("the server to drop token-hash key version 1", || async {
            t.app.vault.keys().0.system_versions().1 == vec![2]
        })
        .await;
        for token in [&dsr, &fresh] {
            assert_eq!(
                read_field(&t, token, "dsr", &id, "phone").await.1,
                "13900000411"
            );
        }
        let (s, _) = t
            .call(Method::GET, "/v1/audit/verify", Some(&auditor), Some("audit"), None)
            .await;
        assert_eq!(s, StatusCode::OK);
        // A made-up token is still refused.
        let (s, _) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}?fields=phone"),
                Some("pvt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        let events = t.events().await;
        let keyed: Vec<(&str, Option<&str>)> = events
            .iter()
            .filter(|e| e.action.starts_with("key."))
            .map(|e| (e.action.as_str(), e.target.as_deref()))
            .collect();
        assert!(keyed.contains(&("key.rotate", Some("token_hash:v2"))), "{keyed:?}");
        assert!(keyed.contains(&("key.retire", Some("token_hash:v1"))), "{keyed:?}");
        let (ok, said) = t.cli(&["audit", "verify"]);
        assert!(ok, "{said}");
    }
);

both_stores!(
    a_rotation_started_over_http_runs_inside_the_server_one_at_a_time,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let admin = t.token("admin", &["admin"]).await;
        let mut subjects = Vec::new();
        for i in 0..5 {
            let phone = format!("139{:08}", 60_000_000 + i);
            subjects.push((t.create(&dsr, json!({"phone": phone})).await, phone));
        }
        let post = |token: Option<&str>, purpose: Option<&str>, body: Value| {
            let (client, base) = (t.client.clone(), t.base.clone());
            let (token, purpose) = (token.map(str::to_owned), purpose.map(str::to_owned));
            async move {
                call_at(
                    &client,
                    &base,
                    Method::POST,
                    "/v1/keys/rotations",
                    token.as_deref(),
                    purpose.as_deref(),
                    Some(&body),
                )
                .await
            }
        };
        // Bad requests and other roles are refused before anything starts.
        let (s, b) = post(Some(&admin), Some("admin"), json!({"kind": "everything"})).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("unknown_rotation"))
        );
        let (s, b) = post(
            Some(&admin),
            Some("admin"),
            json!({"kind": "data", "batch": 0}),
        )
        .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_rotation"))
        );
        let (s, _) = post(Some(&dsr), Some("dsr"), json!({"kind": "data"})).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = post(None, None, json!({"kind": "data"})).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        // Paced to one subject a second, the five take at least four seconds, so the
        // second request meets the first still running.
        let (s, b) = post(
            Some(&admin),
            Some("admin"),
            json!({"kind": "data", "batch": 1, "max_rate": 1}),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        let (s, b) = post(Some(&admin), Some("admin"), json!({"kind": "master"})).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("rotation_running")),
            "{b}"
        );

        let inventory = || async {
            t.call(Method::GET, "/v1/keys", Some(&admin), Some("admin"), None)
                .await
                .1
        };
        wait_for("the re-encryption to finish", || async {
            let i = inventory().await;
            i["reencryption_cursor"].is_null() && i["items_under_retired_keys"] == 0
        })
        .await;
        wait_for("the rotation slot to be free", || async {
            !t.app.rotation.load(Ordering::Acquire)
        })
        .await;
        for (id, phone) in &subjects {
            assert_eq!(
                read_field(&t, &dsr, "dsr", id, "phone").await.1,
                phone.as_str()
            );
        }
        // Everything it did is in the trail under the admin's request.
        let events = t.events().await;
        let requested = events
            .iter()
            .find(|e| e.action == "key.rotate" && e.reason == "requested")
            .expect("the request is audited");
        let batches: Vec<_> = events
            .iter()
            .filter(|e| e.action == "key.reencrypt")
            .collect();
        assert_eq!(batches.len(), 5);
        for e in batches.iter().copied().chain(
            events
                .iter()
                .filter(|e| e.action == "key.rotate" && e.reason == "finished"),
        ) {
            assert_eq!(e.actor_token, requested.actor_token);
            assert_eq!(e.request_id, requested.request_id);
        }
        // Now a master-key rotation can start, and finishes the same way.
        let (s, b) = post(Some(&admin), Some("admin"), json!({"kind": "master"})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        wait_for("the master-key rotation to finish", || async {
            wrapped_under(&t).await.get(&1).copied().unwrap_or(0) == 0
                && !t.app.rotation.load(Ordering::Acquire)
        })
        .await;
        for (id, phone) in &subjects {
            assert_eq!(
                read_field(&t, &dsr, "dsr", id, "phone").await.1,
                phone.as_str()
            );
        }
        // And a blind-index rotation: every subject indexed again under version 2.
        let (s, b) = post(Some(&admin), Some("admin"), json!({"kind": "blind_index"})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        wait_for("the blind-index rotation to finish", || async {
            t.events().await.iter().any(|e| {
                e.action == "key.rotate"
                    && e.target.as_deref() == Some("blind_index:v2")
                    && e.reason == "finished"
            }) && !t.app.rotation.load(Ordering::Acquire)
        })
        .await;
        for (id, phone) in &subjects {
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
        let (ok, said) = t.cli(&["keys", "retire", "--blind-index", "1"]);
        assert!(ok, "{said}");

        // And a token-hash rotation: the tokens issued before it keep working and move
        // to version 2 as they are used; then version 1 can be retired.
        let (s, b) = post(Some(&admin), Some("admin"), json!({"kind": "token_hash"})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        wait_for("the token-hash rotation to finish", || async {
            !t.app.rotation.load(Ordering::Acquire)
                && t.app.vault.keys().0.system_versions().1 == vec![2, 1]
        })
        .await;
        assert!(t.events().await.iter().any(|e| e.action == "key.rotate"
            && e.target.as_deref() == Some("token_hash:v2")
            && e.reason == "started"));
        for (id, phone) in &subjects {
            assert_eq!(
                read_field(&t, &dsr, "dsr", id, "phone").await.1,
                phone.as_str()
            );
        }
        // The two tokens used since (dsr, admin) are under version 2 now.
        wait_for(
            "the tokens used to move to token-hash version 2",
            || async {
                let (id, phone) = &subjects[0];
                assert_eq!(
                    read_field(&t, &dsr, "dsr", id, "phone").await.1,
                    phone.as_str()
                );
                let (s, b) = t
                    .call(Method::GET, "/v1/keys", Some(&admin), Some("admin"), None)
                    .await;
                s == StatusCode::OK
                    && b["keys"].as_array().unwrap().iter().any(|k| {
                        k["kind"] == "token_hash"
                            && k["version"] == 2
                            && k["items"].as_i64() >= Some(2)
                    })
            },
        )
        .await;
        let (ok, said) = t.cli(&["audit", "verify"]);
        assert!(ok, "{said}");
    }
);
