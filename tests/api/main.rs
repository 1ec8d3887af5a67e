//! Integration tests: the real server on a random loopback port, a real HTTPS client
//! trusting the vault's CA, a fresh store per test, on SQLite and on PostgreSQL
//! (`PIIVAULT_TEST_DATABASE_URL`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;
mod leaks;
mod process;

mod audit_index;
mod audit_reports;
mod audit_trail;
mod bounds;
mod canary;
mod cli_store;
mod consent;
mod console;
mod console_browser;
mod crash;
mod crypto_binding;
mod data_path;
mod disk_full;
mod dsr;
mod erasure;
mod faults;
mod import;
mod key_rotation;
mod key_source;
mod lifecycle;
mod memory;
mod metrics;
mod nodes;
mod openapi;
mod policy_admin;
mod policy_matrix;
mod provisions;
mod reencryption;
mod retention;
mod subjects;
mod tokens;
mod validation;
