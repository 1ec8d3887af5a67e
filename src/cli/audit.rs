use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Settings;
use crate::crypto::AuditPublicKey;
use crate::store::Store;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Walk the whole audit chain and check every signed checkpoint; report the first bad
    /// event. Needs the store and the public key(s) only, not the master key.
    /// Exit status 0 when the trail is intact, 1 when it is broken.
    Verify {
        /// An audit public key file (`ed25519:BASE64`); repeat for several vault nodes.
        /// Default: every *.pub file beside the audit signing key.
        #[arg(long = "public-key", value_name = "FILE")]
        public_keys: Vec<PathBuf>,
        /// A checkpoint file to check too (default: the one beside the signing key).
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn default_public_keys(settings: &Settings) -> Vec<PathBuf> {
    let dir = settings
        .audit_key_file
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "pub"))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn run(settings: &Settings, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify {
        public_keys,
        checkpoints,
        json,
    } = cmd;
    let paths = if public_keys.is_empty() {
        default_public_keys(settings)
    } else {
        public_keys
    };
    let mut keys = Vec::new();
    for path in &paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        keys.push(AuditPublicKey::parse(&text).with_context(|| format!("{}", path.display()))?);
    }
    if keys.is_empty() {
        eprintln!(
            "warning: no audit public key given; checkpoints cannot be checked, only the chain"
        );
    }
    let checkpoint_file = checkpoints.unwrap_or_else(|| {
        settings
            .audit_key_file
            .parent()
            .unwrap_or(&settings.data_dir)
            .join("checkpoints.log")
    });
    let store = Store::connect(&settings.database_url, 2)
        .await
        .context("opening the store")?;
    let report = crate::verify_trail(&store, &keys, &checkpoint_file).await?;
    store.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.ok {
        println!(
            "OK: {} events, {} signed checkpoints verified ({} by unknown keys)",
            report.events, report.checkpoints, report.checkpoints_unknown_key
        );
    } else {
        println!(
            "BROKEN at event {}: {}",
            report.first_bad_seq.unwrap_or_default(),
            report.reason.as_deref().unwrap_or("unknown")
        );
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
