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
        /// for); repeat for several. With --console: audit or dsr, taken from the role
        /// when left out.
        #[arg(
            long = "purpose",
            required_unless_present = "console",
            value_name = "PURPOSE"
        )]
        purposes: Vec<String>,
        /// Lifetime: a number and s, m, h or d (e.g. 30d); at most --max-token-ttl.
        /// With --console: 8h when left out, at most 12h.
        #[arg(long, value_name = "TTL", required_unless_present = "console")]
        ttl: Option<String>,
        /// Which service or person the token is for.
        #[arg(long, default_value = "")]
        description: String,
        /// A short-lived token for a person to sign in to the web console (/console):
        /// the role must be able to claim the audit purpose (auditor) or the dsr
        /// purpose (dsr_handler, dsr_lead); the token claims nothing else.
        #[arg(long)]
        console: bool,
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
            console,
        } => {
            let purposes = if console {
                console_purposes(&app.policy.current(), &role, purposes)?
            } else {
                purposes
            };
            let ttl = match (ttl.as_deref(), console) {
                (Some(t), _) => {
                    parse_ttl(t).context("--ttl takes a number and s, m, h or d (e.g. 1h)")?
                }
                (None, true) => CONSOLE_TTL,
                (None, false) => anyhow::bail!("--ttl is required"),
            };
            if console && ttl > CONSOLE_MAX_TTL {
                anyhow::bail!("a console token lives at most 12h; give a shorter --ttl");
            }
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
            if console {
                // The address the configuration names; `serve --listen` may name another.
                let listen = settings.file.listen.map_or_else(
                    || crate::config::DEFAULT_LISTEN.to_owned(),
                    |a| a.to_string(),
                );
                eprintln!(
                    "sign in at https://{listen}/console/sign-in (or wherever this vault is \
                     served); it works until {}",
                    info.expires_at
                );
            }
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

/// How long a console token lives unless `--ttl` says otherwise, and at most.
const CONSOLE_TTL: std::time::Duration = std::time::Duration::from_secs(8 * 3600);
const CONSOLE_MAX_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// The purposes a console token for `role` claims: those asked for, which must be
/// console purposes, or else every console purpose the role may claim.
fn console_purposes(
    policy: &crate::authz::PolicySet,
    role: &str,
    asked: Vec<String>,
) -> anyhow::Result<Vec<String>> {
    let console = crate::console::PURPOSES;
    if let Some(other) = asked.iter().find(|p| !console.contains(&p.as_str())) {
        anyhow::bail!("a console token claims only audit or dsr, not {other:?}");
    }
    if !asked.is_empty() {
        return Ok(asked);
    }
    let claimable = policy.claimable(role);
    let found: Vec<String> = console
        .iter()
        .filter(|p| claimable.is_some_and(|c| c.contains(**p)))
        .map(|p| (*p).to_owned())
        .collect();
    if found.is_empty() {
        anyhow::bail!(
            "role {role:?} cannot use the console: it may claim neither the audit nor the dsr purpose"
        );
    }
    Ok(found)
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
