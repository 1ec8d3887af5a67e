//! The audit trail: exactly the expected event for every action, append-only storage,
//! tampering detected and located, fail-closed reads, several vault nodes on one chain.

use std::time::Duration;

use piivault::store::AuditRow;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::AnyPool;

use crate::both_stores;
use crate::helpers::*;

type Expect = (
    &'static str,
    bool,
    Option<&'static str>,
    &'static str,
    &'static str,
);

/// Runs one call and checks the events it appended: (action, has subject, field,
/// decision, reason), all by the calling token, for its purpose and request id.
#[allow(clippy::too_many_arguments)]
async fn expect_events(
    t: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    purpose: &str,
    body: Option<Value>,
    status: StatusCode,
    expected: &[Expect],
) -> (Value, Vec<AuditRow>) {
    let before = t.events().await.len();
    // Who the token is, as the events must name it.
    let caller = t.app.tokens.authenticate(token).await.ok();
    let started = now_ms();
    let (s, b, rid) = t
        .call_rid(method.clone(), path, token, purpose, body.as_ref())
        .await;
    assert_eq!(s, status, "{method} {path}: {b}");
    let after = t.events().await;
    let new: Vec<AuditRow> = after[before..].to_vec();
    let got: Vec<(String, bool, Option<String>, String, String)> = new
        .iter()
        .map(|e| {
            (
                e.action.clone(),
                e.subject.is_some(),
                e.field.clone(),
                e.decision.clone(),
                e.reason.clone(),
            )
        })
        .collect();
    let want: Vec<(String, bool, Option<String>, String, String)> = expected
        .iter()
        .map(|(a, s, f, d, r)| {
            (
                a.to_string(),
                *s,
                f.map(str::to_owned),
                d.to_string(),
                r.to_string(),
            )
        })
        .collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted, "{method} {path}");
    let ended = now_ms();
    for e in &new {
        assert_eq!(e.request_id, rid, "event carries the request id");
        assert_eq!(e.purpose, purpose);
        let caller = caller.as_ref().expect("the calling token is valid");
        assert_eq!(
            (e.actor_token.as_str(), e.actor_role.as_str()),
            (caller.token_id.as_str(), caller.role.as_str()),
            "the event names the calling token and its role"
        );
        assert!(
            (started..=ended).contains(&e.ts),
            "event {} at {} outside the request ({started}..{ended})",
            e.seq,
            e.ts
        );
    }
    (b, new)
}

