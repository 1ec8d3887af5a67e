//! The command line: one file per subcommand. Every subcommand works directly on the
//! store for an operator who holds the master key.

mod audit;
mod dsr;
mod import;
mod keys;
mod policy;
mod retention;
mod serve;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{GlobalArgs, Opening, Settings};

/// piivault: a secure customer-data vault (field-level encryption, scoped tokens,
/// PIPL-ready). One binary: the server and the operator command line.
#[derive(Debug, Parser)]
#[command(name = "piivault", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the vault over HTTPS (initialises data directory, store, master key and TLS on first start).
    Serve(serve::ServeArgs),
    /// Issue, list and revoke bearer tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Verify, report on and archive the audit trail (store and public key only).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Erase what has outlived its retention period.
    #[command(subcommand)]
    Retention(retention::RetentionCommand),
    /// The data-subject request queue.
    #[command(subcommand)]
    Dsr(dsr::DsrCommand),
    /// Import subjects from a CSV or JSON-lines file: every line validated first, then
    /// stored in batches, encrypted and audited like any create; resumable.
    Import(import::ImportArgs),
    /// The key inventory, master-key rotation and retirement.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Inspect the access policy.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The record of processing activities (PIPL Art. 54-56), from the policy files: each
    /// purpose with its legal basis, the categories and fields it uses and how long they
    /// are kept, the recipients they may go to (and whether abroad), and its PIPIA.
    Inventory(policy::InventoryArgs),
}

/// Runs a parsed command line; the exit code says whether it worked.
pub async fn run(cli: Cli) -> ExitCode {
    let opening = match cli.command {
        Command::Serve(_) => Opening::MayInitialise,
        Command::Policy(_) | Command::Inventory(_) => Opening::NoStore,
        _ => Opening::Existing,
    };
    let settings = match Settings::resolve(&cli.global, opening) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_writer = crate::telemetry::init(settings.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve::run(&settings, args).await,
        Command::Token(cmd) => token::run(&settings, cmd).await,
        Command::Policy(cmd) => policy::run(&settings, cmd).await,
        Command::Audit(cmd) => audit::run(&settings, cmd).await,
        Command::Dsr(cmd) => dsr::run(&settings, cmd).await,
        Command::Retention(cmd) => retention::run(&settings, cmd).await,
        Command::Import(args) => import::run(&settings, args).await,
        Command::Keys(cmd) => keys::run(&settings, cmd).await,
        Command::Inventory(args) => policy::inventory(&settings, args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An audit event by the operator at the command line.
/// A progress bar on standard error: `what`, the bar, done/total `unit`, rate and time
/// left. Hidden when standard error is not a terminal.
pub(crate) fn progress_bar(len: u64, what: &str, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{wide_bar}} {{pos}}/{{len}} {unit}, {{per_sec}}, {{eta}} left"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The operator's audit events for one command run, under one request id.
pub(crate) fn operator_events() -> impl Fn(&str) -> crate::audit::Event + Sync {
    let request = crate::crypto::random_id("cli");
    move |action: &str| crate::audit::Event::new("cli", "operator", "admin", &request, action)
}

/// One operator audit event (a command that records a single one).
pub(crate) fn operator_event(action: &str) -> crate::audit::Event {
    operator_events()(action)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand, at every depth, says what it does, and so does each of its
    /// options and arguments.
    #[test]
    fn every_command_and_option_explains_itself() {
        fn walk(cmd: &clap::Command, path: &str, seen: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} {id} has no help text");
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "{name} has no help text");
                seen.push(name.clone());
                walk(sub, &name, seen);
            }
        }
        let mut seen = Vec::new();
        walk(&super::Cli::command(), "piivault", &mut seen);
        for expected in [
            "piivault import",
            "piivault keys",
            "piivault keys list",
            "piivault serve",
        ] {
            assert!(
                seen.iter().any(|s| s == expected),
                "{expected} missing from {seen:?}"
            );
        }
    }
}
