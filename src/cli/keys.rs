//! `piivault keys`: the key inventory, master-key rotation and retirement, and
//! re-encryption under new data keys.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Settings;
use crate::crypto::AuditPublicKey;
use crate::store::Store;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Every key version: master-key versions, the system keys (blind index, token
    /// hash) and the master version wrapping each, data keys counted per version, and
    /// the audit signing keys whose public halves are beside the signing key. Shows no
    /// key material, and needs no master key.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rotate a key. `--master`: add a new master-key version to the key file (with the
    /// master key in PIIVAULT_MASTER_KEY, use the newest version given there) and wrap
    /// every data key and system key again under it; values are not touched. `--data`:
    /// give every subject a new data key, seal every field value and record again under
    /// it, and delete the old data keys. Either runs in batches, each one transaction
    /// with its audit event, while the server keeps serving; interrupted, it resumes
    /// where it stopped when run again. Several nodes: give every node the new key file
    /// line before running `--master` (a node reads its key file again when it sees the
    /// new version). `--audit`: replace this node's audit signing key; the old public
    /// key stays beside it, so what it signed still verifies. `--token-hash`: add a new
    /// token-hash key version; issued tokens stay valid and move to it as they are used.
    /// `--blind-index`: add a new blind-index key version and index every subject again
    /// under it (the walk of `--data`, which re-encrypts too); lookups find subjects
    /// under either version meanwhile.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["master", "data", "audit", "token_hash", "blind_index"])))]
    Rotate {
        /// Rotate the master key: every stored key wrapped again under a new version.
        #[arg(long)]
        master: bool,
        /// Re-encrypt: new data keys for every subject, every value sealed again.
        #[arg(long)]
        data: bool,
        /// Replace this node's audit signing key (the server signs with the new one
        /// from its next checkpoint).
        #[arg(long)]
        audit: bool,
        /// Add a new token-hash key version (tokens move to it as they are used).
        #[arg(long)]
        token_hash: bool,
        /// Add a new blind-index key version and index every subject again under it.
        #[arg(long)]
        blind_index: bool,
        /// Keys (--master) or subjects (--data) per transaction [default: 1000 keys, 100
        /// subjects].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50_000))]
        batch: Option<u32>,
        /// At most this many keys (--master) or subjects (--data) a second (default: as
        /// fast as the store allows).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_rate: Option<u32>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// --master, --blind-index: go ahead even if a serving node has not loaded the
        /// new version (it answers 503 key_unavailable for re-wrapped subjects, or does
        /// not find subjects indexed again, until it has).
        #[arg(long)]
        force: bool,
    },
    /// Destroy an old key version once nothing depends on it. `--master V`: once nothing
    /// is wrapped under it, V is marked destroyed in the store (no node uses it again)
    /// and removed from the key file; backups of the database taken before then can no
    /// longer be read without a copy of V: destroy old copies of the key file too.
    /// `--token-hash V`: once no live token is hashed under it, V is deleted.
    /// `--blind-index V`: once no index entry is under it, V is deleted.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["master", "token_hash", "blind_index"])))]
    Retire {
        /// The master-key version to destroy.
        #[arg(long, value_name = "VERSION")]
        master: Option<i64>,
        /// The token-hash key version to destroy.
        #[arg(long, value_name = "VERSION")]
        token_hash: Option<i64>,
        /// The blind-index key version to destroy.
        #[arg(long, value_name = "VERSION")]
        blind_index: Option<i64>,
    },
}

pub async fn run(settings: &Settings, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::List { json } => list(settings, json).await,
        KeysCommand::Rotate { audit: true, .. } => rotate_audit(settings).await,
        KeysCommand::Rotate {
            token_hash: true, ..
        } => rotate_token_hash(settings).await,
        KeysCommand::Rotate {
            blind_index: true,
            batch,
            max_rate,
            json,
            force,
            ..
        } => {
            let pace = crate::keys::Pace {
                batch: batch.unwrap_or(100) as usize,
                max_per_second: max_rate,
                force,
            };
            rotate_blind_index(settings, pace, json).await
        }
        KeysCommand::Rotate {
            data,
            batch,
            max_rate,
            json,
            force,
            ..
        } => {
            let pace = crate::keys::Pace {
                batch: batch.unwrap_or(if data { 100 } else { 1000 }) as usize,
                max_per_second: max_rate,
                force,
            };
            if data {
                reencrypt(settings, pace, json).await
            } else {
                rotate(settings, pace, json).await
            }
        }
        KeysCommand::Retire {
            token_hash: Some(version),
            ..
        } => retire_system(settings, crate::crypto::TOKEN_HASH_KEY, version).await,
        KeysCommand::Retire {
            blind_index: Some(version),
            ..
        } => retire_system(settings, crate::crypto::BLIND_INDEX_KEY, version).await,
        KeysCommand::Retire { master, .. } => {
            retire(settings, master.context("name the version to retire")?).await
        }
    }
}

