//! Configuration: command-line flags > environment (`PIIVAULT_*`) > TOML file > defaults.
//! Secrets (master key, passphrase) come only from the environment or from files,
//! never from flags, so they stay out of `ps` output and shell history.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::crypto::MasterKeySource;

mod store_record;
pub use store_record::{redacted, DatabaseUrl, StoreRecord, RECORD_FILE};

pub const DEFAULT_DATA_DIR: &str = "./piivault-data";
pub const DEFAULT_POLICY_DIR: &str = "policies";
pub const DEFAULT_REPORTS_DIR: &str = "audit";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8200";
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Client connections open at once (keep the process's open-file limit well above it).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;

/// Options every subcommand takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GlobalArgs {
    /// Data directory: SQLite database, master key file, TLS material.
    #[arg(long, global = true, env = "PIIVAULT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store URL: sqlite://PATH or postgres://USER@HOST/DB. Default: the store recorded in
    /// DATA_DIR/piivault.toml on first start (SQLite in the data directory if none is
    /// named then); naming a different store is refused. A password is best left out of
    /// the URL and given in PIIVAULT_DATABASE_PASSWORD or PIIVAULT_DATABASE_PASSWORD_FILE.
    #[arg(long, global = true, env = "PIIVAULT_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Optional TOML configuration file (lowest precedence after defaults).
    #[arg(long, global = true, env = "PIIVAULT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory with classification.toml, model.conf, policy.csv, purposes.toml and
    /// holidays.toml (default ./policies, else the built-in copies).
    #[arg(long, global = true, env = "PIIVAULT_POLICY_DIR", value_name = "DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Directory of audit report definitions (default ./audit, else the built-in set).
    #[arg(long, global = true, env = "PIIVAULT_REPORTS_DIR", value_name = "DIR")]
    pub reports_dir: Option<PathBuf>,
    /// Master key file (default DATA_DIR/master.key). Alternatives: the environment
    /// variables PIIVAULT_MASTER_KEY (key text) or PIIVAULT_MASTER_PASSPHRASE[_FILE].
    #[arg(
        long,
        global = true,
        env = "PIIVAULT_MASTER_KEY_FILE",
        value_name = "FILE"
    )]
    pub master_key_file: Option<PathBuf>,
    /// Log format: text, or json (one object a line; the lines of a request carry its
    /// request id, as its audit events do). The level comes from PIIVAULT_LOG or
    /// RUST_LOG (default info). No colour codes unless standard error is a terminal.
    #[arg(long, global = true, env = "PIIVAULT_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Audit signing key file (Ed25519; default DATA_DIR/audit/signing.key). Its public
    /// half is written beside it as signing.pub for auditors.
    #[arg(
        long,
        global = true,
        env = "PIIVAULT_AUDIT_KEY_FILE",
        value_name = "FILE"
    )]
    pub audit_key_file: Option<PathBuf>,
    /// Longest lifetime a token may be issued for (s, m, h, d; default 90d).
    #[arg(
        long,
        global = true,
        env = "PIIVAULT_MAX_TOKEN_TTL",
        value_name = "TTL"
    )]
    pub max_token_ttl: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The optional TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub policy_dir: Option<PathBuf>,
    pub reports_dir: Option<PathBuf>,
    pub master_key_file: Option<PathBuf>,
    pub master_passphrase_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub listen: Option<SocketAddr>,
    pub plain_http: Option<bool>,
    /// One INFO line per request (default: the access log is at DEBUG).
    pub access_log: Option<bool>,
    pub max_body_bytes: Option<usize>,
    pub max_token_ttl: Option<String>,
    pub audit_key_file: Option<PathBuf>,
    /// Days audit events are kept before `audit prune` may remove them (default 1095).
    pub audit_retention_days: Option<u32>,
    /// Working days a data-subject request is due in (default 15).
    pub dsr_due_working_days: Option<u32>,
    /// In a year `policies/holidays.toml` does not list, count weekends only (default
    /// false: a request whose due date falls there is refused with 503
    /// `calendar_missing` until the year is added).
    pub dsr_calendar_fallback: Option<bool>,
    /// A bulk export (`POST /v1/exports`) of more subjects than this waits for a second
    /// token with the approving role (default 100).
    pub bulk_export_approval_over: Option<usize>,
    /// Sign an audit checkpoint after this many events (default 1000)…
    pub audit_checkpoint_events: Option<i64>,
    /// …or after this many seconds with new events (default 10).
    pub audit_checkpoint_secs: Option<u64>,
    /// How often the policy files are checked for changes, in seconds.
    pub policy_reload_secs: Option<u64>,
    /// How often each process reads the change feed that keeps its caches honest, in
    /// milliseconds (default 250): the bound within which a token revoked or a consent
    /// withdrawn on one node is honoured on the others.
    pub cache_sync_ms: Option<u64>,
    /// Subjects whose ciphertexts and wrapped keys are kept in memory (default 50,000;
    /// 0: none, every read asks the store).
    pub subject_cache_entries: Option<usize>,
    /// The algorithms new keys are made for: `aes` (default: AES-256-GCM data keys,
    /// HMAC-SHA256 blind-index and token-hash keys) or `sm` (China's commercial
    /// cryptography: SM4-GCM and HMAC-SM3). Existing keys keep theirs: `piivault keys
    /// rotate --data` (and `--blind-index`, `--token-hash`) moves a store over.
    pub crypto_suite: Option<String>,
    /// Bad tokens one client address may present per window before it is delayed and
    /// refused with 429 (default 20).
    pub bad_token_max_failures: Option<u32>,
    /// That window, in seconds (default 60).
    pub bad_token_window_secs: Option<u64>,
    /// Client connections open at once (default 1000); more are closed on arrival.
    pub max_connections: Option<usize>,
    /// Seconds a client has to complete the TLS handshake and send a request's headers
    /// (default 10).
    pub header_timeout_secs: Option<u64>,
    /// Seconds a client has to send a request's whole body (default 30).
    pub body_timeout_secs: Option<u64>,
    /// Seconds a connection may stay silent, reading or writing, before it is closed
    /// (default 60).
    pub idle_timeout_secs: Option<u64>,
    /// The master key held by an external key source (a PKCS#11 module or a transit key
    /// service) instead of a key file.
    pub master_key: Option<MasterKeySection>,
}