both_stores!(every_audited_action_produces_its_event, |db| async move {
    let t = spawn_app(db).await;
    let dsr = t.dsr().await;
    let cs = t.token("customer_service", &["service"]).await;
    let billing = t.token("billing", &["billing"]).await;
    let admin = t.token("admin", &["admin"]).await;
    let auditor = t.token("auditor", &["audit"]).await;
    let ok = StatusCode::OK;

    let (b, new) = expect_events(
        &t,
        Method::POST,
        "/v1/subjects",
        &dsr,
        "dsr",
        Some(json!({"fields": {"name": "蒋十四", "phone": "13611112222"}})),
        StatusCode::CREATED,
        &[
            ("create", true, Some("name"), "allow", "ok"),
            ("create", true, Some("phone"), "allow", "ok"),
        ],
    )
    .await;
    let id = b["id"].as_str().unwrap().to_owned();
    assert!(new
        .iter()
        .all(|e| e.subject.as_deref() == Some(id.as_str()) && e.actor_role == "dsr_handler"));

    expect_events(
        &t,
        Method::GET,
        &format!("/v1/subjects/{id}?fields=name,phone,id_number"),
        &cs,
        "service",
        None,
        ok,
        &[
            ("read_masked", true, Some("name"), "allow", "ok"),
            ("read_masked", true, Some("phone"), "allow", "ok"),
            ("read", true, Some("id_number"), "deny", "policy_denied"),
        ],
    )
    .await;
    expect_events(
        &t,
        Method::GET,
        &format!("/v1/subjects/{id}?fields=phone"),
        &billing,
        "billing",
        None,
        StatusCode::FORBIDDEN,
        &[("read", true, Some("phone"), "deny", "policy_denied")],
    )
    .await;
    expect_events(
        &t,
        Method::GET,
        &format!("/v1/subjects/{id}?fields=name"),
        &billing,
        "dsr",
        None,
        StatusCode::FORBIDDEN,
        &[("access", false, None, "deny", "purpose_not_allowed")],
    )
    .await;
    expect_events(
        &t,
        Method::PATCH,
        &format!("/v1/subjects/{id}"),
        &dsr,
        "dsr",
        Some(json!({"fields": {"phone": "13633334444"}})),
        ok,
        &[("correct", true, Some("phone"), "allow", "ok")],
    )
    .await;
    expect_events(
        &t,
        Method::PATCH,
        &format!("/v1/subjects/{id}"),
        &cs,
        "service",
        Some(json!({"fields": {"phone": "13633334444"}})),
        StatusCode::FORBIDDEN,
        &[("correct", true, Some("phone"), "deny", "policy_denied")],
    )
    .await;
    expect_events(
        &t,
        Method::POST,
        "/v1/subjects/lookup",
        &dsr,
        "dsr",
        Some(json!({"field": "phone", "value": "13633334444"})),
        ok,
        &[("lookup", true, Some("phone"), "allow", "ok")],
    )
    .await;
    expect_events(
        &t,
        Method::POST,
        "/v1/subjects/lookup",
        &dsr,
        "dsr",
        Some(json!({"field": "phone", "value": "13600000000"})),
        ok,
        &[("lookup", false, Some("phone"), "allow", "no_match")],
    )
    .await;
    let (b, new) = expect_events(
        &t,
        Method::POST,
        &format!("/v1/subjects/{id}/records/payments"),
        &billing,
        "billing",
        Some(json!({"amount": "9.90"})),
        StatusCode::CREATED,
        &[("record.add", true, Some("payments"), "allow", "ok")],
    )
    .await;
    assert_eq!(new[0].target.as_deref(), b["id"].as_str());
    let (_, new) = expect_events(
        &t,
        Method::GET,
        &format!("/v1/subjects/{id}/records/payments"),
        &billing,
        "billing",
        None,
        ok,
        &[("record.read", true, Some("payments"), "allow", "ok")],
    )
    .await;
    assert_eq!(new[0].target.as_deref(), b["id"].as_str());
    expect_events(
        &t,
        Method::GET,
        &format!("/v1/subjects/{id}/records/payments"),
        &cs,
        "service",
        None,
        StatusCode::FORBIDDEN,
        &[(
            "record.read",
            true,
            Some("payments"),
            "deny",
            "policy_denied",
        )],
    )
    .await;
    expect_events(
        &t,
        Method::DELETE,
        &format!("/v1/subjects/{id}"),
        &cs,
        "service",
        None,
        StatusCode::FORBIDDEN,
        &[("erase", true, None, "deny", "policy_denied")],
    )
    .await;
    expect_events(
        &t,
        Method::DELETE,
        &format!("/v1/subjects/{id}"),
        &dsr,
        "dsr",
        None,
        ok,
        &[("erase", true, None, "allow", "ok")],
    )
    .await;
    expect_events(
        &t,
        Method::GET,
        &format!("/v1/subjects/{id}?fields=name"),
        &dsr,
        "dsr",
        None,
        StatusCode::NOT_FOUND,
        &[("read", true, None, "error", "subject_not_found")],
    )
    .await;
    expect_events(
        &t,
        Method::POST,
        "/v1/subjects",
        &dsr,
        "dsr",
        Some(json!({"fields": {"phone": "12345"}})),
        StatusCode::UNPROCESSABLE_ENTITY,
        // The change and its events commit together: a create refused by validation
        // leaves one error event and no allow event.
        &[("create", true, None, "error", "mobile_format")],
    )
    .await;
    let (b, new) = expect_events(
        &t,
        Method::POST,
        "/v1/tokens",
        &admin,
        "admin",
        Some(json!({"role": "billing", "purposes": ["billing"], "ttl_seconds": 60})),
        StatusCode::CREATED,
        &[("token.issue", false, None, "allow", "ok")],
    )
    .await;
    let tok_id = b["id"].as_str().unwrap().to_owned();
    assert_eq!(new[0].target.as_deref(), Some(tok_id.as_str()));
    let (_, new) = expect_events(
        &t,
        Method::DELETE,
        &format!("/v1/tokens/{tok_id}"),
        &admin,
        "admin",
        None,
        ok,
        &[("token.revoke", false, None, "allow", "ok")],
    )
    .await;
    assert_eq!(new[0].target.as_deref(), Some(tok_id.as_str()));
    expect_events(
        &t,
        Method::GET,
        "/v1/audit/verify",
        &auditor,
        "audit",
        None,
        ok,
        &[("audit.verify", false, None, "allow", "ok")],
    )
    .await;
    expect_events(
        &t,
        Method::GET,
        "/v1/audit/verify",
        &dsr,
        "dsr",
        None,
        StatusCode::FORBIDDEN,
        &[("audit.verify", false, None, "deny", "policy_denied")],
    )
    .await;

    // No event holds a value.
    let all = format!("{:?}", t.events().await);
    for value in ["蒋十四", "13611112222", "13633334444", "9.90"] {
        assert!(!all.contains(value), "{value} in the audit trail");
    }
    let (s, b) = verify_over_http(&t, &auditor).await;
    assert_eq!(s, ok);
    assert_eq!(b["ok"], true, "{b}");
});