/// A rotation run from the command line: the opened vault and a progress bar, closed
/// together once the rotation returns.
struct Run {
    app: crate::App,
    bar: indicatif::ProgressBar,
}

impl Run {
    async fn open(settings: &Settings, what: &str, unit: &str) -> anyhow::Result<Self> {
        Ok(Self {
            app: crate::open(settings).await?,
            bar: super::progress_bar(0, what, unit),
        })
    }

    /// What the rotation tells how far it is.
    fn progress(&self) -> impl Fn(u64, u64) + Sync + '_ {
        |done: u64, total: u64| {
            self.bar.set_length(total);
            self.bar.set_position(done);
        }
    }

    /// Clears the bar and closes the store, then hands back the rotation's result.
    async fn finish<T>(self, result: Result<T, crate::keys::RotateError>) -> anyhow::Result<T> {
        self.bar.finish_and_clear();
        self.app.store.close().await;
        Ok(result?)
    }
}

async fn rotate(
    settings: &Settings,
    pace: crate::keys::Pace,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let run = Run::open(settings, "re-wrapping", "keys").await?;
    let (keys, watch) = run.app.vault.keys();
    let result = crate::keys::rotate_master(
        &run.app.store,
        &run.app.audit,
        keys,
        watch,
        pace,
        &super::operator_events(),
        &run.progress(),
    )
    .await;
    let report = run.finish(result).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if report.added_to_key_file {
            eprintln!(
                "added master key version {} to the key file; other nodes need that line in theirs",
                report.version
            );
        }
        if report.added_to_key_source {
            eprintln!(
                "made master key version {} in the key source; every node reads it from there",
                report.version
            );
        }
        println!(
            "{} {} subject key(s) and {} system key(s) under master key version {}",
            if report.resumed {
                "resumed: wrapped"
            } else {
                "wrapped"
            },
            report.subject_keys,
            report.system_keys,
            report.version
        );
    }
    if report.failed > 0 || report.remaining > 0 {
        eprintln!(
            "{} key(s) could not be wrapped again and {} remain under older versions (see the log); the rotation is not finished: run it again",
            report.failed, report.remaining
        );
        return Ok(ExitCode::FAILURE);
    }
    if !json {
        println!("older master key versions now wrap nothing: `piivault keys retire --master VERSION` destroys them");
    }
    Ok(ExitCode::SUCCESS)
}

async fn rotate_token_hash(settings: &Settings) -> anyhow::Result<ExitCode> {
    let app = crate::open(settings).await?;
    let (keys, watch) = app.vault.keys();
    let result = crate::keys::rotate_token_hash(
        &app.store,
        &app.audit,
        keys,
        watch,
        &super::operator_events(),
    )
    .await;
    app.store.close().await;
    let version = result?;
    println!(
        "token-hash key version {version} added; issued tokens stay valid and move to it as they are used. Once `piivault keys list` shows no live token under an older version, `piivault keys retire --token-hash VERSION` destroys it"
    );
    Ok(ExitCode::SUCCESS)
}

async fn retire_system(
    settings: &Settings,
    name: &'static str,
    version: i64,
) -> anyhow::Result<ExitCode> {
    let app = crate::open(settings).await?;
    let (keys, watch) = app.vault.keys();
    let result = crate::keys::retire_system_key(
        &app.store,
        &app.audit,
        keys,
        watch,
        name,
        version,
        &super::operator_events(),
    )
    .await;
    app.store.close().await;
    result?;
    println!("{name} key version {version} destroyed");
    Ok(ExitCode::SUCCESS)
}

async fn rotate_blind_index(
    settings: &Settings,
    pace: crate::keys::Pace,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let run = Run::open(settings, "indexing again", "subjects").await?;
    let (keys, watch) = run.app.vault.keys();
    let result = crate::keys::rotate_blind_index(
        &run.app.store,
        &run.app.audit,
        keys,
        watch,
        &run.app.vault.catalogue().searchable_fields(),
        pace,
        &super::operator_events(),
        &run.progress(),
    )
    .await;
    let report = run.finish(result).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} every subject under blind-index key version {} ({} subjects, {} indexed again afterwards); {} entries remain under older versions",
            if report.resumed { "resumed: indexed" } else { "indexed" },
            report.version,
            report.walk.subjects,
            report.stragglers,
            report.remaining
        );
    }
    if report.walk.failed > 0 || report.remaining > 0 {
        eprintln!("the rotation is not finished (see the log): run it again");
        return Ok(ExitCode::FAILURE);
    }
    if !json {
        println!("older blind-index versions now index nothing: `piivault keys retire --blind-index VERSION` destroys them");
    }
    Ok(ExitCode::SUCCESS)
}

