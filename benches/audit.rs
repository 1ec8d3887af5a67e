//! Audit costs: how fast `audit verify` walks the chain, and read throughput with and
//! without the audit event, in-process and over HTTPS against a bare handler.
//! Run: cargo bench --bench audit             (SQLite)
//!      cargo bench --bench audit -- verify   (only `audit verify`, then reports over
//!      the same long trail: a narrow window at its end, and the whole of it; with
//!      PIIVAULT_BENCH_DATABASE_URL=postgres://…/db also on a fresh PostgreSQL database
//!      created beside that one and dropped afterwards)
//!      cargo bench --bench audit -- write    (only the audit writer: one event per
//!      caller, 64 callers, over 2,000 subjects, as audited reads produce them)
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use piivault::audit::Event;
use piivault::vault::View;

const CONCURRENCY: usize = 32;

async fn rate<F, Fut>(label: &str, secs: f64, f: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (f, done) = (f.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                f().await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed) as f64;
    println!("{label:<52} {:>10.0} /s", n / start.elapsed().as_secs_f64());
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // `cargo bench --bench audit -- verify`: only the verification.
    let only_verify = std::env::args().any(|a| a == "verify");
    let only_write = std::env::args().any(|a| a == "write");
    let secs = if full { 5.0 } else { 0.2 };
    let events: i64 = if full { 1_000_000 } else { 200 };
    piivault::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let settings = support::settings(dir.path());
        let app = piivault::open(&settings).await.unwrap();
        let id = support::subject(
            &app,
            serde_json::json!({"name": "压测", "phone": "13812345678"}),
        )
        .await;

        if only_write {
            write_speed(&app, secs).await;
            return;
        }
        if !only_verify {
            throughput(&app, &id, &settings, dir.path(), secs).await;
            write_speed(&app, secs).await;
        }
        verify_speed("SQLite", &app, &id, events).await;
        if let Ok(base) = std::env::var("PIIVAULT_BENCH_DATABASE_URL") {
            postgres_verify(&base, dir.path(), events).await;
        }
    });
}

/// `audit verify` on a fresh PostgreSQL database next to `base`.
async fn postgres_verify(base: &str, dir: &std::path::Path, events: i64) {
    use sqlx::Connection as _;
    let name = format!("piivault_bench_verify_{}", std::process::id());
    let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
    let mut admin = sqlx::PgConnection::connect(base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let pg_dir = dir.join("postgres");
    let settings = piivault::config::Settings {
        database_url: url.into(),
        ..support::settings(&pg_dir)
    };
    let app = piivault::open(&settings).await.unwrap();
    let id = support::subject(&app, serde_json::json!({"name": "压测"})).await;
    verify_speed("PostgreSQL", &app, &id, events).await;
    drop(app);
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// Reads per second: in-process with and without the audit event, and over HTTPS
/// against a bare handler.
async fn throughput(
    app: &piivault::App,
    id: &piivault::vault::SubjectId,
    settings: &piivault::config::Settings,
    dir: &std::path::Path,
    secs: f64,
) {
    {
        // In-process: the read alone, and the read plus its durable audit event.
        let wanted = vec![("phone".to_owned(), View::Masked)];
        {
            let (vault, id, wanted) = (app.vault.clone(), id.clone(), wanted.clone());
            rate("vault read, no audit (in-process)", secs, move || {
                let (vault, id, wanted) = (vault.clone(), id.clone(), wanted.clone());
                async move {
                    vault.read(&id, &wanted).await.unwrap();
                }
            })
            .await;
        }
        {
            let (vault, audit, id, wanted) = (
                app.vault.clone(),
                app.audit.clone(),
                id.clone(),
                wanted.clone(),
            );
            rate(
                "vault read + durable audit event (in-process)",
                secs,
                move || {
                    let (vault, audit, id, wanted) =
                        (vault.clone(), audit.clone(), id.clone(), wanted.clone());
                    async move {
                        vault.read(&id, &wanted).await.unwrap();
                        let e = Event::new(
                            "tok_bench",
                            "customer_service",
                            "service",
                            "req_bench",
                            "read_masked",
                        )
                        .subject(id.as_str())
                        .field("phone");
                        audit.record_one(e).await.unwrap();
                    }
                },
            )
            .await;
        }

        // Over HTTPS: a bare handler, and the full audited read path.
        let mut opts = piivault::ServeOptions::new("127.0.0.1:0".parse().unwrap());
        opts.policy_reload = Duration::from_secs(3600);
        let server = piivault::start(app, settings, &opts).await.unwrap();
        let base = format!("https://localhost:{}", server.addr.port());
        let ca = std::fs::read(dir.join("tls/ca.pem")).unwrap();
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let (_, token) = app
            .tokens
            .issue(
                piivault::authz::IssueRequest {
                    role: "customer_service".into(),
                    purposes: vec!["service".into()],
                    ttl: Duration::from_secs(3600),
                    description: "bench".into(),
                    created_by: "bench".into(),
                },
                &app.policy.current(),
                piivault::audit::Event::new("test", "operator", "admin", "test", "token.issue"),
            )
            .await
            .unwrap();
        let token = token.to_string();
        {
            let (client, url) = (client.clone(), format!("{base}/healthz"));
            rate("HTTPS GET /healthz (bare handler)", secs, move || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let r = client.get(&url).send().await.unwrap();
                    assert!(r.status().is_success());
                    r.bytes().await.unwrap();
                }
            })
            .await;
        }
        {
            let (client, url, token) = (
                client.clone(),
                format!("{base}/v1/subjects/{id}?fields=phone"),
                token.clone(),
            );
            rate(
                "HTTPS GET /v1/subjects/{id}?fields=phone (audited)",
                secs,
                move || {
                    let (client, url, token) = (client.clone(), url.clone(), token.clone());
                    async move {
                        let r = client
                            .get(&url)
                            .bearer_auth(&token)
                            .header("X-Purpose", "service")
                            .send()
                            .await
                            .unwrap();
                        assert!(r.status().is_success());
                        r.bytes().await.unwrap();
                    }
                },
            )
            .await;
        }
        server.shutdown().await.unwrap();
    }
}

