//! Data-subject requests and the export bundle.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    requests_have_due_dates_statuses_and_reasons,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let id = t.create(&dsr, json!({"name": "许十九"})).await;
        let post = |kind: &str| json!({"subject": id, "kind": kind});
        let (s, r) = t
            .call(
                Method::POST,
                "/v1/requests",
                Some(&dsr),
                Some("dsr"),
                Some(&post("export")),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        assert_eq!(r["status"], "open");
        let today = time::OffsetDateTime::now_utc().date();
        let calendar = piivault::pipl::WorkCalendar::load(Some(&policy_dir())).unwrap();
        assert_eq!(
            r["due"],
            json!(calendar.add_working_days(today, 15).to_string())
        );
        let rid = r["id"].as_str().unwrap().to_owned();
        assert!(rid.starts_with("dsr_"));

        let patch = |status: &str, reason: Option<&str>| {
            let mut b = json!({"status": status});
            if let Some(r) = reason {
                b["reason"] = json!(r);
            }
            b
        };
        let path = format!("/v1/requests/{rid}");
        let (s, r) = t
            .call(
                Method::PATCH,
                &path,
                Some(&dsr),
                Some("dsr"),
                Some(&patch("in_progress", None)),
            )
            .await;
        assert_eq!(
            (s, r["status"].clone()),
            (StatusCode::OK, json!("in_progress"))
        );
        let (s, r) = t
            .call(
                Method::PATCH,
                &path,
                Some(&dsr),
                Some("dsr"),
                Some(&patch("done", None)),
            )
            .await;
        assert_eq!((s, r["status"].clone()), (StatusCode::OK, json!("done")));
        assert!(r["closed"].is_string());
        let (s, r) = t
            .call(
                Method::PATCH,
                &path,
                Some(&dsr),
                Some("dsr"),
                Some(&patch("rejected", Some("duplicate_request"))),
            )
            .await;
        assert_eq!(
            (s, r["error"]["code"].clone()),
            (StatusCode::BAD_REQUEST, json!("bad_transition"))
        );

        // A rejection always states its reason, from the declared list.
        let (_, r) = t
            .call(
                Method::POST,
                "/v1/requests",
                Some(&dsr),
                Some("dsr"),
                Some(&post("delete")),
            )
            .await;
        let path2 = format!("/v1/requests/{}", r["id"].as_str().unwrap());
        let (s, _) = t
            .call(
                Method::PATCH,
                &path2,
                Some(&dsr),
                Some("dsr"),
                Some(&patch("rejected", None)),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _) = t
            .call(
                Method::PATCH,
                &path2,
                Some(&dsr),
                Some("dsr"),
                Some(&patch("rejected", Some("because I said so"))),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, r) = t
            .call(
                Method::PATCH,
                &path2,
                Some(&dsr),
                Some("dsr"),
                Some(&patch("rejected", Some("identity_not_verified"))),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["reason"], "identity_not_verified");

        // Bad requests.
        let (s, _) = t
            .call(
                Method::POST,
                "/v1/requests",
                Some(&dsr),
                Some("dsr"),
                Some(&post("gossip")),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _) = t
            .call(
                Method::POST,
                "/v1/requests",
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"subject": "sub_00000000000000000000000000000000", "kind": "access"})),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let cs = t.token("customer_service", &["service"]).await;
        let (s, _) = t
            .call(
                Method::POST,
                "/v1/requests",
                Some(&cs),
                Some("service"),
                Some(&post("access")),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        // Overdue: one received long ago and still open.
        t.insert_overdue_request(&id).await;
        let (s, b) = t
            .call(
                Method::GET,
                "/v1/requests?overdue=true",
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let ids: Vec<&str> = b["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec!["dsr_late"]);
        assert_eq!(b["requests"][0]["overdue"], true);
        let (_, b) = t
            .call(Method::GET, "/v1/requests", Some(&dsr), Some("dsr"), None)
            .await;
        assert_eq!(b["requests"].as_array().unwrap().len(), 3);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_piivault"))
            .args(["dsr", "list", "--overdue", "--data-dir"])
            .arg(t.dir.path())
            .args(["--database-url", &t.database_url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "overdue requests exit non-zero");
        assert!(
            text.contains("dsr_late") && text.contains("OVERDUE"),
            "{text}"
        );
        assert!(!text.contains(&rid), "{text}");
    }
);

both_stores!(
    export_bundle_holds_everything_about_the_subject_and_nothing_else,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let cs = t.token("customer_service", &["service"]).await;
        let id = t.create(&dsr, full_subject()).await;
        let other = t
            .create(&dsr, json!({"name": "他人二十", "phone": "13600009999"}))
            .await;
        for (c, doc) in [
            ("payments", json!({"amount": "88.00"})),
            ("service_tickets", json!({"text": "发票问题"})),
        ] {
            let (s, _) = t
                .call(
                    Method::POST,
                    &format!("/v1/subjects/{id}/records/{c}"),
                    Some(&dsr),
                    Some("dsr"),
                    Some(&doc),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED);
        }
        let (s, _) = t
            .call(
                Method::POST,
                &format!("/v1/subjects/{other}/records/payments"),
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"amount": "97531.86"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, _) = t
            .call(
                Method::PUT,
                &format!("/v1/subjects/{id}/consents/marketing"),
                Some(&cs),
                Some("service"),
                Some(&json!({"notice_version": "2026-01", "channel": "phone"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}?fields=phone"),
                Some(&cs),
                Some("service"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);

        // Only the DSR handler may export.
        let (s, _) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}/export"),
                Some(&cs),
                Some("service"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let resp = t
            .client
            .get(format!("{}/v1/subjects/{id}/export", t.base))
            .bearer_auth(&dsr)
            .header("X-Purpose", "dsr")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()[reqwest::header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .contains("attachment"));
        let b: Value = resp.json().await.unwrap();
        assert_eq!(b["format"], "piivault-export/1");
        assert_eq!(b["subject"], json!(id));
        let expected = full_subject();
        for (k, v) in expected.as_object().unwrap() {
            let want = if k == "tags" {
                json!(["churn_risk", "vip"])
            } else {
                v.clone()
            };
            assert_eq!(b["fields"][k], want, "{k}");
        }
        assert_eq!(
            b["records"]["payments"][0]["document"],
            json!({"amount": "88.00"})
        );
        assert_eq!(
            b["records"]["service_tickets"][0]["document"],
            json!({"text": "发票问题"})
        );
        assert_eq!(b["records"]["feedback"], json!([]));
        assert_eq!(b["consents"]["current"][0]["purpose"], "marketing");
        assert_eq!(b["consents"]["history"][0]["channel"], "phone");
        let history = b["access_history"].as_array().unwrap();
        assert!(history.iter().any(|e| e["by_role"] == "customer_service"
            && e["action"] == "read_masked"
            && e["field"] == "phone"));
        assert!(history.iter().any(|e| e["action"] == "create"));
        // Nothing about anyone else; no token or request ids.
        let text = b.to_string();
        for foreign in [
            other.as_str(),
            "他人二十",
            "13600009999",
            "97531.86",
            "tok_",
            "req_",
        ] {
            assert!(!text.contains(foreign), "export holds {foreign}");
        }
        // The consents history names no token either.
        assert!(b["consents"]["history"][0].get("by").is_none());

        // After deletion nothing readable is left, and the trail still verifies.
        let (s, _) = t
            .call(
                Method::DELETE,
                &format!("/v1/subjects/{id}"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}/export"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let raw = t.raw().await;
        for table in [
            "subject_keys",
            "subject_fields",
            "blind_index",
            "records",
            "consent_events",
        ] {
            let (n,): (i64,) = sqlx::query_as(&format!(
                "SELECT COUNT(*) FROM {table} WHERE subject_id = $1"
            ))
            .bind(&id)
            .fetch_one(&raw)
            .await
            .unwrap();
            assert_eq!(n, 0, "{table}");
        }
        assert!(t.app.verify_audit().await.unwrap().ok);
    }
);

both_stores!(
    a_request_due_in_a_year_without_a_holiday_calendar_is_refused,
    |db| async move {
        // A holidays.toml that lists no year: whatever today is, the due date falls in a
        // year without a calendar.
        let pol = policies_with("");
        std::fs::write(pol.path().join("holidays.toml"), "years = []\n").unwrap();
        let t = spawn_app_with(
            db,
            Options {
                policy_dir: Some(pol.path().to_path_buf()),
                settings: Some(|s| s.file.dsr_calendar_fallback = None),
                ..Default::default()
            },
        )
        .await;
        let dsr = t.dsr().await;
        let id = t.create(&dsr, json!({"name": "年历"})).await;
        let (s, b) = t
            .call(
                Method::POST,
                "/v1/requests",
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"subject": id, "kind": "export"})),
            )
            .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert_eq!(b["error"]["code"], "calendar_missing");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("holidays.toml") && message.contains("dsr_calendar_fallback"),
            "{message}"
        );
        let (s, b) = t
            .call(Method::GET, "/v1/requests", Some(&dsr), Some("dsr"), None)
            .await;
        assert_eq!(
            (s, b["requests"].as_array().map(Vec::len)),
            (StatusCode::OK, Some(0))
        );
        assert!(t
            .events()
            .await
            .iter()
            .any(|e| e.action == "request.create" && e.reason == "calendar_missing"));
    }
);

both_stores!(
    a_subject_gets_an_explanation_of_an_automated_purpose_and_its_export_marks_derived_fields,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let id = t
            .create(
                &dsr,
                json!({"name": "解释", "phone": "13966667777", "address": "成都市1号", "tier": "gold", "tags": ["churn_risk"]}),
            )
            .await;
        let explain = |purpose: &'static str| {
            let (t, dsr, id) = (&t, dsr.clone(), id.clone());
            async move {
                let path = format!("/v1/subjects/{id}/explanation?purpose={purpose}");
                t.call(Method::GET, &path, Some(&dsr), Some("dsr"), None)
                    .await
            }
        };
        let (s, b) = explain("marketing").await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["automated_decision"], true);
        assert_eq!(b["legal_basis"], "consent");
        assert_eq!(
            (b["applies"].as_bool(), b["why_not"].as_str()),
            (Some(false), Some("consent_missing"))
        );
        let used: Vec<(String, bool)> = b["fields_used"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["field"].as_str().unwrap().to_owned(),
                    f["derived"].as_bool().unwrap(),
                )
            })
            .collect();
        // What marketing may use of this subject (the address is not among it); the tier
        // and the tags were derived, the name and phone given.
        let want = [
            ("name", false),
            ("phone", false),
            ("tags", true),
            ("tier", true),
        ]
        .map(|(f, d)| (f.to_owned(), d));
        assert_eq!(used, want);
        assert!(!b.to_string().contains("13966667777") && !b.to_string().contains("gold"));
        let (s, b) = grant_consent(
            &t,
            &dsr,
            "dsr",
            &id,
            "marketing",
            json!({"notice_version": "1"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(explain("marketing").await.1["applies"], true);
        let (s, b) = explain("service").await;
        assert_eq!(
            (s, b["automated_decision"].as_bool(), b["applies"].as_bool()),
            (StatusCode::OK, Some(false), Some(true))
        );
        let (s, b) = explain("astrology").await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_purpose"))
        );

        // The export marks the values made by automated evaluation.
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{id}/export"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["derived_fields"], json!(["tags", "tier"]));
        assert!(t
            .events()
            .await
            .iter()
            .any(|e| e.action == "explanation.read" && e.target.as_deref() == Some("marketing")));
    }
);

