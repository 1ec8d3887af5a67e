//! Crash safety: the real server, driven by a mixed load from this process (creates,
//! corrections, reads, erasures, records, consent grants and withdrawals, token
//! revocations), is killed with SIGKILL after a random number of acknowledged requests,
//! restarted on the same store, and checked against everything the client saw
//! acknowledged: each such write reads back, a write cut off in flight is either wholly
//! there or wholly absent, erased subjects stay erased, a withdrawn consent stays
//! withdrawn, a revoked token stays revoked, and the audit chain verifies.
//!
//! Cycles: `PIIVAULT_CRASH_CYCLES` (default 3; the long run is 20 or more).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_stores;
use crate::helpers::*;
use crate::process::{child_store, issue_token, start_with, stop, Running};

/// What the store must hold: a known state, or either of two when the request that
/// changes it was cut off by the crash.
#[derive(Debug, Clone, PartialEq)]
enum Known<T> {
    Is(T),
    Either(T, T),
}

impl<T: PartialEq + Clone + std::fmt::Debug> Known<T> {
    fn allows(&self, v: &T) -> bool {
        match self {
            Known::Is(a) => a == v,
            Known::Either(a, b) => a == v || b == v,
        }
    }

    fn settled(&self) -> Option<&T> {
        match self {
            Known::Is(a) => Some(a),
            Known::Either(..) => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Subject {
    /// The worker that changes it (no two workers touch one subject).
    owner: usize,
    phone: String,
    address: Known<String>,
    erased: Known<bool>,
    /// Marketing consent in force.
    consent: Known<bool>,
    /// Ticket texts acknowledged, and those whose request was cut off.
    records: BTreeSet<String>,
    maybe_records: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct Victim {
    /// The worker that may revoke it.
    owner: usize,
    id: String,
    secret: String,
    revoked: Known<bool>,
}

#[derive(Default)]
struct Ledger {
    subjects: BTreeMap<String, Subject>,
    /// Creates cut off by the crash: the fields sent.
    cut_creates: Vec<Value>,
    victims: Vec<Victim>,
    /// Writes acknowledged, over all cycles.
    acknowledged: usize,
}

struct Load {
    client: reqwest::Client,
    /// The server's address (a restarted server listens on another port).
    base: Mutex<String>,
    dsr: String,
    admin: String,
    ledger: Mutex<Ledger>,
    counter: AtomicUsize,
    acked: AtomicUsize,
    /// Writes whose request the crash cut off (their outcome checked after restart).
    cut: AtomicUsize,
    stop: AtomicBool,
}

enum Reply {
    Answer(StatusCode, Value),
    /// No answer: the server went away.
    Cut,
}

impl Load {
    async fn call(
        &self,
        tok: &str,
        purpose: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base.lock().unwrap()))
            .bearer_auth(tok)
            .header("X-Purpose", purpose);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status();
                match r.bytes().await {
                    Ok(bytes) => Reply::Answer(
                        status,
                        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    ),
                    Err(_) => Reply::Cut,
                }
            }
            Err(_) => Reply::Cut,
        }
    }

    fn next(&self) -> usize {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn acked(&self) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        self.ledger.lock().unwrap().acknowledged += 1;
    }

    /// A subject this worker may change now (one with a settled state).
    fn pick(&self, rng: &mut StdRng, worker: usize, workers: usize) -> Option<(String, Subject)> {
        let ledger = self.ledger.lock().unwrap();
        let mine: Vec<(&String, &Subject)> = ledger
            .subjects
            .iter()
            .filter(|(_, s)| s.owner == worker % workers && s.erased == Known::Is(false))
            .collect();
        if mine.is_empty() {
            return None;
        }
        let (id, s) = mine[rng.gen_range(0..mine.len())];
        Some((id.clone(), s.clone()))
    }

