//! The audit trail's indexes (src/store/audit_index.rs), built after the commit instead
//! of by it: a subject's access history, a time window's events and a token's events are
//! complete whether they are indexed yet or not, pruned events leave the index, and an
//! index that does not match the trail (a database restored from a backup beside a newer
//! index file) is made again.

use std::collections::BTreeMap;

use piivault::audit::{Event, Reports};
use piivault::store::AuditRow;
use reqwest::{Method, StatusCode};

use crate::both_stores;
use crate::helpers::*;

fn read_event(subject: &str, n: usize) -> Event {
    Event::new(
        "tok_index",
        "customer_service",
        "service",
        &format!("req_{n}"),
        "read",
    )
    .subject(subject)
    .field("phone")
}

/// The events about `subject`, from a scan of the whole trail.
async fn truth(t: &TestApp, subject: &str) -> Vec<i64> {
    t.events()
        .await
        .into_iter()
        .filter(|e| e.subject.as_deref() == Some(subject))
        .map(|e| e.seq)
        .collect()
}

/// The events about `subject`, as its access history finds them.
async fn history(t: &TestApp, subject: &str) -> Vec<i64> {
    history_in(&t.app.store, subject).await
}

async fn history_in(store: &piivault::store::Store, subject: &str) -> Vec<i64> {
    store
        .audit_events_for_subject(subject)
        .await
        .expect("access history")
        .into_iter()
        .map(|e| e.seq)
        .collect()
}