/// `[master_key]`: where an external master key lives. Secrets (the PIN, the token)
/// come from the environment or a file, never from this file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterKeySection {
    /// `pkcs11` or `transit`.
    pub source: String,
    /// PKCS#11: the module (shared library).
    pub module: Option<PathBuf>,
    /// PKCS#11: the label of the token holding the keys.
    pub token_label: Option<String>,
    /// PKCS#11: key objects are labelled `<key_label>-v<N>` (default `piivault-master`).
    pub key_label: Option<String>,
    /// PKCS#11: a file holding the user PIN (else `PIIVAULT_PKCS11_PIN`).
    pub pin_file: Option<PathBuf>,
    /// Transit: `https://host:port` of the key service.
    pub address: Option<String>,
    /// Transit: the engine's mount path (default `transit`).
    pub mount: Option<String>,
    /// Transit: the key's name (default `piivault`).
    pub key: Option<String>,
    /// Transit: a file holding the token (else `PIIVAULT_TRANSIT_TOKEN`).
    pub token_file: Option<PathBuf>,
    /// Transit: a PEM file of CA certificates to trust (default: the public web roots).
    pub ca_file: Option<PathBuf>,
    /// Transit: seconds one call may take (default 5).
    pub timeout_secs: Option<u64>,
    /// Seconds the vault keeps serving without its key source confirming the master
    /// keys (default 300). Past that it drops them from memory and answers 503
    /// `key_unavailable` until the source answers again.
    pub hold_secs: Option<u64>,
}

/// How long a vault serves without its external key source confirming its master keys.
pub const DEFAULT_KEY_SOURCE_HOLD: Duration = Duration::from_secs(300);

