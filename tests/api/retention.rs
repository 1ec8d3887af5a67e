//! Retention sweeps with a clock the test controls, legal holds, dry runs.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_stores;
use crate::helpers::*;

const DAY: i64 = 86_400_000;

fn items(r: &[piivault::pipl::SweepItem]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .iter()
        .map(|i| (i.subject.clone(), i.name.clone()))
        .collect();
    v.sort();
    v
}

both_stores!(
    sweeps_erase_exactly_what_expired_and_respect_holds,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let cs = t.token("customer_service", &["service"]).await;
        let a = t.create(&dsr, full_subject()).await;
        let c = t
            .create(&dsr, json!({"name": "孔二一", "tags": ["vip"]}))
            .await;
        for (who, col) in [(&a, "payments"), (&a, "feedback")] {
            let (s, _) = t
                .call(
                    Method::POST,
                    &format!("/v1/subjects/{who}/records/{col}"),
                    Some(&dsr),
                    Some("dsr"),
                    Some(&json!({"n": 1})),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED);
        }
        // Hold C.
        let (s, b) = t
            .call(
                Method::PUT,
                &format!("/v1/subjects/{c}/hold"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"case": "CASE-2026-017"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, _) = t
            .call(
                Method::PUT,
                &format!("/v1/subjects/{c}/hold"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"case": "张三的案子"})),
            )
            .await;
        assert_eq!(
            s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "case references are codes"
        );
        let (s, _) = t
            .call(
                Method::PUT,
                &format!("/v1/subjects/{a}/hold"),
                Some(&cs),
                Some("service"),
                Some(&json!({"case": "X"})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        // While held: storage only, and only the roles the policy names may read.
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{c}?fields=name"),
                Some(&cs),
                Some("service"),
                None,
            )
            .await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("legal_hold"))
        );
        let (s, _) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{c}?fields=name"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, b) = t
            .call(
                Method::PATCH,
                &format!("/v1/subjects/{c}"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"fields": {"name": "改"}})),
            )
            .await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("legal_hold"))
        );
        let (s, _) = t
            .call(
                Method::DELETE,
                &format!("/v1/subjects/{c}"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "a hold stops erasure");

        // A held subject is not found by roles that may not read held data.
        let d = t
            .create(&dsr, json!({"name": "周二二", "phone": "13755556666"}))
            .await;
        let (s, _) = t
            .call(
                Method::PUT,
                &format!("/v1/subjects/{d}/hold"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"case": "CASE-2026-018"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let find = json!({"field": "phone", "value": "13755556666"});
        let (_, b) = t
            .call(
                Method::POST,
                "/v1/subjects/lookup",
                Some(&cs),
                Some("service"),
                Some(&find),
            )
            .await;
        assert_eq!(b["ids"], json!([]));
        let (_, b) = t
            .call(
                Method::POST,
                "/v1/subjects/lookup",
                Some(&dsr),
                Some("dsr"),
                Some(&find),
            )
            .await;
        assert_eq!(b["ids"], json!([d]));
        let (s, _) = t
            .call(
                Method::DELETE,
                &format!("/v1/subjects/{d}/hold"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = t
            .call(
                Method::DELETE,
                &format!("/v1/subjects/{d}"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);

        let now = piivault::store::now_ms();
        let sweep = |days: i64, dry: bool| {
            let r = t.app.retention.clone();
            async move { r.sweep(now + days * DAY, dry).await.unwrap() }
        };
        // Nothing has expired today.
        let r = sweep(0, false).await;
        assert!(r.erased.is_empty() && r.held.is_empty());

        // Two years and a day on: tags and tier (2y) and feedback (2y) are due.
        let events_before = t.events().await.len();
        let dry = sweep(731, true).await;
        assert_eq!(items(&dry.erased), {
            let mut v = vec![
                (a.clone(), "tags".to_owned()),
                (a.clone(), "tier".to_owned()),
                (a.clone(), "feedback".to_owned()),
            ];
            v.sort();
            v
        });
        assert_eq!(items(&dry.held), vec![(c.clone(), "tags".to_owned())]);
        // A dry run records only its summary and changes nothing.
        let new = &t.events().await[events_before..];
        assert_eq!(new.len(), 1);
        assert_eq!(
            (new[0].action.as_str(), new[0].reason.as_str()),
            ("retention.sweep", "dry_run")
        );
        let (_, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{a}?fields=tags,tier"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(b["fields"]["tier"]["value"], "gold");

        let real = sweep(731, false).await;
        assert_eq!(items(&real.erased), items(&dry.erased));
        assert_eq!(items(&real.held), items(&dry.held));
        let (_, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{a}?fields=tags,tier,name"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert!(
            b["fields"].get("tags").is_none() && b["fields"].get("tier").is_none(),
            "{b}"
        );
        assert_eq!(b["fields"]["name"]["value"], "欧阳明月");
        let (_, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{a}/records/feedback"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(b["records"], json!([]));
        let (_, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{a}/records/payments"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(b["records"].as_array().unwrap().len(), 1);
        let (_, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{c}?fields=tags"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(
            b["fields"]["tags"]["value"],
            json!(["vip"]),
            "held data is kept"
        );
        // Sweeping again finds nothing new to erase.
        assert!(sweep(731, false).await.erased.is_empty());

        // Five years on, the rest of A is due (payments and bank card at 3y, the rest at 5y).
        let r = sweep(5 * 365 + 1, false).await;
        let names: Vec<String> = r
            .erased
            .iter()
            .filter(|i| i.subject == a)
            .map(|i| i.name.clone())
            .collect();
        for f in [
            "name",
            "id_number",
            "phone",
            "email",
            "address",
            "birth_date",
            "bank_card",
            "payments",
        ] {
            assert!(names.contains(&f.to_owned()), "{f} not erased: {names:?}");
        }
        assert!(r.held.iter().all(|i| i.subject == c));
        // The erased blind index goes with the value.
        let (_, b) = t
            .call(
                Method::POST,
                "/v1/subjects/lookup",
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"field": "phone", "value": "13912345678"})),
            )
            .await;
        assert_eq!(b["ids"], json!([]));

        // Lifting the hold lets the next sweep erase C's expired data.
        let (s, _) = t
            .call(
                Method::DELETE,
                &format!("/v1/subjects/{c}/hold"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let r = sweep(5 * 365 + 1, false).await;
        assert_eq!(items(&r.erased), {
            let mut v = vec![
                (c.clone(), "name".to_owned()),
                (c.clone(), "tags".to_owned()),
            ];
            v.sort();
            v
        });

        // Every sweep is audited and reported; the trail still verifies.
        let auditor = t.token("auditor", &["audit"]).await;
        let (s, b) = t
            .call(
                Method::GET,
                "/v1/audit/reports/retention_sweeps?from=2000-01-01&to=2999-12-31",
                Some(&auditor),
                Some("audit"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let rows = b["rows"].as_array().unwrap();
        let count = |action: &str| rows.iter().filter(|r| r["action"] == action).count();
        assert_eq!(count("retention.erase"), 3 + 9 + 2);
        assert_eq!(count("retention.hold"), 1 + 1 + 2);
        assert_eq!(count("retention.sweep"), 6);
        assert_eq!(
            count("hold.place"),
            3,
            "two placed, one refused to customer service"
        );
        assert_eq!(count("hold.lift"), 2);
        assert!(t.app.verify_audit().await.unwrap().ok);

        // The command line's dry run, against today: nothing due.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_piivault"))
            .args(["retention", "sweep", "--dry-run", "--json", "--data-dir"])
            .arg(t.dir.path())
            .args(["--database-url", &t.database_url, "--policy-dir"])
            .arg(policy_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["dry_run"], true);
        assert_eq!(v["erased"], json!([]));
    }
);

// Sweeps running at once (the scheduled one on each node, an operator's by hand) erase
// each expired value once, and the trail records each erasure once.
both_stores!(
    concurrent_sweeps_erase_and_record_each_value_once,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let mut ids = Vec::new();
        for i in 0..6 {
            ids.push(
                t.create(
                    &dsr,
                    json!({"name": format!("期满{i}"), "phone": "13700000000"}),
                )
                .await,
            );
        }
        let now = piivault::store::now_ms() + (5 * 365 + 1) * DAY;
        let r = &t.app.retention;
        let (a, b, c) = tokio::join!(
            r.sweep(now, false),
            r.sweep(now, false),
            r.sweep(now, false)
        );
        let mut all = Vec::new();
        for report in [a, b, c] {
            all.extend(items(&report.unwrap().erased));
        }
        all.sort();
        let mut want: Vec<(String, String)> = ids
            .iter()
            .flat_map(|id| {
                [
                    (id.clone(), "name".to_owned()),
                    (id.clone(), "phone".to_owned()),
                ]
            })
            .collect();
        want.sort();
        assert_eq!(all, want, "each value erased by exactly one sweep");
        let mut recorded: Vec<(String, String)> = t
            .events()
            .await
            .into_iter()
            .filter(|e| e.action == "retention.erase")
            .map(|e| (e.subject.unwrap(), e.field.unwrap()))
            .collect();
        recorded.sort();
        assert_eq!(recorded, want, "each erasure recorded exactly once");
        assert!(r.sweep(now, false).await.unwrap().erased.is_empty());
    }
);

const SIX_YEARS: i64 = 6 * 365 * DAY;

/// Moves everything stored about `id` six years into the past, as if it had been kept
/// that long (what a sweep run later would find), in one transaction: a sweep sees all
/// of it aged or none.
async fn age_subject(t: &TestApp, id: &str) {
    let raw = t.raw().await;
    let mut tx = raw.begin().await.expect("begin");
    for (table, column) in [("subject_fields", "updated_at"), ("records", "created_at")] {
        sqlx::query(&format!(
            "UPDATE {table} SET {column} = {column} - $1 WHERE subject_id = $2"
        ))
        .bind(SIX_YEARS)
        .bind(id)
        .execute(&mut *tx)
        .await
        .expect("aged");
    }
    tx.commit().await.expect("commit");
    raw.close().await;
}

/// Waits until `id` reads back with none of `fields` set (the server learns of an
/// erasure made by another process from the change feed).
async fn wait_until_erased(t: &TestApp, dsr: &str, id: &str, fields: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}?fields={fields}"),
                Some(dsr),
                Some("dsr"),
                None,
            )
            .await;
        let any_left = fields
            .split(',')
            .any(|f| b["fields"][f]["value"].is_string());
        if s == StatusCode::OK && !any_left {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} still holds its values: {b}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Checks the retention events about `id`, each whole, all from one run with one
/// summary; returns the run's id.
fn assert_sweep_events(
    events: &[piivault::store::AuditRow],
    id: &str,
    between: (i64, i64),
) -> String {
    let erased: Vec<_> = events
        .iter()
        .filter(|e| e.action == "retention.erase" && e.subject.as_deref() == Some(id))
        .collect();
    let mut names: Vec<&str> = erased.iter().filter_map(|e| e.field.as_deref()).collect();
    names.sort();
    assert_eq!(names, ["feedback", "name", "phone"], "{erased:?}");
    let run = erased[0].request_id.clone();
    for e in &erased {
        assert_event(
            e,
            Expect {
                actor_token: "system",
                role: "vault",
                purpose: "retention",
                action: "retention.erase",
                subject: Some(id),
                field: e.field.as_deref(),
                decision: "allow",
                reason: "ok",
                request_id: &run,
                between,
            },
        );
    }
    let summary: Vec<_> = events
        .iter()
        .filter(|e| e.action == "retention.sweep" && e.request_id == run)
        .collect();
    assert_eq!(summary.len(), 1, "one summary per run");
    assert_eq!(summary[0].target.as_deref(), Some("erased=3,held=0"));
    run
}

/// Makes a subject with two fields and a record, and one that stays young.
async fn old_and_young(t: &TestApp, dsr: &str) -> (String, String) {
    let old = t
        .create(dsr, json!({"name": "旧客户甲", "phone": "13700001111"}))
        .await;
    let young = t
        .create(dsr, json!({"name": "新客户乙", "phone": "13700002222"}))
        .await;
    let (s, _) = t
        .call(
            Method::POST,
            &format!("/v1/subjects/{old}/records/feedback"),
            Some(dsr),
            Some("dsr"),
            Some(&json!({"text": "旧的反馈"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    age_subject(t, &old).await;
    (old, young)
}

// `piivault retention sweep` as an operator runs it, beside the running server: a dry
// run changes nothing; the real one erases what expired and nothing else, records each
// erasure whole, and the server stops handing the values out.
both_stores!(the_cli_sweep_erases_what_expired, |db| async move {
    let t = spawn_app(db).await;
    let dsr = t.dsr().await;
    let (old, young) = old_and_young(&t, &dsr).await;
    let sweep = |dry: bool| {
        let mut args = vec!["retention", "sweep", "--json"];
        if dry {
            args.push("--dry-run");
        }
        let (ok, out) = t.cli(&args);
        assert!(ok, "{out}");
        let start = out.find('{').expect("a JSON report");
        let report: serde_json::Value = serde_json::Deserializer::from_str(&out[start..])
            .into_iter()
            .next()
            .expect("one report")
            .expect("JSON");
        let mut items: Vec<(String, String)> = report["erased"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["subject"].as_str().unwrap().to_owned(),
                    i["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        items.sort();
        (report["dry_run"].as_bool(), items)
    };
    let want: Vec<(String, String)> = ["feedback", "name", "phone"]
        .iter()
        .map(|n| (old.clone(), (*n).to_owned()))
        .collect();
    assert_eq!(sweep(true), (Some(true), want.clone()));
    assert_eq!(
        read_field(&t, &dsr, "dsr", &old, "name").await,
        (StatusCode::OK, json!("旧客户甲"))
    );

    let before = now_ms();
    assert_eq!(sweep(false), (Some(false), want));
    let after = now_ms();
    wait_until_erased(&t, &dsr, &old, "name,phone").await;
    let (s, b) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{old}/records/feedback"),
            Some(&dsr),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!((s, b["records"].clone()), (StatusCode::OK, json!([])));
    let (s, b) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{young}?fields=name,phone"),
            Some(&dsr),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["fields"]["name"]["value"], "新客户乙");
    assert_eq!(b["fields"]["phone"]["value"], "13700002222");
    assert_sweep_events(&t.events().await, &old, (before, after));
    // Nothing is left to erase, and the trail verifies.
    assert_eq!(sweep(false).1, Vec::<(String, String)>::new());
    let (ok, out) = t.cli(&["audit", "verify"]);
    assert!(ok, "{out}");
});

// The server's own scheduled sweep does the same without anyone asking.
both_stores!(
    the_servers_scheduled_sweep_erases_what_expired,
    |db| async move {
        let t = spawn_app_with(
            db,
            Options {
                serve: Some(|o| o.retention_sweep = Some(std::time::Duration::from_millis(100))),
                ..Default::default()
            },
        )
        .await;
        let dsr = t.dsr().await;
        let before = now_ms();
        let (old, young) = old_and_young(&t, &dsr).await;
        wait_until_erased(&t, &dsr, &old, "name,phone").await;
        // The erasures are committed with their events: wait for the run's summary.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let events = loop {
            let events = t.events().await;
            if events.iter().any(|e| {
                e.action == "retention.sweep" && e.target.as_deref() == Some("erased=3,held=0")
            }) {
                break events;
            }
            assert!(std::time::Instant::now() < deadline, "no sweep summary");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_sweep_events(&events, &old, (before, now_ms()));
        assert_eq!(
            read_field(&t, &dsr, "dsr", &young, "name").await,
            (StatusCode::OK, json!("新客户乙"))
        );
    }
);