    /// Runs one operation. Returns false once the server is gone.
    async fn step(&self, rng: &mut StdRng, worker: usize, workers: usize) -> bool {
        let roll = rng.gen_range(0..100);
        let target = self.pick(rng, worker, workers);
        match (roll, target) {
            (0..=29, _) | (_, None) => self.create(worker).await,
            (30..=49, Some((id, s))) => self.correct(&id, &s).await,
            (50..=64, Some((id, s))) => self.read(&id, &s).await,
            (65..=74, Some((id, _))) => self.record(&id).await,
            (75..=89, Some((id, s))) => self.consent(&id, &s).await,
            (90..=94, Some((id, _))) => self.erase(&id).await,
            _ => self.revoke(rng, worker % workers).await,
        }
    }

    async fn create(&self, worker: usize) -> bool {
        let n = self.next();
        let phone = format!("139{n:08}");
        let fields = json!({
            "name": format!("崩溃测试{n}"),
            "phone": phone,
            "address": format!("崩溃路{n}号"),
            "tier": "gold",
        });
        match self
            .call(
                &self.dsr,
                "dsr",
                Method::POST,
                "/v1/subjects",
                Some(json!({"fields": fields.clone()})),
            )
            .await
        {
            Reply::Answer(StatusCode::CREATED, b) => {
                let id = b["id"].as_str().unwrap().to_owned();
                self.ledger.lock().unwrap().subjects.insert(
                    id,
                    Subject {
                        owner: worker,
                        phone,
                        address: Known::Is(fields["address"].as_str().unwrap().to_owned()),
                        erased: Known::Is(false),
                        consent: Known::Is(false),
                        records: BTreeSet::new(),
                        maybe_records: BTreeSet::new(),
                    },
                );
                self.acked();
                true
            }
            Reply::Answer(s, b) => answer_while_up(s, &b),
            Reply::Cut => {
                self.cut.fetch_add(1, Ordering::Relaxed);
                self.ledger.lock().unwrap().cut_creates.push(fields);
                false
            }
        }
    }

    async fn correct(&self, id: &str, s: &Subject) -> bool {
        let Some(old) = s.address.settled().cloned() else {
            return true;
        };
        let new = format!("更正路{}号", self.next());
        let path = format!("/v1/subjects/{id}");
        match self
            .call(
                &self.dsr,
                "dsr",
                Method::PATCH,
                &path,
                Some(json!({"fields": {"address": new}})),
            )
            .await
        {
            Reply::Answer(StatusCode::OK, _) => {
                self.update(id, |s| s.address = Known::Is(new));
                self.acked();
                true
            }
            Reply::Answer(s, b) => answer_while_up(s, &b),
            Reply::Cut => {
                self.cut.fetch_add(1, Ordering::Relaxed);
                self.update(id, |s| s.address = Known::Either(old, new));
                false
            }
        }
    }

    async fn read(&self, id: &str, s: &Subject) -> bool {
        let path = format!("/v1/subjects/{id}?fields=address,phone");
        match self.call(&self.dsr, "dsr", Method::GET, &path, None).await {
            Reply::Answer(StatusCode::OK, b) => {
                let address = b["fields"]["address"]["value"].as_str().unwrap().to_owned();
                assert!(
                    s.address.allows(&address),
                    "{id}: read {address}, expected {:?}",
                    s.address
                );
                assert_eq!(b["fields"]["phone"]["value"], json!(s.phone));
                true
            }
            Reply::Answer(s, b) => answer_while_up(s, &b),
            Reply::Cut => false,
        }
    }

    async fn record(&self, id: &str) -> bool {
        let text = format!("工单{}", self.next());
        let path = format!("/v1/subjects/{id}/records/service_tickets");
        match self
            .call(
                &self.dsr,
                "dsr",
                Method::POST,
                &path,
                Some(json!({"text": text})),
            )
            .await
        {
            Reply::Answer(StatusCode::CREATED, _) => {
                self.update(id, |s| {
                    s.records.insert(text);
                });
                self.acked();
                true
            }
            Reply::Answer(s, b) => answer_while_up(s, &b),
            Reply::Cut => {
                self.cut.fetch_add(1, Ordering::Relaxed);
                self.update(id, |s| {
                    s.maybe_records.insert(text);
                });
                false
            }
        }
    }

