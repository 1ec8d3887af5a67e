//! `piivault import`: every line checked first, bad lines reported by line, field and
//! rule (never the value), good lines stored encrypted with one audit event each, the
//! mapping printed, and an interrupted import carried on without duplicates.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;

fn import(t: &TestApp, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_piivault"))
        .arg("import")
        .args(args)
        .arg("--data-dir")
        .arg(t.dir.path())
        .arg("--policy-dir")
        .arg(t.settings.policy_dir.as_ref().unwrap())
        .env_remove("PIIVAULT_DATABASE_URL")
        .output()
        .expect("piivault runs")
}

/// A valid mainland ID number for `n`.
fn id_number(n: u32) -> String {
    id_number_born("19800101", n)
}

/// The mapping `line,subject` printed or written by an import.
fn mapping(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .skip_while(|l| *l != "line,subject")
        .skip(1)
        .filter_map(|l| {
            let (n, id) = l.split_once(',')?;
            Some((n.parse().ok()?, id.to_owned()))
        })
        .collect()
}

async fn read_all(t: &TestApp, token: &str, id: &str) -> Value {
    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}?fields=name,phone,id_number,tags"),
            Some(token),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["fields"].clone()
}

async fn import_events(t: &TestApp) -> Vec<piivault::store::AuditRow> {
    t.events()
        .await
        .into_iter()
        .filter(|e| e.action == "subject.import")
        .collect()
}

both_stores!(
    an_import_checks_every_line_first_then_stores_the_good_ones,
    |db| async move {
        let t = spawn_app(db).await;
        let canary = "13987650001";
        // Inputs hold personal values in clear: outside the data directory, which the
        // leak checks search.
        let inputs = tempfile::tempdir().unwrap();
        let file = inputs.path().join("people.csv");
        std::fs::write(
            &file,
            format!(
                "name,phone,id_number,tags\n\
             张三,13812340001,{},vip;new\n\
             李四,{canary}x,{},\n\
             王五,13812340003,110105198001010000,\n\
             赵六,13812340004,{},\n\
             钱七,13812340005\n",
                id_number(1),
                id_number(2),
                id_number(4)
            ),
        )
        .unwrap();

        // Bad lines stop the import before anything is stored, and are named exactly.
        let out = import(&t, &[file.to_str().unwrap()]);
        let text = output_text(&out);
        assert!(!out.status.success(), "{text}");
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("line ")).collect();
        assert_eq!(errors.len(), 3, "{text}");
        assert!(errors[0].starts_with("line 3: field phone: "), "{text}");
        assert!(
            errors[1].starts_with("line 4: field id_number: id_number_checksum"),
            "{text}"
        );
        assert!(errors[2].starts_with("line 6: field -: csv"), "{text}");
        assert!(
            text.contains("3 of 5 lines are invalid; nothing was imported"),
            "{text}"
        );
        assert!(!text.contains(canary), "a value was printed: {text}");
        assert!(import_events(&t).await.is_empty());
        assert!(!Path::new(&format!("{}.piivault-import", file.display())).exists());

        // With --skip-invalid the two good lines are stored, mapped and audited.
        let map = t.dir.path().join("map.csv");
        let out = import(
            &t,
            &[
                file.to_str().unwrap(),
                "--skip-invalid",
                "--map-out",
                map.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{}", output_text(&out));
        assert!(
            output_text(&out).contains("imported 2 subjects"),
            "{}",
            output_text(&out)
        );
        let ids = mapping(&std::fs::read_to_string(&map).unwrap());
        assert_eq!(ids.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![2, 5]);
        let dsr = t.dsr().await;
        let first = read_all(&t, &dsr, &ids[0].1).await;
        assert_eq!(first["name"]["value"], "张三");
        assert_eq!(first["phone"]["value"], "13812340001");
        assert_eq!(first["id_number"]["value"], id_number(1));
        // Tags are kept sorted, as the API keeps them.
        assert_eq!(first["tags"]["value"], json!(["new", "vip"]));
        let second = read_all(&t, &dsr, &ids[1].1).await;
        assert_eq!(second["name"]["value"], "赵六");
        assert!(
            second.get("tags").is_none() || second["tags"].is_null(),
            "{second}"
        );

        // Found by its ID number like any subject created over the API.
        let (status, body) = t
            .call(
                Method::POST,
                "/v1/subjects/lookup",
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"field": "id_number", "value": id_number(4)})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.to_string().contains(&ids[1].1), "{body}");

        // One audit event per subject, by the operator, naming the run and the line.
        let events = import_events(&t).await;
        assert_eq!(events.len(), 2);
        for (e, (line, id)) in events.iter().zip(&ids) {
            assert_eq!(e.subject.as_deref(), Some(id.as_str()));
            assert_eq!(
                (e.actor_role.as_str(), e.purpose.as_str()),
                ("operator", "service")
            );
            assert!(e
                .target
                .as_deref()
                .unwrap()
                .ends_with(&format!(":line:{line}")));
        }
        assert!(t.app.verify_audit().await.unwrap().ok);

        // The same file again is refused rather than imported twice.
        let out = import(&t, &[file.to_str().unwrap(), "--skip-invalid"]);
        assert!(!out.status.success());
        assert!(
            output_text(&out).contains("was imported already"),
            "{}",
            output_text(&out)
        );
        assert_eq!(import_events(&t).await.len(), 2);
    }
);