/// The audit writer alone: 64 callers each waiting for one event at a time to be
/// durable, over 2,000 subjects (the subject index is written at random places, as
/// under the read load). Prints events/s and how many events each commit carried.
async fn write_speed(app: &piivault::App, secs: f64) {
    const CALLERS: usize = 64;
    let subjects: Arc<Vec<String>> = Arc::new(
        (0..2000)
            .map(|i| {
                format!(
                    "sub_{:016x}",
                    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                )
            })
            .collect(),
    );
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let commits = app.audit.commits();
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let (audit, subjects, done) = (app.audit.clone(), subjects.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = caller;
            while Instant::now() < until {
                i = (i + 7919) % subjects.len();
                let e = Event::new(
                    "tok_bench",
                    "customer_service",
                    "service",
                    "req_bench",
                    "read",
                )
                .subject(&subjects[i])
                .field("phone");
                audit.record_one(e).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed) as f64;
    let batches = (app.audit.commits() - commits).max(1) as f64;
    println!(
        "{:<52} {:>10.0} /s ({:.1} events a commit)",
        "audit writer, 64 callers, 2,000 subjects",
        n / start.elapsed().as_secs_f64(),
        n / batches
    );
}

/// `audit verify` over a trail of `events` events: the median of three runs.
async fn verify_speed(
    store: &str,
    app: &piivault::App,
    id: &piivault::vault::SubjectId,
    events: i64,
) {
    // Verification speed over a long trail.
    let have = app.store.audit_events(0, i64::MAX).await.unwrap().len() as i64;
    let mut batch = Vec::new();
    for i in have..events {
        batch.push(
            Event::new(
                "tok_bench",
                "billing",
                "billing",
                &format!("req_{i}"),
                "read",
            )
            .subject(id.as_str())
            .field("bank_card"),
        );
        if batch.len() == 5000 {
            app.audit.record(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    app.audit.record(batch).await.unwrap();
    app.audit.checkpoint_now().await.unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let report = app.verify_audit().await.unwrap();
        runs.push(start.elapsed().as_secs_f64());
        assert!(report.ok);
    }
    runs.sort_by(f64::total_cmp);
    println!(
        "{:<52} {:>10.0} events/s ({} events in {:.2} s, median of 3)",
        format!("audit verify ({store})"),
        events as f64 / runs[1],
        events,
        runs[1]
    );
    report_speed(store, app, id).await;
}

/// Reports over the long trail, once the audit index has caught up: a window holding only
/// the last 100 events (its cost should not grow with the trail), and the whole trail.
async fn report_speed(store: &str, app: &piivault::App, id: &piivault::vault::SubjectId) {
    let last = app
        .store
        .audit_head()
        .await
        .unwrap()
        .map_or(0, |(seq, _)| seq);
    let mark = loop {
        // Later events in later milliseconds than every event before them.
        let now = piivault::store::now_ms();
        let newest = app.store.audit_events(last - 1, 1).await.unwrap();
        if newest.iter().all(|e| e.ts < now) {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let recent: Vec<Event> = (0..100)
        .map(|i| {
            Event::new(
                "tok_recent",
                "billing",
                "billing",
                &format!("req_r{i}"),
                "read",
            )
            .subject(id.as_str())
            .field("bank_card")
        })
        .collect();
    app.audit.record(recent).await.unwrap();
    while app.store.index_audit(50_000).await.unwrap().behind > 0 {}
    let end = piivault::store::now_ms() + 1;
    let token: std::collections::BTreeMap<String, String> =
        [("token".to_owned(), "tok_recent".to_owned())].into();
    let none = std::collections::BTreeMap::new();
    for (name, params, from, what) in [
        ("accesses_by_purpose", &none, mark, "last 100 events"),
        ("incident", &token, mark, "last 100 events"),
        ("accesses_by_purpose", &none, 0, "whole trail"),
        ("incident", &token, 0, "whole trail"),
    ] {
        let mut runs = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            let result = app
                .reports
                .run(&app.store, name, from, end, params)
                .await
                .unwrap();
            runs.push(start.elapsed().as_secs_f64());
            assert!(!result.rows.is_empty(), "{name}");
        }
        runs.sort_by(f64::total_cmp);
        println!(
            "{:<52} {:>10.2} ms (median of 3)",
            format!("report {name}, {what} ({store})"),
            runs[1] * 1000.0
        );
    }
}