async fn rotate_audit(settings: &Settings) -> anyhow::Result<ExitCode> {
    let app = crate::open(settings).await?;
    let result = crate::keys::rotate_audit(&app.store, &app.audit, &super::operator_events()).await;
    app.store.close().await;
    let rotation = result?;
    println!(
        "audit signing key {} replaced by {}; the old public key is kept in {} (give it, and the new {}, to auditors who verify elsewhere)",
        rotation.old_key_id,
        rotation.new_key_id,
        rotation.kept_public_key,
        settings.audit_key_file.with_extension("pub").display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn reencrypt(
    settings: &Settings,
    pace: crate::keys::Pace,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let run = Run::open(settings, "re-encrypting", "subjects").await?;
    let (keys, watch) = run.app.vault.keys();
    let result = crate::keys::reencrypt_data(
        &run.app.store,
        &run.app.audit,
        keys,
        watch,
        &run.app.vault.catalogue().searchable_fields(),
        pace,
        &super::operator_events(),
        &run.progress(),
    )
    .await;
    let report = run.finish(result).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} {} subject(s): {} value(s) and record(s) sealed again under new data keys; the old data keys are deleted",
            if report.resumed {
                "resumed: re-encrypted"
            } else {
                "re-encrypted"
            },
            report.subjects,
            report.items
        );
    }
    if report.failed > 0 {
        eprintln!(
            "{} subject(s) could not be re-encrypted (their ids are in the log); the re-encryption is not finished: mend them and run it again",
            report.failed
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn retire(settings: &Settings, version: i64) -> anyhow::Result<ExitCode> {
    let app = crate::open(settings).await?;
    let (keys, watch) = app.vault.keys();
    let result = crate::keys::retire_master(
        &app.store,
        &app.audit,
        keys,
        watch,
        version,
        &super::operator_events(),
    )
    .await;
    app.store.close().await;
    println!("{}", result?);
    Ok(ExitCode::SUCCESS)
}

async fn list(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&settings.database_url, 2)
        .await
        .context("opening the store")?;
    let inventory = crate::keys::inventory(&store, &audit_public_keys(settings)).await;
    store.close().await;
    let inventory = inventory?;
    if json {
        println!("{}", serde_json::to_string_pretty(&inventory)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<12} {:>7} {:<13} {:<12} {:<25} {:>10} {:>12} {:>10}",
        "key", "version", "algorithm", "state", "created (UTC)", "keys", "encryptions", "items"
    );
    // Master versions count the keys they wrap; data keys the subjects' keys and the
    // values and records under them.
    for k in &inventory.keys {
        let wrapped = k
            .wrapped_by
            .map(|v| format!(" (under master v{v})"))
            .unwrap_or_default();
        println!(
            "{:<12} {:>7} {:<13} {:<12} {:<25} {:>10} {:>12} {:>10}{wrapped}",
            k.kind,
            k.version,
            k.algorithm,
            k.state,
            crate::store::rfc3339(k.created_at),
            k.keys,
            k.encryptions,
            k.items,
        );
    }
    for k in &inventory.audit {
        println!(
            "{:<12} {:>7} {:<13} {:<12} key id {}",
            "audit", "-", k.algorithm, "trusted", k.key_id
        );
    }
    for n in &inventory.nodes {
        println!(
            "node {} on {} (pid {}, listening on {}): master versions {}, blind-index versions {}",
            n.id, n.host, n.pid, n.listen, n.master_versions, n.blind_versions
        );
    }
    println!(
        "retired data keys: {}, items under them: {}{}",
        inventory.retired_data_keys,
        inventory.items_under_retired_keys,
        match &inventory.reencryption_cursor {
            Some(_) => " (a re-encryption is under way: `piivault keys rotate --data` resumes it)",
            None => "",
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// The audit public keys beside the signing key (`*.pub`), those that parse.
fn audit_public_keys(settings: &Settings) -> Vec<AuditPublicKey> {
    super::audit::default_public_keys(settings)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| AuditPublicKey::parse(&t).ok())
        .collect()
}