impl MasterKeySection {
    /// The key source this section describes, with its secret read from the
    /// environment or its file.
    fn source(&self) -> Result<crate::crypto::ExternalKeyConfig, ConfigError> {
        use crate::crypto::{ExternalKeyConfig, Pkcs11Config, TransitConfig};
        let missing = |name: &str| {
            ConfigError::Invalid(format!(
                "[master_key] with source = {:?} needs {name}",
                self.source
            ))
        };
        let secret = |env: &str, file: &Option<PathBuf>, what: &str| match (env_secret(env), file) {
            (Some(s), _) => Ok(s),
            (None, Some(path)) => read_secret_file(path),
            (None, None) => Err(ConfigError::Invalid(format!(
                "[master_key] needs the {what}: set {env} or {}_file",
                what.split(' ').next_back().unwrap_or(what)
            ))),
        };
        match self.source.as_str() {
            "pkcs11" => Ok(ExternalKeyConfig::Pkcs11(Pkcs11Config {
                module: self.module.clone().ok_or_else(|| missing("module"))?,
                token_label: self
                    .token_label
                    .clone()
                    .ok_or_else(|| missing("token_label"))?,
                key_label: self
                    .key_label
                    .clone()
                    .unwrap_or_else(|| "piivault-master".into()),
                pin: secret("PIIVAULT_PKCS11_PIN", &self.pin_file, "PKCS#11 user pin")?,
            })),
            "transit" => {
                let address = self.address.as_deref().ok_or_else(|| missing("address"))?;
                let address: url::Url = address.parse().map_err(|e| {
                    ConfigError::Invalid(format!("[master_key] address {address:?}: {e}"))
                })?;
                if address.scheme() != "https" {
                    return Err(ConfigError::Invalid(
                        "[master_key] address must be https:// (the master key travels over it)"
                            .into(),
                    ));
                }
                Ok(ExternalKeyConfig::Transit(TransitConfig {
                    address,
                    mount: self.mount.clone().unwrap_or_else(|| "transit".into()),
                    key: self.key.clone().unwrap_or_else(|| "piivault".into()),
                    token: secret("PIIVAULT_TRANSIT_TOKEN", &self.token_file, "transit token")?,
                    ca_file: self.ca_file.clone(),
                    timeout: Duration::from_secs(self.timeout_secs.unwrap_or(5).max(1)),
                }))
            }
            other => Err(ConfigError::Invalid(format!(
                "[master_key] source must be \"pkcs11\" or \"transit\", not {other:?}"
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
    /// The command names another store than the one the data directory belongs to.
    #[error(
        "the data directory {data_dir} belongs to the store {recorded} (recorded in {record}), \
         but this command names {named}; leave out --database-url (and PIIVAULT_DATABASE_URL) \
         to use the recorded store, or use another data directory"
    )]
    OtherStore {
        data_dir: String,
        record: String,
        recorded: String,
        named: String,
    },
    /// No vault has been started in the data directory, and no store was named.
    #[error(
        "there is no vault in {0}: start one there with `piivault serve --data-dir {0}` \
         (it records its store in {RECORD_FILE}), or name the store with --database-url"
    )]
    NoVault(String),
}

/// What a command does with the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// It may start a new vault there (`serve`).
    MayInitialise,
    /// It works on the vault already there.
    Existing,
    /// It does not use the store (reads policy files only).
    NoStore,
}

/// Resolved settings shared by every subcommand.
#[derive(Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// The store: the one recorded in the data directory, or the one named.
    pub database_url: DatabaseUrl,
    /// None: use the classification compiled into the binary.
    pub policy_dir: Option<PathBuf>,
    /// None: use the report definitions compiled into the binary.
    pub reports_dir: Option<PathBuf>,
    pub master: MasterKeySource,
    pub log_format: LogFormat,
    /// Longest lifetime a token may be issued for.
    pub max_token_ttl: Duration,
    /// The audit signing key (private; 0600).
    pub audit_key_file: PathBuf,
    /// The algorithms new keys are made for (`crypto_suite`).
    pub suite: crate::crypto::Suite,
    /// How long the vault serves without its external key source confirming the
    /// master keys (`[master_key] hold_secs`).
    pub key_source_hold: Duration,
    /// The TOML file, for subcommand-specific settings.
    pub file: FileConfig,
}

/// The store for `data_dir`: the one recorded there (a `named` store must be the same
/// one), else the one named, else, for a command that may start a vault or for a data
/// directory from before stores were recorded, SQLite in the data directory.
fn store_url(
    data_dir: &Path,
    named: Option<String>,
    opening: Opening,
) -> Result<DatabaseUrl, ConfigError> {
    let default_sqlite = data_dir.join("piivault.db");
    match (StoreRecord::read(data_dir)?, named) {
        (Some(record), Some(named)) => {
            if record.names_same_store(&named)? {
                Ok(named.into())
            } else {
                Err(ConfigError::OtherStore {
                    data_dir: data_dir.display().to_string(),
                    record: StoreRecord::path(data_dir).display().to_string(),
                    recorded: record.database_url,
                    named: redacted(&named),
                })
            }
        }
        (Some(record), None) => store_record::with_password(&record.database_url),
        (None, Some(named)) => Ok(named.into()),
        (None, None) if opening != Opening::Existing || default_sqlite.exists() => {
            Ok(format!("sqlite://{}?mode=rwc", default_sqlite.display()).into())
        }
        (None, None) => Err(ConfigError::NoVault(data_dir.display().to_string())),
    }
}

