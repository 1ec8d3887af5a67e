//! Cost of one policy decision: the decision table the server uses, and casbin itself.
//! Run: cargo bench --bench policy
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use piivault::authz::PolicySet;
use piivault::classify::Catalogue;

fn time(label: &str, n: u32, mut f: impl FnMut(u32) -> bool) {
    let mut allowed = 0u32;
    for i in 0..n / 10 {
        allowed += u32::from(f(i));
    }
    let start = Instant::now();
    for i in 0..n {
        allowed += u32::from(black_box(f(i)));
    }
    let per = start.elapsed().as_nanos() as f64 / f64::from(n);
    println!("{label:<40} {per:>10.1} ns/decision  ({allowed} allowed)");
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` this is a smoke run.
    let scale = if std::env::args().any(|a| a == "--bench") {
        1
    } else {
        1000
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let catalogue = Catalogue::builtin().expect("classification");
    let start = Instant::now();
    let policy = rt
        .block_on(PolicySet::load(None, &catalogue))
        .expect("policy");
    println!(
        "{:<40} {:>10.1} ms",
        "load shipped policy (table build)",
        start.elapsed().as_secs_f64() * 1e3
    );
    let cases = [
        ("customer_service", "phone", "read_masked", "service"),
        ("customer_service", "phone", "read", "service"),
        ("billing", "bank_card", "read", "billing"),
        ("dsr_handler", "id_number", "read", "dsr"),
        ("marketing", "bank_card", "read", "marketing"),
    ];
    time(
        "decision table (per request path)",
        2_000_000 / scale,
        |i| {
            let (r, o, a, p) = cases[i as usize % cases.len()];
            policy.allows(r, o, a, p)
        },
    );
    time("casbin enforce (no table)", 200_000 / scale, |i| {
        let (r, o, a, p) = cases[i as usize % cases.len()];
        policy.enforce(r, o, a, p)
    });
}