both_stores!(
    json_lines_are_imported_with_the_api_field_names,
    |db| async move {
        let t = spawn_app(db).await;
        // Inputs hold personal values in clear: outside the data directory, which the
        // leak checks search.
        let inputs = tempfile::tempdir().unwrap();
        let file = inputs.path().join("people.jsonl");
        let lines = [
            json!({"fields": {"name": "孙八", "phone": "13812340008", "tags": ["a", "b"]}})
                .to_string(),
            String::new(),
            json!({"fields": {"name": "周九", "shoe_size": 42}}).to_string(),
            "{not json".to_owned(),
            json!({"fields": {"name": "吴十"}, "extra": 1}).to_string(),
        ];
        std::fs::write(&file, lines.join("\n")).unwrap();
        let out = import(&t, &[file.to_str().unwrap(), "--skip-invalid"]);
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("line 3: field shoe_size: unknown_field"),
            "{text}"
        );
        assert!(text.contains("line 4: field -: json"), "{text}");
        assert!(text.contains("line 5: field -: json"), "{text}");
        let ids = mapping(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].0, 1);
        let dsr = t.dsr().await;
        let got = read_all(&t, &dsr, &ids[0].1).await;
        assert_eq!(got["tags"]["value"], json!(["a", "b"]));
    }
);