fn env_secret(name: &str) -> Option<Zeroizing<String>> {
    std::env::var(name)
        .ok()
        .map(Zeroizing::new)
        .filter(|s| !s.trim().is_empty())
}

fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| Zeroizing::new(s.trim_end_matches(['\r', '\n']).to_owned()))
        .map_err(|e| ConfigError::Invalid(format!("cannot read {}: {e}", path.display())))
}

impl Settings {
    pub fn resolve(args: &GlobalArgs, opening: Opening) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database_url = store_url(
            &data_dir,
            args.database_url
                .clone()
                .or_else(|| file.database_url.clone()),
            opening,
        )?;
        let policy_dir = match args.policy_dir.clone().or_else(|| file.policy_dir.clone()) {
            Some(dir) => Some(dir),
            None => Some(PathBuf::from(DEFAULT_POLICY_DIR)).filter(|d| d.is_dir()),
        };
        let reports_dir = match args
            .reports_dir
            .clone()
            .or_else(|| file.reports_dir.clone())
        {
            Some(dir) => Some(dir),
            None => Some(PathBuf::from(DEFAULT_REPORTS_DIR)).filter(|d| d.is_dir()),
        };
        let master = if let Some(section) = &file.master_key {
            // An external source named in the config file is the only one used: with
            // another source given too, refuse rather than pick.
            for env in [
                "PIIVAULT_MASTER_KEY",
                "PIIVAULT_MASTER_PASSPHRASE",
                "PIIVAULT_MASTER_PASSPHRASE_FILE",
            ] {
                if std::env::var_os(env).is_some() {
                    return Err(ConfigError::Invalid(format!(
                        "the config file names a [master_key] source and {env} is set too; keep one"
                    )));
                }
            }
            if args.master_key_file.is_some()
                || file.master_key_file.is_some()
                || file.master_passphrase_file.is_some()
            {
                return Err(ConfigError::Invalid(
                    "the config file names a [master_key] source and a master key file or passphrase file too; keep one".into(),
                ));
            }
            MasterKeySource::External(section.source()?)
        } else if let Some(text) = env_secret("PIIVAULT_MASTER_KEY") {
            MasterKeySource::Inline(text)
        } else if let Some(pass) = env_secret("PIIVAULT_MASTER_PASSPHRASE") {
            MasterKeySource::Passphrase(pass)
        } else if let Some(path) = std::env::var_os("PIIVAULT_MASTER_PASSPHRASE_FILE") {
            MasterKeySource::Passphrase(read_secret_file(Path::new(&path))?)
        } else if let Some(path) = args
            .master_key_file
            .clone()
            .or_else(|| file.master_key_file.clone())
        {
            MasterKeySource::File { path, create: true }
        } else if let Some(path) = &file.master_passphrase_file {
            MasterKeySource::Passphrase(read_secret_file(path)?)
        } else {
            MasterKeySource::File {
                path: data_dir.join("master.key"),
                create: true,
            }
        };
        let max_token_ttl = match args
            .max_token_ttl
            .as_deref()
            .or(file.max_token_ttl.as_deref())
        {
            Some(text) => crate::authz::parse_ttl(text).ok_or_else(|| {
                ConfigError::Invalid(
                    "max token lifetime takes a number and s, m, h or d (e.g. 90d)".into(),
                )
            })?,
            None => crate::authz::DEFAULT_MAX_TTL,
        };
        let audit_key_file = args
            .audit_key_file
            .clone()
            .or_else(|| file.audit_key_file.clone())
            .unwrap_or_else(|| data_dir.join("audit").join("signing.key"));
        let suite = match file.crypto_suite.as_deref() {
            None => crate::crypto::Suite::default(),
            Some(name) => crate::crypto::Suite::parse(name).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "crypto_suite must be \"aes\" (AES-256-GCM, HMAC-SHA256) or \"sm\" (SM4-GCM, HMAC-SM3), not {name:?}"
                ))
            })?,
        };
        let key_source_hold = file
            .master_key
            .as_ref()
            .and_then(|m| m.hold_secs)
            .map_or(DEFAULT_KEY_SOURCE_HOLD, |s| Duration::from_secs(s.max(1)));
        Ok(Self {
            audit_key_file,
            max_token_ttl,
            suite,
            key_source_hold,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            data_dir,
            database_url,
            policy_dir,
            reports_dir,
            master,
            file,
        })
    }
}