/// The events about `subject`, as the `accesses_by_subject` report finds them.
async fn reported(t: &TestApp, auditor: &str, subject: &str) -> Vec<i64> {
    let (s, b) = t
        .call(
            Method::GET,
            &format!(
                "/v1/audit/reports/accesses_by_subject?from=2000-01-01&to=2999-12-31&subject={subject}"
            ),
            Some(auditor),
            Some("audit"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect()
}

/// Index entries for events up to `seq`, read from the store directly.
async fn index_entries_through(t: &TestApp, seq: i64) -> i64 {
    use sqlx::Connection as _;
    let mut conn = sqlx::AnyConnection::connect(&t.database_url)
        .await
        .expect("raw connection");
    if t.db == Db::Sqlite {
        // A file of its own beside the database.
        let file = t.dir.path().join("piivault.db-audit-index");
        sqlx::query("ATTACH DATABASE $1 AS audit_index")
            .bind(file.display().to_string())
            .execute(&mut conn)
            .await
            .expect("attach");
    }
    sqlx::query_scalar("SELECT COUNT(*) FROM audit_index.subject_events WHERE seq <= $1")
        .bind(seq)
        .fetch_one(&mut conn)
        .await
        .expect("count")
}

/// Prunes the older half of the trail; gives the last pruned event's sequence number.
async fn prune_half(t: &TestApp) -> i64 {
    let events = t.events().await;
    let cut = &events[events.len() / 2];
    t.app
        .store
        .prune_audit(cut.seq, &cut.hash)
        .await
        .expect("pruned");
    cut.seq
}

async fn record(t: &TestApp, subjects: &[&str], range: std::ops::Range<usize>) {
    for n in range {
        t.app
            .audit
            .record_one(read_event(subjects[n % subjects.len()], n))
            .await
            .expect("recorded");
    }
}

both_stores!(
    access_history_is_complete_while_the_index_catches_up,
    |db| async move {
        let t = spawn_app(db).await;
        let auditor = t.token("auditor", &["audit"]).await;
        let subjects = ["sub_index_a", "sub_index_b", "sub_index_c"];
        record(&t, &subjects, 0..30).await;
        // A few events at a time: after every step, each history is complete and has no
        // event twice (the background indexer may be taking steps too).
        loop {
            for s in subjects {
                let want = truth(&t, s).await;
                assert_eq!(want.len(), 10, "{s}");
                assert_eq!(history(&t, s).await, want, "{s}");
                assert_eq!(reported(&t, &auditor, s).await, want, "{s}");
            }
            let step = t.app.store.index_audit(4).await.expect("index step");
            if step.behind == 0 {
                break;
            }
            assert!(step.indexed > 0, "a step behind the head makes progress");
        }
        // New events beyond the index's mark are found by the scan of the newest ones.
        record(&t, &subjects, 30..36).await;
        for s in subjects {
            assert_eq!(history(&t, s).await, truth(&t, s).await, "{s}");
            assert_eq!(reported(&t, &auditor, s).await, truth(&t, s).await, "{s}");
        }
        assert!(history(&t, "sub_index_none").await.is_empty());

        // Pruning: events up to the anchor leave the trail, and their entries the index.
        let cut = prune_half(&t).await;
        while t.app.store.index_audit(1000).await.expect("step").behind > 0 {}
        let left = index_entries_through(&t, cut).await;
        assert_eq!(left, 0, "entries of pruned events are removed");
        for s in subjects {
            let want = truth(&t, s).await;
            assert!(want.iter().all(|seq| *seq > cut));
            assert_eq!(history(&t, s).await, want, "{s}");
        }
    }
);

/// SQLite keeps the index in a file beside the database. Restoring the database from a
/// backup leaves a newer index behind, whose entries point at sequence numbers the
/// restored trail will give to other events; the vault notices and makes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_does_not_match_the_trail_is_made_again() {
    let mut t = spawn_app(Db::Sqlite).await;
    let db = t.dir.path().join("piivault.db");
    let index = t.dir.path().join("piivault.db-audit-index");
    record(&t, &["sub_before"], 0..5).await;
    // A backup of the database (SQLite's online backup, through the store's own file).
    let backup = t.dir.path().join("backup.db");
    let raw = t.raw().await;
    sqlx::query(&format!("VACUUM INTO '{}'", backup.display()))
        .execute(&raw)
        .await
        .expect("backup");
    raw.close().await;
    // Later events, all indexed, about another subject.
    record(&t, &["sub_after"], 5..25).await;
    while t.app.store.index_audit(1000).await.expect("step").behind > 0 {}
    t.stop().await;

    // Restore the backup in place of the database, as a new file (as an operator would
    // with the vault stopped); the index file stays as it was. Copying over the old file
    // kept its inode, which SQLite in this same process still associated with the closed
    // store's lock state: one run in about 25 under load then found it locked.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::copy(&backup, &db).expect("restore");
    assert!(index.exists());
    let app = piivault::open(&t.settings).await.expect("vault opens");
    // New events take the sequence numbers the stale index gave to `sub_after`.
    for n in 0..20 {
        app.audit
            .record_one(read_event("sub_restored", n))
            .await
            .expect("recorded");
    }
    let all = app.store.audit_events(0, 100_000).await.expect("events");
    for s in ["sub_before", "sub_after", "sub_restored"] {
        let want: Vec<i64> = all
            .iter()
            .filter(|e| e.subject.as_deref() == Some(s))
            .map(|e| e.seq)
            .collect();
        assert_eq!(history_in(&app.store, s).await, want, "{s}");
    }
    assert!(
        history_in(&app.store, "sub_after").await.is_empty(),
        "the restored trail has no event about sub_after"
    );
    app.store.close().await;
}

/// Reports that list the events of a window through `:events_in_window`, and those of a
/// token in a window through `:token_seqs`.
fn window_reports(dir: &std::path::Path) -> Reports {
    let defs = dir.join("window-reports");
    std::fs::create_dir_all(&defs).expect("report dir");
    std::fs::write(
        defs.join("window.toml"),
        "name = \"window\"\ndescription = \"d\"\n\
         query = \"SELECT seq FROM :events_in_window ORDER BY seq\"\n",
    )
    .expect("report");
    std::fs::write(
        defs.join("by_token.toml"),
        "name = \"by_token\"\ndescription = \"d\"\nparameters = [\"token\"]\n\
         query = \"SELECT seq FROM audit_events WHERE ts >= :from AND ts < :to AND seq IN (:token_seqs) ORDER BY seq\"\n",
    )
    .expect("report");
    let catalogue = piivault::classify::Catalogue::builtin().expect("catalogue");
    Reports::load(Some(&defs), &catalogue).expect("reports load")
}

/// Windows over the trail `events`: the whole of it, each event's own millisecond,
/// spans that start and end inside blocks of the index's time summary and across them,
/// and windows before and after every event.
fn windows(events: &[AuditRow]) -> Vec<(i64, i64)> {
    let first = events.first().expect("events").ts;
    let last = events.last().expect("events").ts;
    let mut out = vec![
        (0, last + 1_000_000),
        (first - 1000, first),
        (last + 1, last + 1000),
    ];
    let n = events.len();
    for (a, b) in [
        (0, n / 3),
        (n / 5, n / 2),
        (n / 3, n - 1),
        (n / 2, n / 2 + 7),
    ] {
        out.push((events[a].ts, events[b].ts));
        out.push((events[a].ts, events[b].ts + 1));
    }
    for i in (0..n).step_by(53) {
        out.push((events[i].ts, events[i].ts + 1));
    }
    out
}

async fn report_seqs(
    t: &TestApp,
    reports: &Reports,
    name: &str,
    (from, to): (i64, i64),
    token: Option<&str>,
) -> Vec<i64> {
    let params: BTreeMap<String, String> = token
        .map(|k| [("token".to_owned(), k.to_owned())].into())
        .unwrap_or_default();
    reports
        .run(&t.app.store, name, from, to, &params)
        .await
        .expect("report runs")
        .rows
        .iter()
        .map(|r| r[0].as_i64().expect("seq"))
        .collect()
}

/// Every window and token report against a scan of the trail.
async fn check_windows(t: &TestApp, reports: &Reports, tokens: &[&str]) {
    let events = t.events().await;
    for (from, to) in windows(&events) {
        let inside = |e: &&AuditRow| e.ts >= from && e.ts < to;
        let want: Vec<i64> = events.iter().filter(inside).map(|e| e.seq).collect();
        let got = report_seqs(t, reports, "window", (from, to), None).await;
        assert_eq!(got, want, "window [{from}, {to})");
        for token in tokens {
            let want: Vec<i64> = events
                .iter()
                .filter(inside)
                .filter(|e| e.actor_token == *token)
                .map(|e| e.seq)
                .collect();
            let got = report_seqs(t, reports, "by_token", (from, to), Some(token)).await;
            assert_eq!(got, want, "{token} in [{from}, {to})");
        }
    }
}

both_stores!(
    time_windows_and_tokens_are_complete_while_the_index_catches_up,
    |db| async move {
        let t = spawn_app(db).await;
        let reports = window_reports(t.dir.path());
        let tokens = ["tok_window_a", "tok_window_b"];
        // Bursts of events over several blocks of the time summary, each burst in later
        // milliseconds than the one before (waiting for the clock to move on).
        let mut n = 0;
        for burst in 0..6 {
            for _ in 0..(90 + burst * 17) {
                let event = Event::new(
                    tokens[n % 2],
                    "auditor",
                    "audit",
                    &format!("req_{n}"),
                    "read",
                )
                .subject("sub_window");
                t.app.audit.record_one(event).await.expect("recorded");
                n += 1;
            }
            let last = t.events().await.last().expect("events").ts;
            while piivault::store::now_ms() <= last {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        assert!(n as i64 > 2 * piivault::store::TIME_BLOCK);
        // A step at a time, the mark falling inside blocks and between them.
        loop {
            check_windows(&t, &reports, &tokens).await;
            let step = t.app.store.index_audit(97).await.expect("index step");
            if step.behind == 0 {
                break;
            }
        }
        check_windows(&t, &reports, &tokens).await;
        // Pruned inside a block: what is left is found, what is gone is not.
        prune_half(&t).await;
        check_windows(&t, &reports, &tokens).await;
        while t.app.store.index_audit(1000).await.expect("step").behind > 0 {}
        check_windows(&t, &reports, &tokens).await;
    }
);

/// An index file of an earlier layout (before the token and time indexes moved into it)
/// is made again from the trail when the vault opens: reports that need the new tables
/// work, and find every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_file_of_an_earlier_layout_is_made_again() {
    let mut t = spawn_app(Db::Sqlite).await;
    let reports = window_reports(t.dir.path());
    let index = t.dir.path().join("piivault.db-audit-index");
    record(&t, &["sub_layout"], 0..40).await;
    while t.app.store.index_audit(1000).await.expect("step").behind > 0 {}
    let events = t.events().await;
    t.stop().await;

    // The layout of the previous release: the subject index and the mark only.
    {
        use sqlx::Connection as _;
        let url = format!("sqlite://{}", index.display());
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("index file");
        for sql in [
            "DROP TABLE actor_events",
            "DROP TABLE time_blocks",
            "PRAGMA user_version = 0",
        ] {
            sqlx::query(sql).execute(&mut conn).await.expect(sql);
        }
        conn.close().await.expect("closed");
    }
    let app = piivault::open(&t.settings).await.expect("vault opens");
    let all: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let params = [("token".to_owned(), "tok_index".to_owned())].into();
    for step in [false, true] {
        if step {
            while app.store.index_audit(1000).await.expect("step").behind > 0 {}
        }
        let window = reports
            .run(
                &app.store,
                "window",
                0,
                piivault::store::now_ms() + 3_600_000,
                &BTreeMap::new(),
            )
            .await
            .expect("window report");
        let seqs: Vec<i64> = window
            .rows
            .iter()
            .map(|r| r[0].as_i64().expect("seq"))
            .collect();
        assert_eq!(seqs[..all.len()], all[..], "indexed: {step}");
        let by_token = reports
            .run(
                &app.store,
                "by_token",
                0,
                piivault::store::now_ms() + 3_600_000,
                &params,
            )
            .await
            .expect("token report");
        let want = events
            .iter()
            .filter(|e| e.actor_token == "tok_index")
            .count();
        assert_eq!(by_token.rows.len(), want, "indexed: {step}");
    }
    app.store.close().await;
}