async fn seeded(db: Db) -> (TestApp, String) {
    let t = spawn_app(db).await;
    let dsr = t.dsr().await;
    for i in 0..5 {
        let id = t
            .create(
                &dsr,
                json!({"name": format!("审计{i}"), "phone": "13711112222"}),
            )
            .await;
        t.call(
            Method::GET,
            &format!("/v1/subjects/{id}"),
            Some(&dsr),
            Some("dsr"),
            None,
        )
        .await;
    }
    checkpoint_at_head(&t).await;
    (t, dsr)
}

/// Signs a checkpoint of the head now, unless the background signer already has: either
/// way a signed checkpoint covers the head afterwards.
async fn checkpoint_at_head(t: &TestApp) {
    t.app.audit.checkpoint_now().await.unwrap();
    let head = t.events().await.last().unwrap().seq;
    let signed = t.app.store.checkpoints().await.unwrap();
    assert!(
        signed.iter().any(|c| c.seq == head),
        "no checkpoint at the head"
    );
}

async fn unlock(t: &TestApp, raw: &AnyPool) {
    match t.db {
        Db::Sqlite => {
            for trig in [
                "audit_events_no_update",
                "audit_events_no_delete",
                "audit_checkpoints_no_update",
                "audit_checkpoints_no_delete",
            ] {
                sqlx::query(&format!("DROP TRIGGER {trig}"))
                    .execute(raw)
                    .await
                    .unwrap();
            }
        }
        Db::Postgres => {
            for table in ["audit_events", "audit_checkpoints"] {
                sqlx::query(&format!("ALTER TABLE {table} DISABLE TRIGGER USER"))
                    .execute(raw)
                    .await
                    .unwrap();
            }
        }
    }
}

async fn report(t: &TestApp) -> piivault::audit::VerifyReport {
    t.app.verify_audit().await.unwrap()
}

/// `GET /v1/audit/verify` as an auditor.
async fn verify_over_http(t: &TestApp, auditor: &str) -> (StatusCode, Value) {
    t.call(
        Method::GET,
        "/v1/audit/verify",
        Some(auditor),
        Some("audit"),
        None,
    )
    .await
}

/// A seeded trail changed by `statements` (its triggers dropped first), verified; an
/// auditor asking over HTTP (`GET /v1/audit/verify`) is told the same.
async fn tampered(db: Db, statements: &[&str]) -> piivault::audit::VerifyReport {
    let (t, _) = seeded(db).await;
    let raw = t.raw().await;
    unlock(&t, &raw).await;
    for sql in statements {
        sqlx::query(sql).execute(&raw).await.unwrap();
    }
    let r = report(&t).await;
    let auditor = t.token("auditor", &["audit"]).await;
    let (s, b) = verify_over_http(&t, &auditor).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["ok"], json!(r.ok), "{b}");
    assert_eq!(b["first_bad_seq"], json!(r.first_bad_seq), "{b}");
    assert_eq!(b["reason"], json!(r.reason), "{b}");
    r
}