both_stores!(
    a_close_relative_may_make_requests_only_for_a_deceased_subject_who_did_not_refuse_it,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let alive = t.create(&dsr, json!({"name": "在世"})).await;
        let refusing = t.create(&dsr, json!({"name": "拒绝亲属"})).await;
        let request = |subject: &str, kind: &str, requester: Value| {
            let body = json!({"subject": subject, "kind": kind, "requester": requester});
            let (t, dsr) = (&t, dsr.clone());
            async move {
                t.call(
                    Method::POST,
                    "/v1/requests",
                    Some(&dsr),
                    Some("dsr"),
                    Some(&body),
                )
                .await
            }
        };
        let child = json!({"relationship": "child", "evidence": "HUKOU-2026-0042"});
        // Not deceased: a relative's request is refused.
        let (s, b) = request(&alive, "export", child.clone()).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("subject_not_deceased")),
            "{b}"
        );
        // The subject arranges, while alive, that relatives may not.
        let put = |path: String, body: Value| {
            let (t, dsr) = (&t, dsr.clone());
            async move {
                t.call(Method::PUT, &path, Some(&dsr), Some("dsr"), Some(&body))
                    .await
            }
        };
        let (s, b) = put(
            format!("/v1/subjects/{refusing}/instructions"),
            json!({"relatives": "refused"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, _) = put(
            format!("/v1/subjects/{refusing}/instructions"),
            json!({"relatives": "maybe"}),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        // Both die.
        for id in [&alive, &refusing] {
            let (s, b) = put(
                format!("/v1/subjects/{id}/deceased"),
                json!({"evidence": "DEATH-CERT-77"}),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
        let (s, b) = put(
            format!("/v1/subjects/{alive}/deceased"),
            json!({"evidence": "DEATH-CERT-77"}),
        )
        .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("subject_deceased"))
        );
        let (s, _) = put(
            format!("/v1/subjects/{alive}/deceased"),
            json!({"evidence": "a free-text story"}),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        // Too late to instruct now.
        let (s, b) = put(
            format!("/v1/subjects/{alive}/instructions"),
            json!({"relatives": "refused"}),
        )
        .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("subject_deceased"))
        );

        // A close relative's request for the deceased subject: recorded with the
        // relationship and the evidence.
        let (s, b) = request(&alive, "export", child.clone()).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        assert_eq!(
            (b["requester"].as_str(), b["requester_evidence"].as_str()),
            (Some("child"), Some("HUKOU-2026-0042"))
        );
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/requests/{}", b["id"].as_str().unwrap()),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(
            (s, b["requester"].as_str()),
            (StatusCode::OK, Some("child"))
        );
        // The subject's own instruction is honoured.
        let (s, b) = request(&refusing, "export", child.clone()).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("relatives_refused_by_subject")),
            "{b}"
        );
        // Not a close relative, not a kind Art. 49 gives them, no evidence: refused.
        let (s, _) = request(
            &alive,
            "export",
            json!({"relationship": "neighbour", "evidence": "X1"}),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _) = request(&alive, "withdraw", child.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _) = request(
            &alive,
            "export",
            json!({"relationship": "spouse", "evidence": ""}),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        // The processing rules say so.
        let (s, b) = t
            .call(
                Method::GET,
                &format!("/v1/subjects/{refusing}/processing"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            (b["deceased"]["evidence"].as_str(), b["relatives"].as_str()),
            (Some("DEATH-CERT-77"), Some("refused"))
        );
        let events = t.events().await;
        assert!(events.iter().any(
            |e| e.action == "subject.deceased" && e.subject.as_deref() == Some(alive.as_str())
        ));
        assert!(events
            .iter()
            .any(|e| e.action == "request.create" && e.reason == "relatives_refused_by_subject"));
    }
);