both_stores!(json_lines_carry_records_and_consents, |db| async move {
    let t = spawn_app(db).await;
    // Inputs hold personal values in clear: outside the data directory, which the
    // leak checks search.
    let inputs = tempfile::tempdir().unwrap();
    let file = inputs.path().join("full.jsonl");
    let lines = [
        json!({
            "fields": {"name": "郑十一", "phone": "13812340011"},
            "records": {"service_tickets": [{"text": "第一张工单"}, {"text": "第二张工单"}], "feedback": [{"score": 5}]},
            "consents": [{"purpose": "marketing", "notice_version": "2026-01", "channel": "app"}],
        })
        .to_string(),
        json!({"fields": {"name": "冯十二"}, "records": {"no_such_collection": [{}]}}).to_string(),
        json!({"fields": {"name": "陈十三"}, "records": {"feedback": ["not an object"]}}).to_string(),
        json!({"fields": {"name": "褚十四"}, "consents": [{"purpose": "nonexistent", "notice_version": "1"}]}).to_string(),
        json!({"fields": {"name": "卫十五"}, "consents": [{"purpose": "service", "notice_version": "1"}]}).to_string(),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = import(&t, &[file.to_str().unwrap(), "--skip-invalid"]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(errors.len(), 4, "{text}");
    assert!(
        errors[0].starts_with("line 2: field no_such_collection: "),
        "{text}"
    );
    assert!(
        errors[1].starts_with("line 3: field feedback: document_type"),
        "{text}"
    );
    assert!(
        errors[2].starts_with("line 4: field consents.nonexistent: unknown_purpose"),
        "{text}"
    );
    assert!(
        errors[3].starts_with("line 5: field consents.service: not_consent_based"),
        "{text}"
    );
    let ids = mapping(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(ids.len(), 1);
    let id = &ids[0].1;

    // The records read back decrypted, through the API.
    let dsr = t.dsr().await;
    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}/records/service_tickets"),
            Some(&dsr),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let texts: Vec<&str> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["document"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 2, "{body}");
    assert!(
        texts.contains(&"第一张工单") && texts.contains(&"第二张工单"),
        "{body}"
    );

    // The consent is in force, with its evidence.
    let (status, body) = t
        .call(
            Method::GET,
            &format!("/v1/subjects/{id}/consents"),
            Some(&dsr),
            Some("dsr"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.to_string().contains("\"marketing\""), "{body}");
    assert!(body.to_string().contains("2026-01"), "{body}");
    let grants: Vec<_> = t
        .events()
        .await
        .into_iter()
        .filter(|e| e.action == "consent.grant" && e.subject.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].target.as_deref(), Some("marketing"));
    // Fields and records under the subject's one data key: 2 fields + 3 records.
    let keys = t.app.store.subject_keys(id).await.unwrap();
    assert_eq!((keys.len(), keys[0].encryptions), (1, 5));
});

both_stores!(
    an_interrupted_import_carries_on_without_duplicates,
    |db| async move {
        let t = spawn_app(db).await;
        // Inputs hold personal values in clear: outside the data directory, which the
        // leak checks search.
        let inputs = tempfile::tempdir().unwrap();
        let file = inputs.path().join("many.csv");
        let total = 3000u32;
        let mut text = String::from("name,phone\n");
        for n in 0..total {
            text.push_str(&format!("用户{n},1380000{n:04}\n"));
        }
        std::fs::write(&file, text).unwrap();
        let progress = format!("{}.piivault-import", file.display());

        // Killed (SIGKILL) once at least one batch is stored.
        let mut child = Command::new(env!("CARGO_BIN_EXE_piivault"))
            .args([
                "import",
                file.to_str().unwrap(),
                "--batch",
                "7",
                "--data-dir",
            ])
            .arg(t.dir.path())
            .arg("--policy-dir")
            .arg(t.settings.policy_dir.as_ref().unwrap())
            .env_remove("PIIVAULT_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stored_some = || {
            std::fs::read_to_string(&progress)
                .ok()
                .and_then(|p| serde_json::from_str::<Value>(&p).ok())
                .is_some_and(|p| p["imported"].as_u64().unwrap_or(0) > 0)
        };
        loop {
            if stored_some() {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the import ended before it could be interrupted: {status}");
            }
            std::thread::yield_now();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let before = import_events(&t).await.len();
        assert!(before > 0 && before < total as usize, "{before}");

        // The same command again finishes the run: every line exactly once.
        let out = import(&t, &[file.to_str().unwrap(), "--batch", "7"]);
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("carrying on with run"), "{text}");
        let events = import_events(&t).await;
        assert_eq!(events.len(), total as usize);
        let mut subjects: Vec<_> = events.iter().map(|e| e.subject.clone().unwrap()).collect();
        subjects.sort();
        subjects.dedup();
        assert_eq!(
            subjects.len(),
            total as usize,
            "a subject was imported twice"
        );
        let ids = mapping(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(ids.len(), total as usize);
        let mapped: std::collections::BTreeSet<_> = ids.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(mapped, subjects.into_iter().collect());
        let dsr = t.dsr().await;
        let last = ids.last().unwrap();
        let got = read_all(&t, &dsr, &last.1).await;
        assert_eq!(got["name"]["value"], format!("用户{}", total - 1));
        assert!(t.app.verify_audit().await.unwrap().ok);
    }
);