both_stores!(the_trail_refuses_update_and_delete, |db| async move {
    let (t, _) = seeded(db).await;
    let raw = t.raw().await;
    assert!(
        sqlx::query("UPDATE audit_events SET reason = 'x' WHERE seq = 1")
            .execute(&raw)
            .await
            .is_err()
    );
    assert!(sqlx::query("DELETE FROM audit_events WHERE seq = 1")
        .execute(&raw)
        .await
        .is_err());
    assert!(sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&raw)
        .await
        .is_err());
    if db == Db::Postgres {
        assert!(sqlx::query("TRUNCATE audit_events")
            .execute(&raw)
            .await
            .is_err());
    }
    assert!(report(&t).await.ok);
});

both_stores!(
    packed_pages_read_exactly_what_the_rows_hold,
    |db| async move {
        // `audit verify` reads events packed by the database; every value must come back
        // byte for byte, absent apart from empty, whatever the text holds.
        let t = spawn_app(db).await;
        let odd = [
            ("", Some("")),
            ("3:abc", None),
            ("-", Some("12:")),
            ("审计 ✓ ünïcødé", Some("a,b:c-")),
            ("tab\tnewline\n", Some("\u{1F600}")),
        ];
        let events = odd
            .iter()
            .map(|(reason, target)| {
                let e = piivault::audit::Event::new("tok_odd", "auditor", "audit", reason, "read")
                    .outcome(piivault::audit::Decision::Deny, reason);
                match target {
                    Some(v) => e.target(v).field(""),
                    None => e.subject("sub_0"),
                }
            })
            .collect();
        t.app.audit.record(events).await.unwrap();
        let rows = t.events().await;
        let head = rows.last().unwrap().seq;
        for (after, through) in [(0, head), (1, head - 1), (head, head + 10)] {
            let packed = t.app.store.audit_packed(after, through).await.unwrap();
            let read: Vec<_> = packed.iter().map(|r| format!("{:?}", r.unwrap())).collect();
            let expected: Vec<_> = rows
                .iter()
                .filter(|r| r.seq > after && r.seq <= through)
                .map(|r| format!("{:?}", r.borrowed()))
                .collect();
            assert_eq!(read, expected, "events {after}..={through}");
        }
        assert!(report(&t).await.ok);
    }
);

// Verification checks each page of events apart and then joins the pages: a break
// on either side of a page boundary, or across it, is found at the event where it is.
both_stores!(
    a_break_at_a_page_boundary_is_found_where_it_is,
    |db| async move {
        let page = piivault::audit::VERIFY_PAGE;
        // A trail of a little over two pages, ending in a signed checkpoint.
        let long = || async {
            let (t, _) = seeded(db).await;
            let have = t.events().await.len() as i64;
            let events: Vec<_> = (have..2 * page + 5)
                .map(|i| {
                    piivault::audit::Event::new(
                        "tok_x",
                        "auditor",
                        "audit",
                        &format!("req_{i}"),
                        "read",
                    )
                })
                .collect();
            for chunk in events.chunks(5_000) {
                t.app.audit.record(chunk.to_vec()).await.unwrap();
            }
            checkpoint_at_head(&t).await;
            assert!(report(&t).await.ok);
            t
        };
        // Each break on a trail of its own: the statement that makes it, the event where
        // it must be found, and what the reason must say.
        let cases = [
            // The last event of the first page altered.
            (
                format!("UPDATE audit_events SET decision = 'deny' WHERE seq = {page}"),
                page,
                "altered",
            ),
            // The first event of the second page no longer links to the page before.
            (
                format!(
                    "UPDATE audit_events SET prev_hash = hash WHERE seq = {}",
                    page + 1
                ),
                page + 1,
                "does not link",
            ),
            // The first event of the second page removed: a gap across the boundary.
            (
                format!("DELETE FROM audit_events WHERE seq = {}", page + 1),
                page + 1,
                "sequence gap",
            ),
            // A break deep in the third page, behind two good ones.
            (
                format!(
                    "UPDATE audit_events SET reason = 'other' WHERE seq = {}",
                    2 * page + 3
                ),
                2 * page + 3,
                "",
            ),
        ];
        for (sql, at, says) in cases {
            let t = long().await;
            let raw = t.raw().await;
            unlock(&t, &raw).await;
            sqlx::query(&sql).execute(&raw).await.unwrap();
            let r = report(&t).await;
            assert_eq!((r.ok, r.first_bad_seq), (false, Some(at)), "{sql}: {r:?}");
            assert!(
                r.reason.as_deref().unwrap_or("").contains(says),
                "{sql}: {r:?}"
            );
        }
    }
);

