//! Prometheus metrics, served at `GET /metrics` in the text exposition format.
//!
//! Counts, latencies, queue depths and pool use only. A label is always one of a small,
//! fixed set: a route template (`/v1/subjects/{id}`, never a path with an id in it), an
//! HTTP method and status, a stable reason code, a cache, role or purpose name from
//! the policy. Never a value, a subject id, a token or a field's content.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets, in seconds: 0.25 ms to 5 s.
const BUCKETS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Audit batch sizes, in events.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0, 2048.0];

/// Installs the process's recorder on first use and returns the handle that renders it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(AUDIT_BATCH_EVENTS.into()),
                        &BATCH_BUCKETS,
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics shows only its own"
                );
            }
            describe();
            handle
        })
        .clone()
}

pub const HTTP_REQUESTS: &str = "piivault_http_requests_total";
pub const HTTP_DURATION: &str = "piivault_http_request_duration_seconds";
pub const AUDIT_QUEUE: &str = "piivault_audit_queue_depth";
pub const AUDIT_BATCH_EVENTS: &str = "piivault_audit_batch_events";
pub const AUDIT_COMMIT: &str = "piivault_audit_commit_duration_seconds";
pub const AUDIT_INDEX_LAG: &str = "piivault_audit_index_lag_events";
pub const AUDIT_FAILURES: &str = "piivault_audit_write_failures_total";
pub const CACHE_LOOKUPS: &str = "piivault_cache_lookups_total";
pub const POLICY_RELOADS: &str = "piivault_policy_reloads_total";
pub const POLICY_REFUSALS: &str = "piivault_policy_refusals_total";
pub const TOKENS_REFUSED: &str = "piivault_tokens_refused_total";
pub const CONSENT_REFUSALS: &str = "piivault_consent_refusals_total";
pub const CHANGE_FEED_SEEN: &str = "piivault_change_feed_seen";
pub const CONNECTIONS_REFUSED: &str = "piivault_connections_refused_total";
pub const POOL_CONNECTIONS: &str = "piivault_db_pool_connections";
pub const SUBJECTS_ABROAD: &str = "piivault_subjects_transferred_abroad_this_year";

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        SUBJECTS_ABROAD,
        "Subjects whose personal information went to a recipient abroad this year, by kind (sensitive, non_sensitive), as last counted by GET /v1/transfers/abroad or a provision abroad"
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route template, method and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency by route template and method"
    );
    describe_gauge!(
        CHANGE_FEED_SEEN,
        "The newest change (revocation, consent, correction, erasure, hold) this process has applied to its caches"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections closed on arrival because max_connections were open"
    );
    describe_gauge!(
        AUDIT_INDEX_LAG,
        "Audit events not yet in the subject index (found by a scan meanwhile)"
    );
    describe_gauge!(
        AUDIT_QUEUE,
        "Changes and events waiting for the audit writer"
    );
    describe_histogram!(
        AUDIT_BATCH_EVENTS,
        Unit::Count,
        "Events per audit group commit"
    );
    describe_histogram!(
        AUDIT_COMMIT,
        Unit::Seconds,
        "Time to commit one audit batch (changes and events)"
    );
    describe_counter!(
        AUDIT_FAILURES,
        "Audit batches that could not be written (the vault failed closed)"
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Cache lookups by cache and result (hit or miss)"
    );
    describe_counter!(
        POLICY_RELOADS,
        "Policy reloads by result (loaded or refused)"
    );
    describe_counter!(
        POLICY_REFUSALS,
        "Requests refused by the access policy, by role"
    );
    describe_counter!(TOKENS_REFUSED, "Bearer tokens refused, by reason code");
    describe_counter!(
        CONSENT_REFUSALS,
        "Requests refused for want of consent, by reason code"
    );
    describe_gauge!(
        POOL_CONNECTIONS,
        "Database pool connections by state (in_use, idle)"
    );
}

/// One HTTP request done.
pub fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    metrics::counter!(HTTP_REQUESTS, "route" => route.to_owned(), "method" => method.to_owned(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route.to_owned(), "method" => method.to_owned())
        .record(elapsed.as_secs_f64());
}

/// A cache lookup.
pub fn cache_lookup(cache: &'static str, hit: bool) {
    metrics::counter!(CACHE_LOOKUPS, "cache" => cache, "result" => if hit { "hit" } else { "miss" })
        .increment(1);
}
