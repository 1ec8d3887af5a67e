//! The web console over HTTPS, as a browser would drive it without script: sign-in and
//! its cookie, the security headers, CSRF and cross-site refusals, the auditor's pages
//! and the DSR handler's steps, and no value on any page. (The same flows in headless
//! Chromium: `console_browser.rs`.)

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;

/// The personal values of [`full_subject`] that no console page may show.
pub fn canaries() -> Vec<String> {
    full_subject()
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "tags" | "tier" | "is_minor" | "birth_date"))
        .filter_map(|(_, v)| v.as_str().map(str::to_owned))
        .collect()
}

fn assert_no_canary(what: &str, page: &str) {
    for c in canaries() {
        assert!(!page.contains(&c), "{what} shows a personal value");
    }
}

/// A client that does not follow redirects, so that each answer is seen.
fn client(t: &TestApp) -> reqwest::Client {
    let ca = std::fs::read(t.dir.path().join("tls/ca.pem")).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .map_or("", |v| v.to_str().unwrap())
    }

    /// The CSRF tag the page's forms carry.
    fn csrf(&self) -> String {
        let at = self.text.find("name=\"csrf\" value=\"").expect("a form") + 19;
        self.text[at..at + 64].to_owned()
    }
}

/// A browser session: the console cookie, once signed in.
pub struct Session {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Session {
    pub fn new(t: &TestApp) -> Self {
        Self {
            client: client(t),
            base: t.base.clone(),
            cookie: None,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Page {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", c),
            None => req,
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        Page {
            status,
            headers,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Page {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    /// A form posted from the console's own origin.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let origin = self.base.clone();
        self.send(
            self.client
                .post(format!("{}{path}", self.base))
                .header("origin", origin)
                .header("sec-fetch-site", "same-origin")
                .form(form),
        )
        .await
    }

    /// Signs in with `secret`; keeps the cookie if one was set.
    pub async fn sign_in(&mut self, secret: &str) -> Page {
        let page = self.post("/console/sign-in", &[("token", secret)]).await;
        if let Some(set) = page.headers.get("set-cookie") {
            let set = set.to_str().unwrap();
            self.cookie = Some(set.split(';').next().unwrap().to_owned());
        }
        page
    }
}

both_stores!(
    sign_in_sets_a_hardened_cookie_and_refuses_other_tokens,
    |db| async move {
        let t = spawn_app(db).await;
        let mut s = Session::new(&t);

        let page = s.get("/console").await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert_eq!(page.location(), "/console/sign-in");
        let page = s.get("/console/sign-in").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.text.contains("type=\"password\""));

        // Every answer carries the hardening headers; the policy allows no inline code.
        for h in [
            "content-security-policy",
            "x-frame-options",
            "x-content-type-options",
            "referrer-policy",
            "strict-transport-security",
            "cache-control",
        ] {
            assert!(page.headers.get(h).is_some(), "{h} missing");
        }
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(page.headers["cache-control"], "no-store");

        // A token that does not exist, and one whose role is not for the console.
        let bogus = format!("pvt_{}", "A".repeat(43));
        let page = s.sign_in(&bogus).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
        assert!(!page.text.contains(&bogus), "the refused token is echoed");
        assert!(page.headers.get("set-cookie").is_none());
        let billing = t.token("billing", &["billing"]).await;
        let page = s.sign_in(&billing).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN);
        assert!(
            page.text.contains("cannot use the console"),
            "{}",
            page.text
        );
        assert!(page.headers.get("set-cookie").is_none());

        // An auditor's token: the cookie is HttpOnly, Secure, SameSite=Strict, host-only.
        let (auditor_id, auditor) = t
            .token_with_ttl("auditor", &["audit"], std::time::Duration::from_secs(3600))
            .await;
        let page = s.sign_in(&auditor).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
        let cookie = page.headers["set-cookie"].to_str().unwrap();
        assert!(cookie.starts_with("__Host-piivault-console="), "{cookie}");
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(
                cookie.contains(attr),
                "{attr} missing: cookie attributes {}",
                cookie.split_once(';').unwrap().1
            );
        }
        assert!(!cookie.contains("Domain"), "a __Host- cookie has no Domain");
        let page = s.get("/console").await;
        assert_eq!(page.location(), "/console/audit");
        let page = s.get("/console/audit").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            page.text.contains(&auditor_id),
            "the header names the token"
        );
        assert!(
            !page.text.contains(&auditor),
            "a page shows the token's secret"
        );
        // Signing in is on the trail under the token's own name.
        let events = t.events().await;
        assert!(events
            .iter()
            .any(|e| e.action == "console.sign_in" && e.actor_token == auditor_id));

        // Revoked: the session ends at once, and the next page asks to sign in again.
        let admin = t.token("admin", &["admin"]).await;
        let (st, _) = t
            .call(
                Method::DELETE,
                &format!("/v1/tokens/{auditor_id}"),
                Some(&admin),
                Some("admin"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        let page = s.get("/console/audit").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
        assert!(page.text.contains("sign in again"), "{}", page.text);

        // Signing out needs the tag too, and clears the cookie.
        let dsr = t.token("dsr_handler", &["dsr"]).await;
        s.sign_in(&dsr).await;
        let page = s.get("/console/dsr").await;
        let csrf = page.csrf();
        let page = s.post("/console/sign-out", &[("csrf", "0")]).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN);
        let page = s.post("/console/sign-out", &[("csrf", &csrf)]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        let cleared = page.headers["set-cookie"].to_str().unwrap();
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
    }
);

/// A subject with distinctive values, a consent, a DSR request about it, and some
/// reads (one refused); returns (subject, request id, DSR token id, DSR token).
pub async fn scene(t: &TestApp) -> (String, String, String, String) {
    let (dsr_id, dsr) = t
        .token_with_ttl(
            "dsr_handler",
            &["dsr"],
            std::time::Duration::from_secs(3600),
        )
        .await;
    let id = t.create(&dsr, full_subject()).await;
    let (st, body) = grant_consent(
        t,
        &dsr,
        "dsr",
        &id,
        "marketing",
        json!({"notice_version": "2026-01", "channel": "web"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(
        read_field(t, &dsr, "dsr", &id, "phone").await.0,
        StatusCode::OK
    );
    let billing = t.token("billing", &["billing"]).await;
    assert_eq!(
        read_field(t, &billing, "billing", &id, "phone").await.0,
        StatusCode::FORBIDDEN
    );
    let (st, r) = t
        .call(
            Method::POST,
            "/v1/requests",
            Some(&dsr),
            Some("dsr"),
            Some(&json!({"subject": id, "kind": "delete"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let rid = r["id"].as_str().unwrap().to_owned();
    (id, rid, dsr_id, dsr)
}

both_stores!(
    state_changing_calls_need_the_csrf_tag_and_the_same_origin,
    |db| async move {
        let t = spawn_app(db).await;
        let (id, rid, dsr_id, dsr) = scene(&t).await;
        let mut s = Session::new(&t);
        s.sign_in(&dsr).await;
        let path = format!("/console/dsr/requests/{rid}/withdraw");
        let page = s.get(&format!("/console/dsr/requests/{rid}")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let csrf = page.csrf();

        let consent_active = || async {
            let (_, c) = t
                .call(
                    Method::GET,
                    &format!("/v1/subjects/{id}/consents"),
                    Some(&dsr),
                    Some("dsr"),
                    None,
                )
                .await;
            c["consents"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["purpose"] == "marketing" && k["active"] == true)
        };
        // No tag, a wrong tag, another token's tag.
        let other = t.token("dsr_handler", &["dsr"]).await;
        let other_tag = piivault::console::csrf_tag(&other);
        for form in [
            vec![("purpose", "marketing")],
            vec![("purpose", "marketing"), ("csrf", "00")],
            vec![("purpose", "marketing"), ("csrf", other_tag.as_str())],
        ] {
            let page = s.post(&path, &form).await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.text);
            assert!(page.text.contains("csrf_tag_invalid"), "{}", page.text);
        }
        // The right tag, sent from another site.
        for (name, value) in [
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ] {
            let page = s
                .send(
                    s.client
                        .post(format!("{}{path}", s.base))
                        .header(name, value)
                        .form(&[("purpose", "marketing"), ("csrf", csrf.as_str())]),
                )
                .await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{name}");
            assert!(page.text.contains("cross_site_request"));
        }
        assert!(consent_active().await, "a refused form changed something");

        // From the console's own page: withdrawn, audited under the handler's token.
        let page = s
            .post(&path, &[("purpose", "marketing"), ("csrf", &csrf)])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
        assert_eq!(
            page.location(),
            format!("/console/dsr/requests/{rid}?done=withdrawn")
        );
        assert!(!consent_active().await);
        let events = t.events().await;
        assert!(events.iter().any(|e| e.action == "consent.withdraw"
            && e.actor_token == dsr_id
            && e.subject.as_deref() == Some(id.as_str())));
    }
);

both_stores!(
    auditor_pages_show_the_chain_reports_a_chart_and_incidents_but_no_value,
    |db| async move {
        let t = spawn_app(db).await;
        let (id, _rid, dsr_id, _dsr) = scene(&t).await;
        let auditor = t.token("auditor", &["audit"]).await;
        let mut s = Session::new(&t);
        s.sign_in(&auditor).await;

        let home = s.get("/console/audit").await;
        assert_eq!(home.status, StatusCode::OK);
        assert!(home.text.contains("accesses_by_purpose") && home.text.contains("incident"));
        let csrf = home.csrf();

        let chain = s.get("/console/audit/chain").await;
        assert_eq!(chain.status, StatusCode::OK, "{}", chain.text);
        assert!(chain.text.contains("The chain verifies"), "{}", chain.text);
        assert!(chain.text.contains("Verified up to event"));

        let today = time::OffsetDateTime::now_utc().date().to_string();
        let range = [("from", today.as_str()), ("to", today.as_str())];
        let mut form = vec![("csrf", csrf.as_str()), ("name", "accesses_by_purpose")];
        form.extend(range);
        let report = s.post("/console/audit/report", &form).await;
        assert_eq!(report.status, StatusCode::OK, "{}", report.text);
        assert!(report.text.contains("<svg"), "no chart");
        assert!(report.text.contains("<rect"), "the chart has no bars");
        assert!(report.text.contains("dsr_handler"), "{}", report.text);
        // Grouped by outcome, the refused billing read is in the legend.
        let mut regrouped = form.clone();
        regrouped.push(("group", "decision"));
        let page = s.post("/console/audit/report", &regrouped).await;
        assert!(page.text.contains("deny ("), "{}", page.text);

        let csv = s.post("/console/audit/report.csv", &form).await;
        assert_eq!(csv.status, StatusCode::OK);
        assert!(csv.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv"));
        assert!(csv.headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment"));
        assert!(
            csv.text
                .starts_with("purpose,actor_role,action,decision,events,subjects"),
            "{}",
            csv.text
        );

        // The incident report for the DSR token names the subject and the fields.
        let mut form = vec![("csrf", csrf.as_str()), ("token", dsr_id.as_str())];
        form.extend(range);
        let incident = s.post("/console/audit/incident", &form).await;
        assert_eq!(incident.status, StatusCode::OK, "{}", incident.text);
        assert!(incident.text.contains(&id), "{}", incident.text);
        assert!(
            incident.text.contains("Subjects reached</dt><dd>1"),
            "{}",
            incident.text
        );
        assert!(incident.text.contains("phone"));
        let csv = s.post("/console/audit/incident.csv", &form).await;
        assert!(csv.text.contains(&id));

        // A report that needs a parameter, without it: a refusal page, not a failure.
        let page = s
            .post(
                "/console/audit/report",
                &[
                    ("csrf", &csrf),
                    ("name", "accesses_by_subject"),
                    range[0],
                    range[1],
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.text);
        assert!(page.text.contains("invalid_report_parameters"));

        // The DSR view is refused to an auditor, by policy, and recorded.
        let page = s.get("/console/dsr").await;
        assert_eq!(page.status, StatusCode::FORBIDDEN);
        assert!(page.text.contains("purpose_not_allowed"), "{}", page.text);

        for (what, page) in [
            ("home", &home),
            ("chain", &chain),
            ("report", &report),
            ("incident", &incident),
        ] {
            assert_no_canary(what, &page.text);
        }
        assert_no_canary("CSV", &csv.text);
    }
);

both_stores!(
    a_dsr_handler_carries_out_a_request_from_the_console,
    |db| async move {
        let t = spawn_app(db).await;
        let (id, rid, dsr_id, dsr) = scene(&t).await;
        let mut s = Session::new(&t);
        s.sign_in(&dsr).await;

        // A request received long ago and still open: first in the queue, marked.
        t.insert_overdue_request(&id).await;
        let queue = s.get("/console/dsr").await;
        assert_eq!(queue.status, StatusCode::OK);
        let late = queue.text.find("/console/dsr/requests/dsr_late").unwrap();
        let ours = queue
            .text
            .find(&format!("/console/dsr/requests/{rid}"))
            .unwrap();
        assert!(late < ours, "the overdue request is not first");
        assert_eq!(
            queue.text.matches("overdue</strong>").count(),
            1,
            "{}",
            queue.text
        );
        let request = s.get(&format!("/console/dsr/requests/{rid}")).await;
        assert_eq!(request.status, StatusCode::OK, "{}", request.text);
        for shown in ["delete", "bank_card", "marketing", "Access history"] {
            assert!(request.text.contains(shown), "{shown} missing");
        }
        assert!(
            !request.text.contains(&format!("<title>{id}")),
            "a title names the subject"
        );
        let csrf = request.csrf();
        let step = |name: &str| format!("/console/dsr/requests/{rid}/{name}");

        // The export: a download, with the values in it (and only there).
        let export = s.post(&step("export"), &[("csrf", &csrf)]).await;
        assert_eq!(export.status, StatusCode::OK);
        assert!(export.headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment"));
        let bundle: Value = serde_json::from_str(&export.text).unwrap();
        assert_eq!(bundle["fields"]["phone"], "13912345678");

        // A correction, then a bad one (refused with the rule, never the value). Both
        // values are held to the leak checks of logs and files.
        crate::leaks::remember(&["13700001111".to_owned(), "not-a-phone-77".to_owned()]);
        let page = s
            .post(
                &step("correct"),
                &[
                    ("csrf", &csrf),
                    ("field", "phone"),
                    ("value", "13700001111"),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
        let (_, phone) = read_field(&t, &dsr, "dsr", &id, "phone").await;
        assert_eq!(phone, json!("13700001111"));
        let page = s
            .post(
                &step("correct"),
                &[
                    ("csrf", &csrf),
                    ("field", "phone"),
                    ("value", "not-a-phone-77"),
                ],
            )
            .await;
        assert_eq!(
            page.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            page.text
        );
        assert!(
            !page.text.contains("not-a-phone-77"),
            "a refusal echoes the value"
        );

        // Under a legal hold, the erasure is refused and the refusal shown.
        let hold = format!("/v1/subjects/{id}/hold");
        let (st, b) = t
            .call(
                Method::PUT,
                &hold,
                Some(&dsr),
                Some("dsr"),
                Some(&json!({"case": "case-7"})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{b}");
        let page = s
            .post(
                &step("erase/confirmed"),
                &[("csrf", &csrf), ("confirm", "yes")],
            )
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.text);
        assert!(page.text.contains("legal_hold"), "{}", page.text);
        let (st, _) = t
            .call(Method::DELETE, &hold, Some(&dsr), Some("dsr"), None)
            .await;
        assert_eq!(st, StatusCode::OK);

        // Erasure: a confirmation that names what goes, then the erasure itself.
        let confirm = s.post(&step("erase"), &[("csrf", &csrf)]).await;
        assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
        for named in [
            "phone",
            "id_number",
            "bank_card",
            "payments",
            "cannot be undone",
        ] {
            assert!(confirm.text.contains(named), "{named} not named");
        }
        assert_eq!(
            read_field(&t, &dsr, "dsr", &id, "phone").await.0,
            StatusCode::OK
        );
        let page = s.post(&step("erase/confirmed"), &[("csrf", &csrf)]).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "unconfirmed erasure");
        assert_eq!(
            read_field(&t, &dsr, "dsr", &id, "phone").await.0,
            StatusCode::OK
        );
        let page = s
            .post(
                &step("erase/confirmed"),
                &[("csrf", &csrf), ("confirm", "yes")],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
        assert_eq!(
            read_field(&t, &dsr, "dsr", &id, "phone").await.0,
            StatusCode::NOT_FOUND
        );
        let after = s
            .get(&format!("/console/dsr/requests/{rid}?done=erased"))
            .await;
        assert_eq!(after.status, StatusCode::OK, "{}", after.text);
        assert!(after.text.contains("has been erased"), "{}", after.text);

        let page = s
            .post(
                &step("status"),
                &[("csrf", &csrf), ("status", "done"), ("reason", "")],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
        let (_, r) = t
            .call(
                Method::GET,
                &format!("/v1/requests/{rid}"),
                Some(&dsr),
                Some("dsr"),
                None,
            )
            .await;
        assert_eq!(r["status"], "done");

        // Every step is on the trail under the handler's own token.
        let events = t.events().await;
        for action in [
            "export",
            "correct",
            "erase",
            "request.update",
            "access_history.read",
        ] {
            assert!(
                events
                    .iter()
                    .any(|e| e.action == action && e.actor_token == dsr_id),
                "{action} not audited under the handler's token"
            );
        }
        for (what, page) in [
            ("queue", &queue),
            ("request", &request),
            ("confirmation", &confirm),
            ("after", &after),
        ] {
            assert_no_canary(what, &page.text);
        }
    }
);

both_stores!(
    token_issue_console_gives_a_short_lived_console_token,
    |db| async move {
        let t = spawn_app(db).await;
        let out = t
            .cli_command(&["token", "issue", "--console", "--role", "auditor"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        crate::leaks::remember(std::slice::from_ref(&secret));
        assert!(err.contains("purposes audit"), "{err}");
        assert!(
            err.contains("https://127.0.0.1:8200/console/sign-in"),
            "{err}"
        );
        let tokens = t.app.tokens.list().await.unwrap();
        let issued = tokens.iter().find(|k| k.role == "auditor").unwrap();
        assert_eq!(issued.purposes, ["audit"]);
        let lifetime = time::OffsetDateTime::parse(
            &issued.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
            - time::OffsetDateTime::now_utc();
        assert!(
            lifetime <= time::Duration::hours(8) && lifetime > time::Duration::hours(7),
            "{lifetime}"
        );
        // It signs in.
        let mut s = Session::new(&t);
        assert_eq!(s.sign_in(&secret).await.status, StatusCode::SEE_OTHER);

        // A DSR handler's gets the dsr purpose; roles and purposes not for the console,
        // and long lifetimes, are refused.
        let (ok, text) = t.cli(&["token", "issue", "--console", "--role", "dsr_handler"]);
        assert!(ok && text.contains("purposes dsr"), "{text}");
        for (args, says) in [
            (vec!["--role", "billing"], "cannot use the console"),
            (
                vec!["--role", "dsr_handler", "--purpose", "service"],
                "claims only audit or dsr",
            ),
            (vec!["--role", "auditor", "--ttl", "13h"], "at most 12h"),
        ] {
            let mut all = vec!["token", "issue", "--console"];
            all.extend(args);
            let (ok, text) = t.cli(&all);
            assert!(!ok && text.contains(says), "{all:?}: {text}");
        }
        // Without --console, --purpose and --ttl stay required.
        let (ok, text) = t.cli(&["token", "issue", "--role", "auditor"]);
        assert!(!ok && text.contains("--purpose"), "{text}");
    }
);