both_stores!(tampering_is_detected_and_located, |db| async move {
    // A changed field.
    let r = tampered(
        db,
        &["UPDATE audit_events SET decision = 'deny' WHERE seq = 5"],
    )
    .await;
    assert_eq!((r.ok, r.first_bad_seq), (false, Some(5)), "{r:?}");
    assert!(r.reason.unwrap().contains("altered"));

    // Bytes that are not text where text belongs (SQLite stores what it is given).
    if db == Db::Sqlite {
        let r = tampered(
            db,
            &["UPDATE audit_events SET reason = X'ff00fe' WHERE seq = 6"],
        )
        .await;
        assert_eq!((r.ok, r.first_bad_seq), (false, Some(6)), "{r:?}");
        assert!(r.reason.unwrap().contains("cannot be read"));
    }

    // A deleted row.
    let r = tampered(db, &["DELETE FROM audit_events WHERE seq = 7"]).await;
    assert_eq!((r.ok, r.first_bad_seq), (false, Some(7)), "{r:?}");

    // Two rows swapped.
    let r = tampered(
        db,
        &[
            "UPDATE audit_events SET seq = -3 WHERE seq = 3",
            "UPDATE audit_events SET seq = 3 WHERE seq = 4",
            "UPDATE audit_events SET seq = 4 WHERE seq = -3",
        ],
    )
    .await;
    assert_eq!((r.ok, r.first_bad_seq), (false, Some(3)), "{r:?}");

    // A naively forged row at the end.
    let (t, _) = seeded(db).await;
    let raw = t.raw().await;
    let events = t.events().await;
    let last = events.last().unwrap();
    let forged_seq = last.seq + 1;
    sqlx::query(
        "INSERT INTO audit_events (seq, ts, actor_token, actor_role, action, purpose, decision, reason, request_id, prev_hash, hash) \
         VALUES ($1, $2, 'tok_x', 'auditor', 'read', 'audit', 'allow', 'ok', 'req_x', $3, $3)",
    )
    .bind(forged_seq)
    .bind(last.ts)
    .bind(vec![7u8; 32])
    .execute(&raw)
    .await
    .unwrap();
    let r = report(&t).await;
    assert_eq!((r.ok, r.first_bad_seq), (false, Some(forged_seq)), "{r:?}");

    // A forged row slipped into the middle by someone who recomputes the whole chain:
    // every link is valid again, but the signed checkpoint disowns it.
    let (t, _) = seeded(db).await;
    let raw = t.raw().await;
    unlock(&t, &raw).await;
    let mut events = t.events().await;
    let mut forged = events[4].clone();
    forged.action = "erase".into();
    forged.subject = Some("sub_00000000000000000000000000000000".into());
    events.insert(5, forged);
    sqlx::query("DELETE FROM audit_events")
        .execute(&raw)
        .await
        .unwrap();
    let mut prev = vec![0u8; 32];
    for (i, e) in events.iter_mut().enumerate() {
        e.seq = i as i64 + 1;
        e.prev_hash = prev.clone();
        e.hash = piivault::audit::chain_hash(e.borrowed()).to_vec();
        prev = e.hash.clone();
        insert_event_row(&raw, e).await;
    }
    let r = report(&t).await;
    assert!(!r.ok, "{r:?}");
    // Located to the stretch after the last checkpoint that still matches.
    assert!(r.first_bad_seq.unwrap() <= 6, "{r:?}");
    assert!(r.reason.as_deref().unwrap().contains("rewritten"), "{r:?}");

    // The tail cut after a checkpoint, checkpoints in the database deleted too: the
    // checkpoint file still catches it.
    let (t, _) = seeded(db).await;
    let raw = t.raw().await;
    unlock(&t, &raw).await;
    let head = t.events().await.last().unwrap().seq;
    sqlx::query("DELETE FROM audit_events WHERE seq > $1")
        .bind(head - 4)
        .execute(&raw)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&raw)
        .await
        .unwrap();
    let r = report(&t).await;
    assert_eq!((r.ok, r.first_bad_seq), (false, Some(head - 3)), "{r:?}");
    assert!(r.reason.as_deref().unwrap().contains("cut"), "{r:?}");

    // The command line agrees, with a non-zero exit status, from the public key alone.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_piivault"))
        .args(["audit", "verify", "--data-dir"])
        .arg(t.dir.path())
        .arg("--database-url")
        .arg(&t.database_url)
        .env_remove("PIIVAULT_MASTER_KEY")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("BROKEN at event {}", head - 3)),
        "{text}"
    );
    std::fs::remove_file(t.dir.path().join("master.key")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_piivault"))
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(t.dir.path())
        .arg("--database-url")
        .arg(&t.database_url)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "verify works without the master key: {v}");
});

