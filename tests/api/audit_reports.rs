//! Audit reports on a seeded trail: each gives exactly the expected rows.

use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;

async fn report(t: &TestApp, auditor: &str, name: &str, extra: &str) -> Vec<Value> {
    let (s, b) = t
        .call(
            Method::GET,
            &format!("/v1/audit/reports/{name}?from=2000-01-01&to=2999-12-31{extra}"),
            Some(auditor),
            Some("audit"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{name}: {b}");
    b["rows"].as_array().unwrap().clone()
}

fn pick(rows: &[Value], keys: &[&str]) -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = rows
        .iter()
        .map(|r| keys.iter().map(|k| r[*k].clone()).collect())
        .collect();
    out.sort_by_key(|r| format!("{r:?}"));
    out
}

both_stores!(each_report_gives_the_expected_rows, |db| async move {
    let t = spawn_app(db).await;
    let dsr = t.dsr().await;
    let (billing_id, billing) = t
        .token_with_ttl("billing", &["billing"], Duration::from_secs(600))
        .await;
    let cs = t.token("customer_service", &["service"]).await;
    let admin = t.token("admin", &["admin"]).await;
    let auditor = t.token("auditor", &["audit"]).await;

    let a = t.create(&dsr, json!({"name": "秦十六", "id_number": "11010519491231002X", "bank_card": "6222021234567894"})).await;
    let b = t
        .create(&dsr, json!({"name": "尤十七", "phone": "13599998888"}))
        .await;
    let get = |tok: &str, p: &str, path: String| {
        let (tok, p) = (tok.to_owned(), p.to_owned());
        let t = &t;
        async move {
            t.call(Method::GET, &path, Some(&tok), Some(&p), None)
                .await
                .0
        }
    };
    assert_eq!(
        get(
            &billing,
            "billing",
            format!("/v1/subjects/{a}?fields=name,bank_card")
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        get(&cs, "service", format!("/v1/subjects/{b}?fields=phone")).await,
        StatusCode::OK
    );
    assert_eq!(
        get(&cs, "service", format!("/v1/subjects/{a}?fields=id_number")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&dsr, "dsr", format!("/v1/subjects/{a}?fields=id_number")).await,
        StatusCode::OK
    );
    let (s, _) = t
        .call(
            Method::DELETE,
            &format!("/v1/subjects/{b}"),
            Some(&dsr),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, issued) = t
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&admin),
            Some("admin"),
            Some(&json!({"role": "marketing", "purposes": ["marketing"], "ttl_seconds": 60})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let new_tok = issued["id"].as_str().unwrap().to_owned();
    let (s, _) = t
        .call(
            Method::DELETE,
            &format!("/v1/tokens/{new_tok}"),
            Some(&admin),
            Some("admin"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    let rows = report(
        &t,
        &auditor,
        "accesses_by_subject",
        &format!("&subject={a}"),
    )
    .await;
    assert_eq!(
        pick(&rows, &["actor_role", "action", "field", "decision"]),
        pick(
            &[
                json!({"actor_role": "dsr_handler", "action": "create", "field": "name", "decision": "allow"}),
                json!({"actor_role": "dsr_handler", "action": "create", "field": "id_number", "decision": "allow"}),
                json!({"actor_role": "dsr_handler", "action": "create", "field": "bank_card", "decision": "allow"}),
                json!({"actor_role": "billing", "action": "read", "field": "name", "decision": "allow"}),
                json!({"actor_role": "billing", "action": "read", "field": "bank_card", "decision": "allow"}),
                json!({"actor_role": "customer_service", "action": "read", "field": "id_number", "decision": "deny"}),
                json!({"actor_role": "dsr_handler", "action": "read", "field": "id_number", "decision": "allow"}),
            ],
            &["actor_role", "action", "field", "decision"]
        )
    );
    assert!(
        rows.iter()
            .all(|r| r["ts"].as_str().unwrap().ends_with('Z')),
        "times are RFC 3339"
    );

    let rows = report(
        &t,
        &auditor,
        "accesses_by_actor",
        &format!("&token={billing_id}"),
    )
    .await;
    assert_eq!(
        pick(&rows, &["action", "subject", "field"]),
        vec![
            vec![json!("read"), json!(a), json!("bank_card")],
            vec![json!("read"), json!(a), json!("name")],
        ]
    );

    let rows = report(&t, &auditor, "denied_accesses", "").await;
    assert_eq!(
        pick(&rows, &["actor_role", "subject", "field", "reason"]),
        vec![vec![
            json!("customer_service"),
            json!(a),
            json!("id_number"),
            json!("policy_denied")
        ],]
    );

    let rows = report(&t, &auditor, "sensitive_reads_by_purpose", "").await;
    assert_eq!(
        pick(
            &rows,
            &[
                "purpose",
                "actor_role",
                "field",
                "action",
                "reads",
                "subjects"
            ]
        ),
        vec![
            vec![
                json!("billing"),
                json!("billing"),
                json!("bank_card"),
                json!("read"),
                json!(1),
                json!(1)
            ],
            vec![
                json!("dsr"),
                json!("dsr_handler"),
                json!("id_number"),
                json!("read"),
                json!(1),
                json!(1)
            ],
        ]
    );

    let rows = report(&t, &auditor, "exports_and_erasures", "").await;
    assert_eq!(
        pick(&rows, &["action", "subject", "actor_role"]),
        vec![vec![json!("erase"), json!(b), json!("dsr_handler")]]
    );

    assert!(report(&t, &auditor, "consent_changes", "").await.is_empty());

    // Tokens the test harness issued are in the report too; this one's lifecycle:
    let rows: Vec<Value> = report(&t, &auditor, "token_lifecycle", "")
        .await
        .into_iter()
        .filter(|r| r["target"] == json!(new_tok))
        .collect();
    assert_eq!(
        pick(&rows, &["action", "target"]),
        vec![
            vec![json!("token.issue"), json!(new_tok)],
            vec![json!("token.revoke"), json!(new_tok)],
        ]
    );

    let rows = report(&t, &auditor, "incident", &format!("&token={billing_id}")).await;
    assert_eq!(
        pick(&rows, &["subject", "field", "action", "times"]),
        vec![
            vec![json!(a), json!("bank_card"), json!("read"), json!(1)],
            vec![json!(a), json!("name"), json!("read"), json!(1)],
        ]
    );

    // A window that holds nothing; CSV keeps its header.
    let resp = t
        .client
        .get(format!(
            "{}/v1/audit/reports/denied_accesses?from=2001-01-01&to=2001-01-02&format=csv",
            t.base
        ))
        .bearer_auth(&auditor)
        .header("X-Purpose", "audit")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.text().await.unwrap(),
        "seq,ts,actor_token,actor_role,action,subject,field,purpose,reason,request_id\n"
    );

    // Bad requests and other roles.
    let (s, b) = t
        .call(
            Method::GET,
            "/v1/audit/reports/incident?from=2000-01-01&to=2999-12-31",
            Some(&auditor),
            Some("audit"),
            None,
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_report_parameters"))
    );
    let (s, _) = t
        .call(
            Method::GET,
            "/v1/audit/reports/nothing?from=2000-01-01&to=2999-12-31",
            Some(&auditor),
            Some("audit"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t
        .call(
            Method::GET,
            "/v1/audit/reports/denied_accesses?from=2000-01-01",
            Some(&auditor),
            Some("audit"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, b) = t
        .call(
            Method::GET,
            "/v1/audit/reports/denied_accesses?from=2000-01-01&to=2999-12-31",
            Some(&dsr),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("policy_denied"))
    );
    // The values themselves never appear in a report.
    let all = report(
        &t,
        &auditor,
        "accesses_by_subject",
        &format!("&subject={a}"),
    )
    .await;
    assert!(!format!("{all:?}").contains("秦十六"));

    // The command line runs the same reports from the store alone.
    let out = Command::new(env!("CARGO_BIN_EXE_piivault"))
        .args([
            "audit",
            "report",
            "incident",
            "--from",
            "2000-01-01",
            "--to",
            "2999-12-31",
            "--format",
            "csv",
        ])
        .args(["--param", &format!("token={billing_id}"), "--data-dir"])
        .arg(t.dir.path())
        .args(["--database-url", &t.database_url, "--policy-dir"])
        .arg(policy_dir())
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{csv} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "subject,field,action,times,first_ts,last_ts");
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1].starts_with(&format!("{a},bank_card,read,1,")),
        "{csv}"
    );
});

// A window that starts and ends between events (RFC 3339 times to the millisecond):
// exactly the events with from <= ts < to, whole, as the trail holds them.
both_stores!(
    a_report_window_cuts_through_events_exactly,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let auditor = t.token("auditor", &["audit"]).await;
        for i in 0..6 {
            let id = t.create(&dsr, json!({"name": format!("窗口{i}")})).await;
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
            // Events of different milliseconds, so the window can fall between two of them.
            let last = t.events().await.last().unwrap().ts;
            while piivault::store::now_ms() <= last {
                tokio::task::yield_now().await;
            }
        }
        let events = t.events().await;
        let token_id = events
            .iter()
            .rev()
            .find(|e| e.actor_role == "dsr_handler")
            .unwrap()
            .actor_token
            .clone();
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.actor_token == token_id)
            .collect();
        let (from, to) = (mine[3].ts, mine[mine.len() - 3].ts);
        assert!(from < to);
        let rfc = |ms: i64| piivault::store::rfc3339(ms);
        let (s, b) = t
            .call(
                Method::GET,
                &format!(
                    "/v1/audit/reports/accesses_by_actor?from={}&to={}&token={token_id}",
                    rfc(from),
                    rfc(to)
                ),
                Some(&auditor),
                Some("audit"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let rows = b["rows"].as_array().unwrap();
        let want: Vec<_> = mine.iter().filter(|e| e.ts >= from && e.ts < to).collect();
        assert!(!want.is_empty() && want.len() < mine.len());
        assert_eq!(rows.len(), want.len(), "{b}");
        for (row, e) in rows.iter().zip(&want) {
            assert_eq!(row["seq"], json!(e.seq));
            assert_eq!(row["ts"], json!(rfc(e.ts)));
            assert_eq!(row["actor_role"], json!(e.actor_role));
            assert_eq!(row["action"], json!(e.action));
            assert_eq!(row["subject"], json!(e.subject));
            assert_eq!(row["field"], json!(e.field));
            assert_eq!(row["purpose"], json!(e.purpose));
            assert_eq!(row["decision"], json!(e.decision));
            assert_eq!(row["reason"], json!(e.reason));
            assert_eq!(row["request_id"], json!(e.request_id));
        }
    }
);

both_stores!(
    the_compliance_audit_pack_is_signed_reproducible_and_shows_tampering,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let id = t
            .create(
                &dsr,
                json!({"name": "审计包", "id_number": "11010519491231002X"}),
            )
            .await;
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
        let (s, b) = t
            .call(
                Method::POST,
                "/v1/requests",
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"subject": id, "kind": "export"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");

        let dir = tempfile::tempdir().unwrap();
        let pack = |name: &str| {
            let out = dir.path().join(name);
            let (ok, said) = t.cli(&[
                "audit",
                "pack",
                "--from",
                "2000-01-01",
                "--to",
                "2999-12-31",
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(ok, "{said}");
            out
        };
        let first = pack("first");
        let second = pack("second");
        // The same period, the same bytes, file by file.
        let mut names: Vec<String> = std::fs::read_dir(&first)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for name in &names {
            assert_eq!(
                std::fs::read(first.join(name)).unwrap(),
                std::fs::read(second.join(name)).unwrap(),
                "{name}"
            );
        }
        for want in [
            "accesses_by_purpose.csv",
            "sensitive_reads_by_purpose.json",
            "consent_changes.csv",
            "requests_timeliness.csv",
            "incidents.csv",
            "retention_sweeps.json",
            "provisions.csv",
            "transfers_abroad.json",
            "manifest.json",
            "manifest.sig",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        let sensitive =
            std::fs::read_to_string(first.join("sensitive_reads_by_purpose.csv")).unwrap();
        assert!(
            sensitive.contains("dsr,dsr_handler,id_number,read,1,1"),
            "{sensitive}"
        );
        let requests = std::fs::read_to_string(first.join("requests_timeliness.csv")).unwrap();
        assert!(
            requests.contains(&id) && requests.contains(",export,"),
            "{requests}"
        );
        // No value in it.
        for name in &names {
            let text = std::fs::read_to_string(first.join(name)).unwrap();
            assert!(
                !text.contains("11010519491231002X") && !text.contains("审计包"),
                "{name}"
            );
        }

        let verify = |d: &std::path::Path| t.cli(&["audit", "verify-pack", d.to_str().unwrap()]);
        let (ok, said) = verify(&first);
        assert!(ok && said.contains("intact"), "{said}");
        // A report altered after signing: found.
        let csv = first.join("accesses_by_purpose.csv");
        let text = std::fs::read_to_string(&csv).unwrap();
        assert!(text.contains("dsr_handler"), "{text}");
        std::fs::write(&csv, text.replacen("dsr_handler", "auditor", 1)).unwrap();
        let (ok, said) = verify(&first);
        assert!(
            !ok && said.contains("accesses_by_purpose.csv does not match"),
            "{said}"
        );
        // A manifest rewritten to match: its signature no longer verifies.
        let manifest = second.join("manifest.json");
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(text.contains("\"from\": \"2000-01-01T00:00:00"), "{text}");
        std::fs::write(&manifest, text.replacen("2000-01-01", "2001-01-01", 1)).unwrap();
        let (ok, said) = verify(&second);
        assert!(!ok && said.contains("signature does not verify"), "{said}");
        // A pack is never written over an existing directory.
        let (ok, said) = t.cli(&[
            "audit",
            "pack",
            "--from",
            "2000-01-01",
            "--to",
            "2999-12-31",
            "--out",
            first.to_str().unwrap(),
        ]);
        assert!(!ok && said.contains("creating"), "{said}");
    }
);