both_stores!(
    a_bulk_export_over_the_threshold_waits_for_a_second_persons_approval,
    |db| async move {
        let t = spawn_app_with(
            db,
            Options {
                settings: Some(|s| s.file.bulk_export_approval_over = Some(2)),
                ..Default::default()
            },
        )
        .await;
        let asker = t.dsr().await;
        let other = t.dsr().await;
        let lead = t.token("dsr_lead", &["dsr"]).await;
        let mut ids = Vec::new();
        for name in ["甲", "乙", "丙"] {
            ids.push(t.create(&asker, json!({ "name": name })).await);
        }
        let call = |tok: &str, method: Method, path: String, body: Option<Value>| {
            let (t, tok) = (&t, tok.to_owned());
            async move {
                t.call(method, &path, Some(&tok), Some("dsr"), body.as_ref())
                    .await
            }
        };
        let post = |tok: &str, subjects: &[String]| {
            call(
                tok,
                Method::POST,
                "/v1/exports".into(),
                Some(json!({ "subjects": subjects })),
            )
        };
        // Up to the threshold: at once.
        let (s, b) = post(&asker, &ids[..2]).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["bundles"].as_array().unwrap().len(), 2);
        assert_eq!(b["bundles"][0]["fields"]["name"], "甲");
        // Above it: a request that waits.
        let (s, b) = post(&asker, &ids).await;
        assert_eq!(
            (s, b["status"].as_str(), b["subjects"].as_i64()),
            (StatusCode::ACCEPTED, Some("pending"), Some(3)),
            "{b}"
        );
        let id = b["id"].as_str().unwrap().to_owned();
        let fetch = |tok: &str| call(tok, Method::GET, format!("/v1/exports/{id}"), None);
        let approve = |tok: &str, id: &str| {
            call(tok, Method::POST, format!("/v1/exports/{id}/approve"), None)
        };
        let code = |answer: &(StatusCode, Value)| {
            (
                answer.0,
                answer.1["error"]["code"].as_str().unwrap_or("").to_owned(),
            )
        };
        assert_eq!(
            code(&fetch(&asker).await),
            (StatusCode::CONFLICT, "export_pending".into())
        );
        // A DSR handler may not approve; nor may the lead its own request.
        assert_eq!(
            code(&approve(&other, &id).await),
            (StatusCode::FORBIDDEN, "policy_denied".into())
        );
        let (s, own) = post(&lead, &ids).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        assert_eq!(
            code(&approve(&lead, own["id"].as_str().unwrap()).await),
            (StatusCode::FORBIDDEN, "second_person_required".into())
        );
        // The lead approves the other's request, once.
        let (s, b) = approve(&lead, &id).await;
        assert_eq!(
            (s, b["status"].as_str()),
            (StatusCode::OK, Some("approved")),
            "{b}"
        );
        assert_eq!(
            code(&approve(&lead, &id).await),
            (StatusCode::CONFLICT, "export_not_pending".into())
        );
        // Only the asker fetches it, once.
        assert_eq!(
            code(&fetch(&other).await),
            (StatusCode::FORBIDDEN, "not_the_requester".into())
        );
        let (s, b) = fetch(&asker).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let names: Vec<&str> = b["bundles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["fields"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["甲", "乙", "丙"]);
        assert_eq!(
            code(&fetch(&asker).await),
            (StatusCode::CONFLICT, "export_delivered".into())
        );
        assert_eq!(
            code(&call(&asker, Method::GET, "/v1/exports/exp_nothing".into(), None).await),
            (StatusCode::NOT_FOUND, "export_not_found".into())
        );
        // Bad input.
        let (s, _) = post(&asker, &["not-an-id".to_owned()]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _) = post(&asker, &[]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        // Both steps, and each subject's export, are in the trail.
        let events = t.events().await;
        let of = |action: &str| {
            events
                .iter()
                .filter(|e| {
                    e.action == action
                        && e.decision == "allow"
                        && e.target.as_deref() == Some(id.as_str())
                })
                .count()
        };
        assert_eq!(
            (
                of("export.request"),
                of("export.approve"),
                of("export.deliver")
            ),
            (1, 1, 1)
        );
        assert!(events
            .iter()
            .any(|e| e.action == "export.approve" && e.reason == "second_person_required"));
        let exported = events
            .iter()
            .filter(|e| e.action == "export" && e.subject.as_deref() == Some(ids[2].as_str()))
            .count();
        assert_eq!(
            exported, 1,
            "the third subject was exported once, by the approved request"
        );
        let (ok, said) = t.cli(&["audit", "verify"]);
        assert!(ok, "{said}");
    }
);

both_stores!(
    the_access_history_alone_is_given_to_a_dsr_handler_without_values,
    |db| async move {
        let t = spawn_app(db).await;
        let dsr = t.dsr().await;
        let id = t.create(&dsr, full_subject()).await;
        let billing = t.token("billing", &["billing"]).await;
        assert_eq!(
            read_field(&t, &billing, "billing", &id, "bank_card")
                .await
                .0,
            StatusCode::OK
        );
        let path = format!("/v1/subjects/{id}/access-history");
        let (s, h) = t
            .call(Method::GET, &path, Some(&dsr), Some("dsr"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{h}");
        let rows = h["access_history"].as_array().unwrap();
        assert!(rows.iter().any(|e| e["by_role"] == "billing"
            && e["field"] == "bank_card"
            && e["action"] == "read"
            && e["decision"] == "allow"));
        for e in rows {
            let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                ["action", "by_role", "decision", "field", "purpose", "time"],
                "no token or request id"
            );
        }
        for v in crate::console::canaries() {
            assert_no_value(&h, &v);
        }
        // Audited; refused to a role without export rights; a bad id is not found.
        assert!(t.events().await.iter().any(
            |e| e.action == "access_history.read" && e.subject.as_deref() == Some(id.as_str())
        ));
        let (s, _) = t
            .call(Method::GET, &path, Some(&billing), Some("billing"), None)
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = t
            .call(
                Method::GET,
                "/v1/subjects/nope/access-history",
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
);
