use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use std::collections::BTreeMap;

use crate::audit::{parse_bound, verify_archive, write_archive, Audit, Reports};
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
        /// Verify an archive file (from `piivault audit archive`) instead of the store.
        #[arg(long, value_name = "FILE")]
        archive: Option<PathBuf>,
    },
    /// Export the trail (events and their signed checkpoints) to an archive file that
    /// `audit verify --archive` checks on its own.
    Archive {
        /// The file to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Only events before this day (YYYY-MM-DD, UTC) or RFC 3339 time.
        #[arg(long)]
        before: Option<String>,
    },
    /// Archive and then remove events older than the audit retention period (default 3
    /// years, `audit_retention_days`). The trail must verify; pruning stops at the newest
    /// signed checkpoint before the cut-off, which anchors what remains.
    Prune {
        /// Remove events before this day (YYYY-MM-DD, UTC) or RFC 3339 time.
        #[arg(long)]
        before: String,
        /// Where the removed events are archived first (must not exist).
        #[arg(long, value_name = "FILE")]
        archive: PathBuf,
        /// Override the retention period in days (events younger than it are never removed).
        #[arg(long, value_name = "DAYS")]
        retention_days: Option<u32>,
    },
    /// Run an audit report declared in audit/ over a time window.
    Report {
        /// The report's name (see `piivault audit reports`).
        name: String,
        /// Start of the window: YYYY-MM-DD (UTC) or RFC 3339.
        #[arg(long)]
        from: String,
        /// End of the window: YYYY-MM-DD (inclusive day, UTC) or RFC 3339 (exclusive).
        #[arg(long)]
        to: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "csv")]
        format: ReportFormat,
        /// A report parameter, e.g. --param subject=sub_… or --param token=tok_…
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// List the declared audit reports and their parameters.
    Reports,
    /// The compliance audit pack for a period (PIPL Art. 54): every report that takes no
    /// parameter as CSV and JSON, the subjects transferred abroad, and a manifest of their
    /// SHA-256 signed with the audit key. The same period gives the same bytes.
    Pack {
        /// Start of the period: YYYY-MM-DD (UTC) or RFC 3339.
        #[arg(long)]
        from: String,
        /// End of the period: YYYY-MM-DD (inclusive day, UTC) or RFC 3339 (exclusive).
        #[arg(long)]
        to: String,
        /// The directory to write (must not exist).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Check a compliance audit pack: the manifest's signature by a trusted audit key and
    /// every file's hash. Exit status 0 when intact, 1 when not.
    VerifyPack {
        /// The pack's directory.
        dir: PathBuf,
        /// An audit public key file; repeat for several. Default: every *.pub file beside
        /// the audit signing key.
        #[arg(long = "public-key", value_name = "FILE")]
        public_keys: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Csv,
    Json,
}

/// The audit public key files beside the signing key (`*.pub`).
pub(super) fn default_public_keys(settings: &Settings) -> Vec<PathBuf> {
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
    match cmd {
        AuditCommand::Verify {
            public_keys,
            checkpoints,
            json,
            archive,
        } => verify(settings, public_keys, checkpoints, json, archive).await,
        AuditCommand::Archive { out, before } => {
            let until = before
                .as_deref()
                .map(|b| parse_bound(b, false))
                .transpose()?;
            let store = Store::connect(&settings.database_url, 2)
                .await
                .context("opening the store")?;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            let n = write_archive(&store, until, None, &mut writer).await?;
            writer
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()?;
            store.close().await;
            eprintln!("archived events 1..={n} to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Report {
            name,
            from,
            to,
            format,
            params,
        } => report(settings, &name, &from, &to, format, &params).await,
        AuditCommand::Prune {
            before,
            archive,
            retention_days,
        } => prune(settings, &before, &archive, retention_days).await,
        AuditCommand::Pack { from, to, out } => pack(settings, &from, &to, &out).await,
        AuditCommand::VerifyPack { dir, public_keys } => {
            let keys = public_keys_from(settings, public_keys)?;
            match crate::audit::verify_pack(&dir, &keys) {
                Ok(key_id) => {
                    println!("the pack is intact, signed by audit key {key_id}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(why) => {
                    println!("the pack is NOT intact: {why}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::Reports => {
            let catalogue = crate::load_catalogue(settings)?;
            let reports = Reports::load(settings.reports_dir.as_deref(), &catalogue)?;
            for r in reports.list() {
                let params: Vec<String> = std::iter::once("--from, --to".to_owned())
                    .chain(r.parameters.iter().map(|p| format!("--param {p}=…")))
                    .collect();
                println!(
                    "{}\n  {}\n  takes: {}",
                    r.name,
                    r.description,
                    params.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn report(
    settings: &Settings,
    name: &str,
    from: &str,
    to: &str,
    format: ReportFormat,
    params: &[String],
) -> anyhow::Result<ExitCode> {
    let catalogue = crate::load_catalogue(settings)?;
    let reports = Reports::load(settings.reports_dir.as_deref(), &catalogue)?;
    let mut named = BTreeMap::new();
    for p in params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--param takes NAME=VALUE, not {p:?}"))?;
        named.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    let from = parse_bound(from, false)?;
    let to = parse_bound(to, true)?;
    let store = Store::connect(&settings.database_url, 2)
        .await
        .context("opening the store")?;
    let result = reports.run(&store, name, from, to, &named).await?;
    // Running a report is itself an access to the trail.
    let audit = Audit::start(store.clone(), None, Default::default());
    let mut event = super::operator_event("audit.report").target(name);
    event.purpose = "audit".into();
    audit.record_one(event).await?;
    store.close().await;
    match format {
        ReportFormat::Csv => print!("{}", result.to_csv()),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&result.to_json())?),
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(
    settings: &Settings,
    public_keys: Vec<PathBuf>,
    checkpoints: Option<PathBuf>,
    json: bool,
    archive: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let keys = public_keys_from(settings, public_keys)?;
    if keys.is_empty() {
        eprintln!(
            "warning: no audit public key given; checkpoints cannot be checked, only the chain"
        );
    }
    let report = if let Some(archive) = archive {
        verify_archive(&archive, &keys).with_context(|| format!("{}", archive.display()))?
    } else {
        let checkpoint_file = checkpoints.unwrap_or_else(|| {
            settings
                .audit_key_file
                .parent()
                .unwrap_or(&settings.data_dir)
                .join("checkpoints.log")
        });
        let readers = crate::audit::VERIFY_READERS as u32;
        let store = Store::connect(&settings.database_url, readers + 1)
            .await
            .context("opening the store")?;
        let report = crate::verify_trail(&store, &keys, &checkpoint_file).await?;
        store.close().await;
        report
    };
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

/// Default audit retention: three years.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u32 = 3 * 365;

async fn prune(
    settings: &Settings,
    before: &str,
    archive: &std::path::Path,
    retention_days: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let days = retention_days
        .or(settings.file.audit_retention_days)
        .unwrap_or(DEFAULT_AUDIT_RETENTION_DAYS);
    let cutoff = parse_bound(before, false)?;
    let oldest_allowed = crate::store::now_ms() - i64::from(days) * 86_400_000;
    if cutoff > oldest_allowed {
        anyhow::bail!(
            "events younger than {days} days must be kept: --before must be on or before {}",
            crate::store::rfc3339(oldest_allowed)
        );
    }
    let mut keys = Vec::new();
    for path in default_public_keys(settings) {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        keys.push(AuditPublicKey::parse(&text)?);
    }
    let checkpoint_file = settings
        .audit_key_file
        .parent()
        .unwrap_or(&settings.data_dir)
        .join("checkpoints.log");
    let store = Store::connect(&settings.database_url, 2)
        .await
        .context("opening the store")?;
    let report = crate::verify_trail(&store, &keys, &checkpoint_file).await?;
    if !report.ok {
        anyhow::bail!(
            "the trail does not verify (event {}: {}); refusing to prune",
            report.first_bad_seq.unwrap_or_default(),
            report.reason.unwrap_or_default()
        );
    }
    // The newest trusted checkpoint whose event is older than the cut-off.
    let floor = store.audit_anchor().await?.map_or(0, |(s, _)| s);
    let mut point = None;
    for cp in store.checkpoints().await? {
        let trusted = keys.iter().any(|k| {
            k.key_id() == cp.key_id && k.verify_checkpoint(cp.seq, cp.ts, &cp.hash, &cp.signature)
        });
        if !trusted || cp.seq <= floor {
            continue;
        }
        let event = store.audit_events(cp.seq - 1, 1).await?;
        if event
            .first()
            .is_some_and(|e| e.seq == cp.seq && e.ts < cutoff && e.hash == cp.hash)
        {
            point = point.max(Some((cp.seq, cp.hash)));
        }
    }
    let Some((seq, hash)) = point else {
        eprintln!("nothing to prune: no signed checkpoint before the cut-off");
        store.close().await;
        return Ok(ExitCode::SUCCESS);
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(archive)
        .with_context(|| format!("creating {}", archive.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    write_archive(&store, None, Some(seq), &mut writer).await?;
    writer
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    let audit = Audit::start(store.clone(), None, Default::default());
    audit
        .record_one(super::operator_event("audit.prune").target(&seq.to_string()))
        .await?;
    let removed = store.prune_audit(seq, &hash).await?;
    store.close().await;
    eprintln!(
        "archived and removed {removed} events up to event {seq} (archive: {})",
        archive.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The audit public keys in `paths`, or beside the signing key when none is given.
fn public_keys_from(
    settings: &Settings,
    paths: Vec<PathBuf>,
) -> anyhow::Result<Vec<AuditPublicKey>> {
    let paths = if paths.is_empty() {
        default_public_keys(settings)
    } else {
        paths
    };
    let mut keys = Vec::new();
    for path in &paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        keys.push(AuditPublicKey::parse(&text).with_context(|| format!("{}", path.display()))?);
    }
    Ok(keys)
}

/// `piivault audit pack`: writes the pack into a new directory.
async fn pack(
    settings: &Settings,
    from: &str,
    to: &str,
    out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let (from, to) = (parse_bound(from, false)?, parse_bound(to, true)?);
    if !settings.audit_key_file.exists() {
        anyhow::bail!(
            "no audit signing key at {}: run this where the vault's key is",
            settings.audit_key_file.display()
        );
    }
    let key = crate::crypto::AuditKey::load_or_create(&settings.audit_key_file)
        .context("loading the audit signing key")?;
    let catalogue = crate::load_catalogue(settings)?;
    let reports = Reports::load(settings.reports_dir.as_deref(), &catalogue)?;
    let store = Store::connect(&settings.database_url, 2)
        .await
        .context("opening the store")?;
    let files = crate::audit::compliance_pack(&store, &reports, &key, from, to).await;
    store.close().await;
    let files = files?;
    std::fs::create_dir(out).with_context(|| format!("creating {}", out.display()))?;
    for f in &files {
        std::fs::write(out.join(&f.name), &f.bytes)
            .with_context(|| format!("writing {}", out.join(&f.name).display()))?;
    }
    println!(
        "wrote {} files to {}, signed by audit key {}",
        files.len(),
        out.display(),
        key.public().key_id()
    );
    Ok(ExitCode::SUCCESS)
}
