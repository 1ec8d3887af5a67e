//! Three `piivault serve` processes on one PostgreSQL, under concurrent load: no lost or
//! mixed update, one audit chain that verifies, and a revocation, a consent withdrawal
//! and a correction made on one node honoured by the others as soon as they have read
//! the change feed (each node publishes how far it has read in `/metrics`; the bound that
//! gives is the feed's poll interval, `cache_sync_ms`, 250 ms by default).

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::process::{self, Running};

struct Node {
    base: String,
    _server: Running,
}

async fn call(
    client: &Client,
    node: &Node,
    method: Method,
    path: &str,
    token: &str,
    purpose: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    call_at(
        client,
        &node.base,
        method,
        path,
        Some(token),
        Some(purpose),
        body,
    )
    .await
}

/// How far a node has read the change feed.
async fn feed_seen(client: &Client, node: &Node) -> i64 {
    let text = client
        .get(format!("{}/metrics", node.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("piivault_change_feed_seen"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(-1, |v| v as i64)
}

/// Waits until every node has read the change feed up to its head now.
async fn all_caught_up(client: &Client, nodes: &[Node], url: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("store");
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM cache_changes")
        .fetch_one(&mut conn)
        .await
        .expect("feed head");
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in nodes {
        while feed_seen(client, node).await < head {
            assert!(Instant::now() < deadline, "a node never read change {head}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn cli(dir: &Path, url: &Option<String>, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(process::bin())
        .args(args)
        .args(process::base_args(dir, url))
        .output()
        .expect("cli runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_postgres() {
    if postgres_url().is_none() {
        return;
    }
    let (url, pg_name) = process::child_store(Db::Postgres).await;
    let pg = url.clone().expect("a PostgreSQL URL");
    let dir = tempfile::tempdir().unwrap();
    // The first node makes the data directory (master key, TLS, audit key); the others
    // share it, as nodes of one vault share their keys.
    let mut servers = vec![process::start(dir.path(), &url, 0)];
    servers.push(process::start(dir.path(), &url, 1));
    servers.push(process::start(dir.path(), &url, 2));
    let nodes: Vec<Node> = servers
        .into_iter()
        .map(|s| Node {
            base: format!("https://localhost:{}", s.port),
            _server: s,
        })
        .collect();
    let client = https_client(&dir.path().join("data"));
    let dsr = process::issue_token(dir.path(), &url, "dsr_handler", "dsr", "nodes dsr");
    let admin = process::issue_token(dir.path(), &url, "admin", "admin", "nodes admin");
    let cs = process::issue_token(dir.path(), &url, "customer_service", "service", "nodes cs");
    let mkt = process::issue_token(dir.path(), &url, "marketing", "marketing", "nodes mkt");

    // Concurrent creates and reads on all three nodes.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (client, base, dsr) = (client.clone(), nodes[i % 3].base.clone(), dsr.clone());
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(format!("{base}/v1/subjects"))
                .bearer_auth(&dsr)
                .header("X-Purpose", "dsr")
                .json(&json!({"fields": {"name": format!("节点{i}"), "phone": "13812345678", "tier": "basic"}}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::CREATED);
            let v: Value = resp.json().await.unwrap();
            v["id"].as_str().unwrap().to_owned()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }

    // Two corrections of one subject at once, on two nodes, each changing two fields:
    // the subject ends as one of them, never a mix.
    let id = ids[0].clone();
    for round in 0..15 {
        let a =
            json!({"fields": {"name": format!("甲{round}"), "phone": format!("138000{round:05}")}});
        let b =
            json!({"fields": {"name": format!("乙{round}"), "phone": format!("139000{round:05}")}});
        let path = format!("/v1/subjects/{id}");
        let (ra, rb) = tokio::join!(
            call(
                &client,
                &nodes[round % 3],
                Method::PATCH,
                &path,
                &dsr,
                "dsr",
                Some(&a)
            ),
            call(
                &client,
                &nodes[(round + 1) % 3],
                Method::PATCH,
                &path,
                &dsr,
                "dsr",
                Some(&b)
            ),
        );
        assert_eq!(ra.0, StatusCode::OK, "{}", ra.1);
        assert_eq!(rb.0, StatusCode::OK, "{}", rb.1);
        all_caught_up(&client, &nodes, &pg).await;
        let mut seen = Vec::new();
        for node in &nodes {
            let (s, v) = call(
                &client,
                node,
                Method::GET,
                &format!("{path}?fields=name,phone"),
                &dsr,
                "dsr",
                None,
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let name = v["fields"]["name"]["value"].as_str().unwrap().to_owned();
            let phone = v["fields"]["phone"]["value"].as_str().unwrap().to_owned();
            let whole = (name == format!("甲{round}") && phone == format!("138000{round:05}"))
                || (name == format!("乙{round}") && phone == format!("139000{round:05}"));
            assert!(
                whole,
                "round {round}: a mix of two corrections: {name} {phone}"
            );
            seen.push((name, phone));
        }
        assert!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "nodes disagree: {seen:?}"
        );
    }

    // A token used on every node (and cached there), revoked on one: refused on all.
    let (s, issued) = call(
        &client,
        &nodes[0],
        Method::POST,
        "/v1/tokens",
        &admin,
        "admin",
        Some(&json!({"role": "dsr_handler", "purposes": ["dsr"], "ttl_seconds": 600})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{issued}");
    let (tok_id, secret) = (
        issued["id"].as_str().unwrap().to_owned(),
        issued["token"].as_str().unwrap().to_owned(),
    );
    let read = format!("/v1/subjects/{}", ids[1]);
    for node in &nodes {
        assert_eq!(
            call(&client, node, Method::GET, &read, &secret, "dsr", None)
                .await
                .0,
            StatusCode::OK
        );
    }
    let (s, b) = call(
        &client,
        &nodes[1],
        Method::DELETE,
        &format!("/v1/tokens/{tok_id}"),
        &admin,
        "admin",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    all_caught_up(&client, &nodes, &pg).await;
    for node in &nodes {
        let (s, b) = call(&client, node, Method::GET, &read, &secret, "dsr", None).await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::UNAUTHORIZED, json!("token_revoked"))
        );
    }

    // A consent granted on one node, relied on (and cached) by all, withdrawn on another.
    let subject = &ids[2];
    let consent = format!("/v1/subjects/{subject}/consents/marketing");
    let (s, b) = call(
        &client,
        &nodes[2],
        Method::PUT,
        &consent,
        &cs,
        "service",
        Some(&json!({"notice_version": "2026-03", "channel": "app"})),
    )
    .await;
    assert!(s.is_success(), "{b}");
    all_caught_up(&client, &nodes, &pg).await;
    let tier = format!("/v1/subjects/{subject}?fields=tier");
    for node in &nodes {
        let (s, b) = call(&client, node, Method::GET, &tier, &mkt, "marketing", None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (s, b) = call(
        &client,
        &nodes[0],
        Method::DELETE,
        &consent,
        &cs,
        "service",
        None,
    )
    .await;
    assert!(s.is_success(), "{b}");
    all_caught_up(&client, &nodes, &pg).await;
    for node in &nodes {
        let (s, b) = call(&client, node, Method::GET, &tier, &mkt, "marketing", None).await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("consent_missing")),
            "{b}"
        );
    }

    // One chain, written by three nodes, that verifies.
    drop(nodes);
    let (ok, text) = cli(dir.path(), &url, &["audit", "verify"]);
    assert!(ok, "{text}");
    drop_pg_database(&pg_name.unwrap()).await;
}
