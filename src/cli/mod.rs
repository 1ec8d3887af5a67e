//! The command line: one file per subcommand. Every subcommand works directly on the
//! store for an operator who holds the master key.

mod audit;
mod dsr;
mod import;
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
    /// Inspect the access policy.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// Runs a parsed command line; the exit code says whether it worked.
pub async fn run(cli: Cli) -> ExitCode {
    let opening = match cli.command {
        Command::Serve(_) => Opening::MayInitialise,
        Command::Policy(_) => Opening::NoStore,
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
pub(crate) fn operator_event(action: &str) -> crate::audit::Event {
    crate::audit::Event::new(
        "cli",
        "operator",
        "admin",
        &crate::crypto::random_id("cli"),
        action,
    )
}