    async fn consent(&self, id: &str, s: &Subject) -> bool {
        let Some(&active) = s.consent.settled() else {
            return true;
        };
        let path = format!("/v1/subjects/{id}/consents/marketing");
        let (method, body) = if active {
            (Method::DELETE, None)
        } else {
            (Method::PUT, Some(json!({"notice_version": "crash-1"})))
        };
        match self.call(&self.dsr, "dsr", method, &path, body).await {
            Reply::Answer(StatusCode::OK, _) => {
                self.update(id, |s| s.consent = Known::Is(!active));
                self.acked();
                true
            }
            Reply::Answer(s, b) => answer_while_up(s, &b),
            Reply::Cut => {
                self.cut.fetch_add(1, Ordering::Relaxed);
                self.update(id, |s| s.consent = Known::Either(active, !active));
                false
            }
        }
    }

    async fn erase(&self, id: &str) -> bool {
        match self
            .call(
                &self.dsr,
                "dsr",
                Method::DELETE,
                &format!("/v1/subjects/{id}"),
                None,
            )
            .await
        {
            Reply::Answer(StatusCode::OK, _) => {
                self.update(id, |s| s.erased = Known::Is(true));
                self.acked();
                true
            }
            Reply::Answer(s, b) => answer_while_up(s, &b),
            Reply::Cut => {
                self.cut.fetch_add(1, Ordering::Relaxed);
                self.update(id, |s| s.erased = Known::Either(false, true));
                false
            }
        }
    }

    async fn revoke(&self, rng: &mut StdRng, worker: usize) -> bool {
        let victim = {
            let ledger = self.ledger.lock().unwrap();
            let live: Vec<&Victim> = ledger
                .victims
                .iter()
                .filter(|v| v.owner == worker && v.revoked == Known::Is(false))
                .collect();
            if live.is_empty() {
                return true;
            }
            live[rng.gen_range(0..live.len())].id.clone()
        };
        match self
            .call(
                &self.admin,
                "admin",
                Method::DELETE,
                &format!("/v1/tokens/{victim}"),
                None,
            )
            .await
        {
            Reply::Answer(StatusCode::OK, _) => {
                self.set_revoked(&victim, Known::Is(true));
                self.acked();
                true
            }
            Reply::Answer(s, b) => answer_while_up(s, &b),
            Reply::Cut => {
                self.cut.fetch_add(1, Ordering::Relaxed);
                self.set_revoked(&victim, Known::Either(false, true));
                false
            }
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Subject)) {
        f(self.ledger.lock().unwrap().subjects.get_mut(id).unwrap());
    }

    fn set_revoked(&self, id: &str, state: Known<bool>) {
        let mut ledger = self.ledger.lock().unwrap();
        ledger
            .victims
            .iter_mut()
            .find(|v| v.id == id)
            .unwrap()
            .revoked = state;
    }
}

/// An answer other than the one expected: while the server is up, only a 503 while it
/// is going down is acceptable.
fn answer_while_up(status: StatusCode, body: &Value) -> bool {
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "unexpected answer: {body}"
    );
    false
}

async fn run_workers(
    load: &Arc<Load>,
    cycle: u64,
    workers: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let load = load.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(cycle * 1000 + w as u64);
                while !load.stop.load(Ordering::Relaxed) {
                    if !load.step(&mut rng, w, workers).await {
                        return;
                    }
                }
            })
        })
        .collect()
}

