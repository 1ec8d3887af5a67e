//! Key material that is only read at start is wiped once used: the text of the master
//! key file and of the audit signing key file (base64 of the keys) is not left anywhere
//! in the running server's memory, searched through `/proc/PID/mem`. The keys
//! themselves must stay in memory while the vault runs; their text need not. As a
//! control, the same search finds a string the server does keep (its data directory).

use std::io::{Read, Seek, SeekFrom};

use crate::process::{start, stop};

/// Every readable mapping of process `pid`, read whole (regions that cannot be read are
/// skipped).
fn memory_of(pid: u32) -> Vec<(String, Vec<u8>)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let mut regions = Vec::new();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = parts.nth(3).unwrap_or("").to_owned();
        if !perms.starts_with('r') || name.starts_with("[v") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut bytes = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_ok() && mem.read_exact(&mut bytes).is_ok() {
            regions.push((format!("{range} {name}"), bytes));
        }
    }
    regions
}

fn found_in(regions: &[(String, Vec<u8>)], needle: &str) -> Option<String> {
    regions
        .iter()
        .find(|(_, b)| memchr::memmem::find(b, needle.as_bytes()).is_some())
        .map(|(name, _)| name.clone())
}

/// The base64 part of a key file's secret line (after `prefix`).
fn secret_text(path: &std::path::Path, prefix: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix} in {}", path.display()));
    assert!(line.len() >= 40, "a key's base64 text");
    line.to_owned()
}

#[test]
fn key_file_text_is_wiped_after_start() {
    let dir = tempfile::tempdir().unwrap();
    // The first start makes the keys; the second reads them from their files.
    let first = start(dir.path(), &None, 1);
    stop(first);
    let data = dir.path().join("data");
    let master = secret_text(&data.join("master.key"), "v1:");
    let audit = secret_text(&data.join("audit/signing.key"), "ed25519-secret:");
    let running = start(dir.path(), &None, 2);
    let regions = memory_of(running.child.id());
    let data_dir = data.display().to_string();
    assert!(
        found_in(&regions, &data_dir).is_some(),
        "the search finds what the server keeps (its data directory)"
    );
    for (what, text) in [("master key file", &master), ("audit key file", &audit)] {
        if let Some(region) = found_in(&regions, text) {
            panic!("the {what}'s text is still in the server's memory, in {region}");
        }
    }
    stop(running);
}