both_stores!(
    reads_fail_closed_when_the_audit_cannot_be_written,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let id = t
            .create(
                &dsr,
                json!({"name": "韩十五", "id_number": "11010519491231002X"}),
            )
            .await;
        let raw = t.raw().await;
        match db {
            Db::Sqlite => {
                sqlx::query("CREATE TRIGGER block_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'blocked'); END")
                .execute(&raw).await.unwrap();
            }
            Db::Postgres => {
                sqlx::query("CREATE FUNCTION block_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'blocked'; END; $$")
                .execute(&raw).await.unwrap();
                sqlx::query("CREATE TRIGGER block_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION block_audit()")
                .execute(&raw).await.unwrap();
            }
        }
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert_eq!(b["error"]["code"], "audit_unavailable");
        assert_no_value(&b, "韩十五");
        assert_no_value(&b, "11010519491231002X");
        // No change without its event either.
        let (n_before,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM subjects")
            .fetch_one(&raw)
            .await
            .unwrap();
        let (s, _) = t
            .call(
                Method::POST,
                "/v1/subjects",
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"fields": {"name": "x"}})),
            )
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        let (s, _) = t
            .call(
                Method::DELETE,
                &format!("/v1/subjects/{id}"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        let (n_after,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM subjects WHERE erased_at IS NULL")
                .fetch_one(&raw)
                .await
                .unwrap();
        assert_eq!(n_before, n_after);
        // Once the trail is writable again, reads work.
        let drop = match db {
            Db::Sqlite => "DROP TRIGGER block_audit",
            Db::Postgres => "DROP TRIGGER block_audit ON audit_events",
        };
        sqlx::query(drop).execute(&raw).await.unwrap();
        let (s, _) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vault_nodes_on_one_postgres_build_one_valid_chain() {
    if postgres_url().is_none() {
        return;
    }
    let a = spawn_app(Db::Postgres).await;
    // A second node: same store and master key, its own audit signing key.
    let mut settings_b = settings(a.dir.path(), a.database_url.clone());
    let dir_b = tempfile::tempdir().unwrap();
    settings_b.audit_key_file = dir_b.path().join("node-b.key");
    let app_b = piivault::open(&settings_b).await.unwrap();
    let mut opts = piivault::ServeOptions::new("127.0.0.1:0".parse().unwrap());
    opts.policy_reload = Duration::from_secs(60);
    let server_b = piivault::start(&app_b, &settings_b, &opts).await.unwrap();
    let base_b = format!("https://localhost:{}", server_b.addr.port());
    let dsr = a.dsr().await;

    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = a.client.clone();
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            base_b.clone()
        };
        let dsr = dsr.clone();
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(format!("{base}/v1/subjects"))
                .bearer_auth(&dsr)
                .header("X-Purpose", "dsr")
                .json(&json!({"fields": {"name": format!("节点{i}"), "phone": "13812345678"}}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::CREATED);
            let id: Value = resp.json().await.unwrap();
            let id = id["id"].as_str().unwrap().to_owned();
            let resp = client
                .get(format!("{base}/v1/subjects/{id}"))
                .bearer_auth(&dsr)
                .header("X-Purpose", "dsr")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    a.app.audit.checkpoint_now().await.unwrap();
    app_b.audit.checkpoint_now().await.unwrap();
    let events = a.events().await;
    assert_eq!(
        events.len(),
        1 + 40 * 2 + 40 * 2,
        "the token issued, then 2 creates + 2 reads per subject"
    );
    let keys = vec![
        a.app.audit.key().unwrap().public().clone(),
        app_b.audit.key().unwrap().public().clone(),
    ];
    let r = piivault::audit::verify(&a.app.store, &keys, &[])
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.events, 161);
    assert!(r.checkpoints >= 2, "both nodes signed: {r:?}");
    server_b.shutdown().await.unwrap();
}

both_stores!(archives_verify_on_their_own, |db| async move {
    let (t, _) = seeded(db).await;
    let archive = t.dir.path().join("trail.jsonl");
    let run = |args: &[&str]| t.cli(args);
    let path = archive.to_str().unwrap();
    let (ok, text) = run(&["audit", "archive", "--out", path]);
    assert!(ok, "{text}");
    let (ok, text) = run(&["audit", "verify", "--archive", path]);
    assert!(ok, "{text}");
    assert!(text.starts_with("OK: "), "{text}");
    // Refuses to overwrite.
    assert!(!run(&["audit", "archive", "--out", path]).0);

    let original = std::fs::read_to_string(&archive).unwrap();
    // An altered event in the archive.
    let altered: Vec<String> = original
        .lines()
        .map(|l| {
            if l.contains("\"seq\":4,") && l.starts_with("{\"event\"") {
                l.replace("\"allow\"", "\"deny\"")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&archive, altered.join("\n")).unwrap();
    let (ok, text) = run(&["audit", "verify", "--archive", path]);
    assert!(!ok);
    assert!(text.contains("BROKEN at event 4"), "{text}");
    // Events cut from the archive, its checkpoints kept.
    let cut: Vec<&str> = original
        .lines()
        .filter(|l| {
            !(l.starts_with("{\"event\"")
                && (l.contains("\"seq\":19,")
                    || l.contains("\"seq\":20,")
                    || l.contains("\"seq\":21,")))
        })
        .collect();
    std::fs::write(&archive, cut.join("\n")).unwrap();
    let (ok, text) = run(&["audit", "verify", "--archive", path]);
    assert!(!ok, "{text}");
    assert!(text.contains("cut"), "{text}");
});

both_stores!(
    pruning_archives_then_removes_and_keeps_the_chain_verifiable,
    |db| async move {
        let (t, dsr) = seeded(db).await;
        let head_at_checkpoint = t.events().await.last().unwrap().seq;
        // Later events that stay.
        let id = t.create(&dsr, json!({"name": "留下"})).await;
        let archive = t.dir.path().join("pruned.jsonl");
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let run = |args: &[&str]| t.cli(args);
        let path = archive.to_str().unwrap();
        // Within the retention period (3 years by default): refused, nothing written.
        let (ok, text) = run(&["audit", "prune", "--before", &now, "--archive", path]);
        assert!(!ok && text.contains("must be kept"), "{text}");
        assert!(!archive.exists());
        // With the retention lowered to zero days: archived up to the checkpoint, then removed.
        let (ok, text) = run(&[
            "audit",
            "prune",
            "--before",
            &now,
            "--archive",
            path,
            "--retention-days",
            "0",
        ]);
        assert!(ok, "{text}");
        // Cut exactly at a signed checkpoint: the one made at the head above, or a newer
        // one if the background signer made one since (it may, on its own schedule).
        let (anchor, anchor_hash) = t.app.store.audit_anchor().await.unwrap().unwrap();
        assert!(
            anchor >= head_at_checkpoint,
            "{anchor} < {head_at_checkpoint}"
        );
        assert!(
            t.app
                .store
                .checkpoints()
                .await
                .unwrap()
                .iter()
                .any(|c| c.seq == anchor && c.hash == anchor_hash),
            "the anchor is a signed checkpoint"
        );
        let remaining = t.events().await;
        assert_eq!(
            remaining.first().unwrap().seq,
            anchor + 1,
            "pruned exactly up to the checkpoint"
        );
        let r = t.app.verify_audit().await.unwrap();
        assert!(r.ok, "{r:?}");
        let (ok, text) = run(&["audit", "verify", "--archive", path]);
        assert!(ok, "{text}");
        // The vault goes on appending and signing.
        let (s, _) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        checkpoint_at_head(&t).await;
        assert!(t.app.verify_audit().await.unwrap().ok);
        // Rows above the anchor still cannot be deleted.
        let raw = t.raw().await;
        assert!(sqlx::query("DELETE FROM audit_events")
            .execute(&raw)
            .await
            .is_err());
        // An anchor planted by hand, to make a deletion look like pruning, is caught.
        let last = t.events().await.last().unwrap().clone();
        sqlx::query("INSERT INTO audit_anchors (seq, hash, pruned_at) VALUES ($1, $2, 0)")
            .bind(last.seq)
            .bind(vec![9u8; 32])
            .execute(&raw)
            .await
            .unwrap();
        sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
            .bind(last.seq)
            .execute(&raw)
            .await
            .unwrap();
        let r = t.app.verify_audit().await.unwrap();
        assert!(!r.ok);
        assert!(
            r.reason.as_deref().unwrap().contains("forged anchor"),
            "{r:?}"
        );
    }
);

// The audit writer makes a batch's changes without savepoints first; when one fails it
// rolls the batch back and makes it again with a savepoint around each change. Either
// way only the failed change (and its events) is left out.
both_stores!(
    a_failed_change_is_left_out_of_its_batch_and_the_rest_commit,
    |db| async move {
        let t = spawn_app(db).await;
        for _ in 0..3 {
            t.token("customer_service", &["service"]).await;
        }
        let mut ids: Vec<String> = t
            .app
            .store
            .tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids.len(), 3);
        ids.insert(1, "tok_does_not_exist".into());
        // Hold the store's write lock, so the revocations below queue up behind it and are
        // committed together.
        let raw = t.raw().await;
        let mut blocker = raw.acquire().await.unwrap();
        match db {
            Db::Sqlite => {
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut *blocker)
                    .await
                    .unwrap();
            }
            Db::Postgres => {
                sqlx::query("BEGIN").execute(&mut *blocker).await.unwrap();
                sqlx::query("LOCK TABLE audit_events IN EXCLUSIVE MODE")
                    .execute(&mut *blocker)
                    .await
                    .unwrap();
            }
        }
        let tokens = t.app.tokens.clone();
        let all = ids.clone();
        let revocations = tokio::spawn(async move {
            let jobs = all.iter().map(|id| {
                let event = piivault::audit::Event::new(
                    "tok_test",
                    "operator",
                    "admin",
                    "req_batch",
                    "token.revoke",
                )
                .target(id);
                tokens.revoke(id, event)
            });
            futures_util::future::join_all(jobs).await
        });
        // All four are handed over and none answered: the first (at least) is with the
        // blocked writer, the rest (if any) queue behind it and make the next batch, so the
        // one that fails shares a batch with one that does not.
        while t.app.audit.in_flight() < 4 {
            tokio::task::yield_now().await;
        }
        sqlx::query("COMMIT").execute(&mut *blocker).await.unwrap();
        let results: Vec<bool> = revocations
            .await
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(results, [true, false, true, true]);

        let revoked: Vec<String> = t
            .app
            .store
            .tokens()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.revoked_at.is_some())
            .map(|r| r.id)
            .collect();
        assert_eq!(revoked.len(), 3);
        let events = t.events().await;
        for (id, done) in ids.iter().zip(&results) {
            let recorded = events
                .iter()
                .filter(|e| e.action == "token.revoke" && e.target.as_deref() == Some(id.as_str()))
                .count();
            assert_eq!(recorded, usize::from(*done), "events for {id}");
        }
        assert!(report(&t).await.ok);
    }
);