/// After a restart: everything acknowledged is there, nothing cut off is half there.
/// Settles every `Either` to what the store holds.
async fn check(load: &Load, marketing: &str) -> usize {
    let mut checked = 0;
    let subjects: Vec<(String, Subject)> = load
        .ledger
        .lock()
        .unwrap()
        .subjects
        .clone()
        .into_iter()
        .collect();
    for (id, s) in subjects {
        let path = format!("/v1/subjects/{id}?fields=address,phone");
        let Reply::Answer(status, b) = load.call(&load.dsr, "dsr", Method::GET, &path, None).await
        else {
            panic!("the restarted server does not answer");
        };
        let erased = status == StatusCode::NOT_FOUND;
        assert!(erased || status == StatusCode::OK, "{id}: {status} {b}");
        assert!(
            s.erased.allows(&erased),
            "{id}: erased {erased}, expected {:?}",
            s.erased
        );
        checked += 1;
        if erased {
            load.update(&id, |x| x.erased = Known::Is(true));
            continue;
        }
        load.update(&id, |x| x.erased = Known::Is(false));
        let address = b["fields"]["address"]["value"].as_str().unwrap().to_owned();
        assert!(
            s.address.allows(&address),
            "{id}: address {address}, expected {:?}",
            s.address
        );
        assert_eq!(b["fields"]["phone"]["value"], json!(s.phone), "{id}");
        load.update(&id, |x| x.address = Known::Is(address));

        let path = format!("/v1/subjects/{id}/records/service_tickets");
        let Reply::Answer(StatusCode::OK, b) =
            load.call(&load.dsr, "dsr", Method::GET, &path, None).await
        else {
            panic!("{id}: records cannot be read");
        };
        let held: BTreeSet<String> = b["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["document"]["text"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            s.records.is_subset(&held),
            "{id}: acknowledged records missing"
        );
        let allowed: BTreeSet<String> = s.records.union(&s.maybe_records).cloned().collect();
        assert!(held.is_subset(&allowed), "{id}: records never sent");
        load.update(&id, |x| {
            x.records = held.clone();
            x.maybe_records.clear();
        });

        let path = format!("/v1/subjects/{id}?fields=tier");
        let Reply::Answer(status, b) = load
            .call(marketing, "marketing", Method::GET, &path, None)
            .await
        else {
            panic!("no answer");
        };
        let active = match status {
            StatusCode::OK => true,
            StatusCode::FORBIDDEN => {
                assert_eq!(b["error"]["code"], "consent_missing", "{b}");
                false
            }
            other => panic!("{id}: marketing read answered {other}: {b}"),
        };
        assert!(
            s.consent.allows(&active),
            "{id}: consent {active}, expected {:?}",
            s.consent
        );
        load.update(&id, |x| x.consent = Known::Is(active));
    }

    // A create cut off is there whole or not at all.
    let cut = std::mem::take(&mut load.ledger.lock().unwrap().cut_creates);
    for fields in cut {
        let Reply::Answer(StatusCode::OK, b) = load
            .call(
                &load.dsr,
                "dsr",
                Method::POST,
                "/v1/subjects/lookup",
                Some(json!({"field": "phone", "value": fields["phone"]})),
            )
            .await
        else {
            panic!("lookup failed");
        };
        let found = b["ids"].as_array().unwrap().clone();
        assert!(found.len() <= 1, "{b}");
        if let Some(hit) = found.first() {
            let id = hit.as_str().unwrap().to_owned();
            let path = format!("/v1/subjects/{id}?fields=name,phone,address,tier");
            let Reply::Answer(StatusCode::OK, b) =
                load.call(&load.dsr, "dsr", Method::GET, &path, None).await
            else {
                panic!("a subject found by lookup cannot be read");
            };
            for f in ["name", "phone", "address", "tier"] {
                assert_eq!(
                    b["fields"][f]["value"], fields[f],
                    "{id}: half-written create ({f})"
                );
            }
            load.ledger.lock().unwrap().subjects.insert(
                id,
                Subject {
                    owner: 0,
                    phone: fields["phone"].as_str().unwrap().to_owned(),
                    address: Known::Is(fields["address"].as_str().unwrap().to_owned()),
                    erased: Known::Is(false),
                    consent: Known::Is(false),
                    records: BTreeSet::new(),
                    maybe_records: BTreeSet::new(),
                },
            );
        }
        checked += 1;
    }

    // Revoked tokens stay revoked; the others still work.
    let victims = load.ledger.lock().unwrap().victims.clone();
    for v in victims {
        let path = "/v1/subjects/sub_00000000000000000000000000000000?fields=phone";
        let Reply::Answer(status, b) = load
            .call(&v.secret, "service", Method::GET, path, None)
            .await
        else {
            panic!("no answer");
        };
        let revoked = match status {
            StatusCode::UNAUTHORIZED => true,
            StatusCode::NOT_FOUND => false,
            other => panic!("token check answered {other}: {b}"),
        };
        assert!(
            v.revoked.allows(&revoked),
            "token {}: revoked {revoked}, expected {:?}",
            v.id,
            v.revoked
        );
        load.set_revoked(&v.id, Known::Is(revoked));
        checked += 1;
    }
    checked
}

