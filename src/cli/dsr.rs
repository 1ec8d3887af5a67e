use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Settings;
use crate::pipl::{Requests, WorkCalendar, DEFAULT_DUE_WORKING_DAYS};
use crate::store::Store;

#[derive(Debug, clap::Subcommand)]
pub enum DsrCommand {
    /// The data-subject request queue, oldest due first. Exit status 1 with --overdue
    /// when any request is overdue (for monitoring).
    List {
        /// Only unfinished requests past their due date.
        #[arg(long)]
        overdue: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: &Settings, cmd: DsrCommand) -> anyhow::Result<ExitCode> {
    let DsrCommand::List { overdue, json } = cmd;
    let store = Store::connect(&settings.database_url, 2)
        .await
        .context("opening the store")?;
    let calendar = WorkCalendar::load(settings.policy_dir.as_deref())?;
    let requests = Requests::new(
        store.clone(),
        calendar,
        settings
            .file
            .dsr_due_working_days
            .unwrap_or(DEFAULT_DUE_WORKING_DAYS),
    );
    let list = requests.list(overdue).await?;
    store.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        println!(
            "{:<36}  {:<38}  {:<8}  {:<10}  {:<11}  RECEIVED",
            "ID", "SUBJECT", "KIND", "DUE", "STATUS"
        );
        for r in &list {
            println!(
                "{:<36}  {:<38}  {:<8}  {:<10}  {:<11}  {}{}",
                r.id,
                r.subject,
                r.kind,
                r.due,
                r.status,
                r.received,
                if r.overdue { "  OVERDUE" } else { "" }
            );
        }
    }
    Ok(if overdue && !list.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
