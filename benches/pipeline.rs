//! The request pipeline's pieces, one at a time, in process (SQLite): what a read costs
//! before the network and the durable audit commit. Run: cargo bench --bench pipeline
//! (under `cargo test --all-targets` this is a short smoke run).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::hint::black_box;
use std::time::Instant;

use piivault::audit::{chain_hash, Event};
use piivault::authz::IssueRequest;
use piivault::pipeline::{subjects, Credentials, ReadInput};
use piivault::vault::View;

fn report(label: &str, n: u32, start: Instant) {
    let per = start.elapsed().as_nanos() as f64 / f64::from(n);
    println!("{label:<52} {per:>10.0} ns/op");
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u32 = if full { 200_000 } else { 200 };
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
            serde_json::json!({"name": "压测", "phone": "13812345678", "tier": "gold"}),
        )
        .await;
        let (_, secret) = app
            .tokens
            .issue(
                IssueRequest {
                    role: "customer_service".into(),
                    purposes: vec!["service".into()],
                    ttl: std::time::Duration::from_secs(3600),
                    description: "bench".into(),
                    created_by: "bench".into(),
                },
                &app.policy.current(),
                Event::new("bench", "operator", "admin", "bench", "token.issue"),
            )
            .await
            .unwrap();
        let pipeline = app.pipeline(Default::default());
        let bearer = format!("Bearer {}", secret.as_str());
        let creds = Credentials {
            authorization: Some(&bearer),
            purpose: Some("service"),
            request_id: "req_bench",
            client: None,
        };
        // Warm the caches.
        let who = pipeline.authorize(&creds).await.unwrap();
        let snapshot = app.vault.snapshot(&id).await.unwrap().unwrap();

        let start = Instant::now();
        for _ in 0..n {
            black_box(app.tokens.authenticate(secret.as_str()).await.unwrap());
        }
        report("token check (cache hit: keyed hash + lookup)", n, start);

        let start = Instant::now();
        for _ in 0..n {
            black_box(pipeline.authorize(&creds).await.unwrap());
        }
        report("authorize (token + purpose claim + policy)", n, start);

        let start = Instant::now();
        for i in 0..n {
            black_box(who.field_access(if i % 2 == 0 { "phone" } else { "id_number" }));
        }
        report("policy decision per field", n, start);

        let start = Instant::now();
        for _ in 0..n {
            black_box(app.vault.snapshot(&id).await.unwrap());
        }
        report("subject snapshot (cache hit)", n, start);

        let uncached = app.vault.clone().with_snapshot_cache(0);
        let m = n / 20;
        let start = Instant::now();
        for _ in 0..m {
            black_box(uncached.snapshot(&id).await.unwrap());
        }
        report("subject snapshot (store: one round trip)", m, start);

        let wanted = vec![("phone".to_owned(), View::Masked)];
        let start = Instant::now();
        for _ in 0..n {
            black_box(app.vault.open(&id, &snapshot, &wanted).unwrap());
        }
        report("open one field (unwrap key, AES-GCM, mask)", n, start);

        let row = Event::new(
            "tok_x",
            "customer_service",
            "service",
            "req_x",
            "read_masked",
        )
        .subject(id.as_str())
        .field("phone");
        let start = Instant::now();
        for _ in 0..n {
            black_box(row.clone());
        }
        report("audit event built", n, start);
        let stored = piivault::store::AuditRow {
            actor_token: "tok_x".into(),
            actor_role: "customer_service".into(),
            action: "read_masked".into(),
            subject: Some(id.as_str().to_owned()),
            field: Some("phone".into()),
            purpose: "service".into(),
            decision: "allow".into(),
            reason: "ok".into(),
            request_id: "req_x".into(),
            prev_hash: vec![0; 32],
            ..Default::default()
        };
        let start = Instant::now();
        for _ in 0..n {
            black_box(chain_hash(stored.borrowed()));
        }
        report("audit chain hash (SHA-256)", n, start);

        let q = ReadInput {
            fields: Some("phone".into()),
            masked: None,
        };
        let m = n / 100;
        let start = Instant::now();
        for _ in 0..m {
            black_box(
                subjects::read(&pipeline, &who, id.as_str(), &q)
                    .await
                    .unwrap(),
            );
        }
        report("whole read, one at a time (durable audit commit)", m, start);
        let concurrent = 64u32;
        let rounds = (m / 4).max(1);
        let pipeline = std::sync::Arc::new(pipeline);
        let start = Instant::now();
        for _ in 0..rounds {
            let mut tasks = Vec::new();
            for _ in 0..concurrent {
                let (p, who, q, id) = (pipeline.clone(), who.clone(), q.clone(), id.clone());
                tasks.push(tokio::spawn(async move {
                    black_box(subjects::read(&p, &who, id.as_str(), &q).await.unwrap());
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        report(
            "whole read, 64 at a time (group commit), per read",
            rounds * concurrent,
            start,
        );
    });
}
