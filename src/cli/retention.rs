use std::process::ExitCode;

use crate::config::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum RetentionCommand {
    /// Erase every field value and record past its retention period (from the
    /// classification), except for subjects under a legal hold. Every erasure and every
    /// hold is recorded in the audit trail first.
    Sweep {
        /// Report what would be erased and what is held, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: &Settings, cmd: RetentionCommand) -> anyhow::Result<ExitCode> {
    let RetentionCommand::Sweep { dry_run, json } = cmd;
    let app = crate::open(settings).await?;
    let report = app.retention.sweep(crate::store::now_ms(), dry_run).await?;
    app.store.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let verb = if dry_run { "would erase" } else { "erased" };
        let rows = report.erased.iter().map(|i| (verb, i));
        for (what, i) in rows.chain(report.held.iter().map(|i| ("held", i))) {
            let record = i
                .record
                .as_deref()
                .map(|r| format!("  {r}"))
                .unwrap_or_default();
            println!("{what}  {}  {}{record}", i.subject, i.name);
        }
        eprintln!(
            "{verb} {} item(s); {} held by legal hold",
            report.erased.len(),
            report.held.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
