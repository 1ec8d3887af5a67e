use std::process::ExitCode;
use std::sync::Arc;

use crate::authz::Policy;
use crate::config::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Explain one decision: allowed or not, and which policy line matched.
    /// Exit status 0 when allowed, 1 when denied.
    Check {
        /// The token role.
        #[arg(long)]
        role: String,
        /// A field or collection, or one of: subject, consent, requests, legal_hold, tokens,
        /// keys, policies, audit_trail, deletion_notices.
        #[arg(long)]
        field: String,
        /// read, read_masked, write, delete, export, audit, admin or provide.
        #[arg(long)]
        action: String,
        /// The purpose named in X-Purpose.
        #[arg(long)]
        purpose: String,
    },
}

pub async fn run(settings: &Settings, cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    // Works on the policy files alone: no store, no master key needed.
    let catalogue = Arc::new(crate::load_catalogue(settings)?);
    let policy = Policy::load(settings.policy_dir.clone(), catalogue).await?;
    let PolicyCommand::Check {
        role,
        field,
        action,
        purpose,
    } = cmd;
    let set = policy.current();
    let e = set.explain(&role, &field, &action, &purpose)?;
    let source = settings
        .policy_dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "built-in".into());
    println!(
        "{}: role {role} {action} {field} for purpose {purpose}",
        if e.allowed { "ALLOW" } else { "DENY" }
    );
    if let Some(category) = &e.category {
        println!("  {field} belongs to {category}");
    }
    for line in &e.matched {
        println!("  matched: {line}");
    }
    if !e.allowed {
        println!("  no policy line allows it (default deny)");
        if action == "read" && set.allows(&role, &field, "read_masked", &purpose) {
            println!("  note: read_masked is allowed, so reads return the masked value");
        }
    }
    if let Some(note) = &e.note {
        println!("  note: {note}");
    }
    println!("  policy {} ({source})", set.digest());
    Ok(if e.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Debug, clap::Args)]
pub struct InventoryArgs {
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `piivault inventory`: the record of processing activities from the policy files (no
/// store, no master key).
pub async fn inventory(settings: &Settings, args: InventoryArgs) -> anyhow::Result<ExitCode> {
    let catalogue = Arc::new(crate::load_catalogue(settings)?);
    let policy = Policy::load(settings.policy_dir.clone(), catalogue.clone()).await?;
    let record = crate::pipl::processing_record(&policy.current(), &catalogue);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print!("{}", record.to_text());
    }
    Ok(ExitCode::SUCCESS)
}