/// Tokens for this cycle's revocations, found by their description.
async fn victims(load: &Load, dir: &Path, url: &Option<String>, cycle: u64) {
    for i in 0..WORKERS {
        let description = format!("crash victim {cycle}.{i}");
        let secret = issue_token(dir, url, "customer_service", "service", &description);
        let Reply::Answer(StatusCode::OK, b) = load
            .call(&load.admin, "admin", Method::GET, "/v1/tokens", None)
            .await
        else {
            panic!("tokens cannot be listed");
        };
        let id = b["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["description"] == json!(description))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut ledger = load.ledger.lock().unwrap();
        let owner = ledger.victims.len() % WORKERS;
        ledger.victims.push(Victim {
            owner,
            id,
            secret,
            revoked: Known::Is(false),
        });
    }
}

/// Clients sending requests at once.
const WORKERS: usize = 4;

fn cycles() -> u64 {
    std::env::var("PIIVAULT_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

both_stores!(
    acknowledged_writes_survive_kill_9_at_random_moments,
    |db| async move {
        let dir = tempfile::tempdir().unwrap();
        let (url, pg_name) = child_store(db).await;
        // Revoked tokens are presented after every restart: more bad tokens than the
        // default budget allows one address.
        let config = dir.path().join("crash.toml");
        std::fs::write(&config, "bad_token_max_failures = 100000\n").unwrap();
        let config = config.display().to_string();
        let serve_args = ["--config", config.as_str()];
        let mut server: Running = start_with(dir.path(), &url, 0, &serve_args);
        let data = dir.path().join("data");
        let dsr = issue_token(dir.path(), &url, "dsr_handler", "dsr", "crash load");
        let admin = issue_token(dir.path(), &url, "admin", "admin", "crash admin");
        let marketing = issue_token(dir.path(), &url, "marketing", "marketing", "crash check");
        let auditor = issue_token(dir.path(), &url, "auditor", "audit", "crash audit");
        let load = Arc::new(Load {
            client: https_client(&data),
            base: Mutex::new(format!("https://localhost:{}", server.port)),
            dsr,
            admin,
            ledger: Mutex::new(Ledger::default()),
            counter: AtomicUsize::new(0),
            acked: AtomicUsize::new(0),
            cut: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let mut checked = 0;
        let mut seeds = StdRng::seed_from_u64(0x6b696c6c);
        for cycle in 0..cycles() {
            victims(&load, dir.path(), &url, cycle).await;
            // Kill after a random number of acknowledged writes.
            let after = seeds.gen_range(20..150);
            load.acked.store(0, Ordering::Relaxed);
            load.stop.store(false, Ordering::Relaxed);
            let workers = run_workers(&load, cycle, WORKERS).await;
            while load.acked.load(Ordering::Relaxed) < after {
                assert!(
                    !workers.iter().all(|w| w.is_finished()),
                    "the load stopped before the kill"
                );
                tokio::task::yield_now().await;
            }
            server.kill9();
            for w in workers {
                w.await.unwrap();
            }
            server = start_with(dir.path(), &url, cycle as usize + 1, &serve_args);
            *load.base.lock().unwrap() = format!("https://localhost:{}", server.port);
            checked += check(&load, &marketing).await;
            let Reply::Answer(StatusCode::OK, b) = load
                .call(&auditor, "audit", Method::GET, "/v1/audit/verify", None)
                .await
            else {
                panic!("audit verify did not answer");
            };
            assert_eq!(b["ok"], true, "cycle {cycle}: {b}");
        }
        let acknowledged = load.ledger.lock().unwrap().acknowledged;
        eprintln!(
        "crash safety ({db:?}): {} kill -9 cycles, {acknowledged} acknowledged writes, {} writes cut off by the kill, {checked} checks after restarts",
        cycles(),
        load.cut.load(Ordering::Relaxed)
    );
        stop(server);
        if let Some(name) = pg_name {
            drop_pg_database(&name).await;
        }
    }
);
