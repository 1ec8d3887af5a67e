use std::process::ExitCode;

use anyhow::Context as _;

use crate::authz::{parse_ttl, IssueRequest, TokenInfo};
use crate::config::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Issue a token. The secret is printed once, alone on standard output
    /// (`TOKEN=$(piivault token issue ...)` works); details go to standard error.
    Issue {
        /// Role from policies/policy.csv (shipped: onboarding, customer_service, billing,
        /// marketing, dsr_handler, auditor, admin).
        #[arg(long)]
        role: String,
        /// A purpose the token may claim in X-Purpose (one the role has a policy line
        /// for); repeat for several.
        #[arg(long = "purpose", required = true, value_name = "PURPOSE")]
        purposes: Vec<String>,
        /// Lifetime: a number and s, m, h or d (e.g. 30d); at most --max-token-ttl.
        #[arg(long, value_name = "TTL")]
        ttl: String,
        /// Which service or person the token is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke {
        /// The token id (tok_...).
        id: String,
    },
}

pub async fn run(settings: &Settings, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let app = crate::open(settings).await?;
    let code = match cmd {
        TokenCommand::Issue {
            role,
            purposes,
            ttl,
            description,
        } => {
            let ttl = parse_ttl(&ttl).context("--ttl takes a number and s, m, h or d (e.g. 1h)")?;
            let (info, secret) = app
                .tokens
                .issue(
                    IssueRequest {
                        role,
                        purposes,
                        ttl,
                        description,
                        created_by: "cli".into(),
                    },
                    &app.policy.current(),
                    super::operator_event("token.issue"),
                )
                .await?;
            eprintln!(
                "issued {} (role {}, purposes {}, expires {})",
                info.id,
                info.role,
                info.purposes.join(","),
                info.expires_at
            );
            println!("{}", secret.as_str());
            ExitCode::SUCCESS
        }
        TokenCommand::List { json } => {
            let tokens = app.tokens.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                print_table(&tokens);
            }
            ExitCode::SUCCESS
        }
        TokenCommand::Revoke { id } => {
            let event = super::operator_event("token.revoke").target(&id);
            if app.tokens.revoke(&id, event.clone()).await? {
                eprintln!("revoked {id}");
                ExitCode::SUCCESS
            } else {
                app.audit
                    .record_one(event.outcome(crate::audit::Decision::Error, "token_not_found"))
                    .await?;
                eprintln!("error: no active token with id {id}");
                ExitCode::FAILURE
            }
        }
    };
    app.store.close().await;
    Ok(code)
}

fn print_table(tokens: &[TokenInfo]) {
    println!(
        "{:<36}  {:<16}  {:<20}  {:<8}  {:<25}  DESCRIPTION",
        "ID", "ROLE", "PURPOSES", "STATUS", "EXPIRES"
    );
    for t in tokens {
        println!(
            "{:<36}  {:<16}  {:<20}  {:<8}  {:<25}  {}",
            t.id,
            t.role,
            t.purposes.join(","),
            t.status,
            t.expires_at,
            t.description
        );
    }
}
