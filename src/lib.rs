//! piivault: a secure customer-data vault. This file builds the app from its parts
//! and is the public surface the binary and the tests use.

pub mod audit;
pub mod authz;
pub mod cache;
pub mod changes;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod crypto;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod pipeline;
pub mod pipl;
pub mod store;
pub mod telemetry;
pub mod vault;

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum_server::tls_rustls::RustlsConfig;

use crate::audit::{Audit, AuditConfig, Reports};
use crate::authz::{FailureLimiter, LimitConfig, Policy, Tokens};
use crate::classify::Catalogue;
use crate::config::Settings;
use crate::crypto::{AuditKey, AuditPublicKey};
use crate::store::Store;
use crate::vault::Vault;

/// An opened vault: store connected and migrated, keys loaded, catalogue parsed.
#[derive(Debug, Clone)]
pub struct App {
    pub store: Store,
    /// The access policy in force (reloadable).
    pub policy: Arc<Policy>,
    pub vault: Vault,
    pub tokens: Tokens,
    /// The audit trail.
    pub audit: Audit,
    /// Consent per subject and purpose.
    pub consents: pipl::Consents,
    /// Data-subject requests.
    pub requests: pipl::Requests,
    /// The retention sweeper.
    pub retention: pipl::Retention,
    /// Audit report definitions.
    pub reports: Arc<Reports>,
    /// Keeps this process's caches in step with changes made by other processes.
    pub changes: changes::ChangeFeed,
    /// Where checkpoints are appended outside the database.
    pub checkpoint_file: PathBuf,
    /// Whether opening this vault initialised it (first start).
    pub initialised_now: bool,
    /// Set while a rotation started over HTTP runs in this process.
    pub rotation: Arc<std::sync::atomic::AtomicBool>,
}

/// Installs the one rustls crypto provider (ring) for the whole process.
pub fn install_crypto_provider() {
    // Fails only if a provider is already installed, which is what we want anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads the classification from the policy directory, or the built-in copy.
pub fn load_catalogue(settings: &Settings) -> anyhow::Result<Catalogue> {
    match &settings.policy_dir {
        Some(dir) => Catalogue::load(&dir.join("classification.toml"))
            .with_context(|| format!("loading the classification from {}", dir.display())),
        None => {
            tracing::info!("no policy directory found; using the built-in classification");
            Catalogue::builtin().context("the built-in classification")
        }
    }
}

/// Checks that `settings` names the store the data directory belongs to. Returns true
/// if the directory has no record yet: once the store has opened, [`open`] records it,
/// and from then on the data directory (its master key, TLS material and audit key)
/// and the store go together.
fn check_store_binding(settings: &Settings) -> anyhow::Result<bool> {
    use crate::config::StoreRecord;
    match StoreRecord::read(&settings.data_dir)? {
        Some(record) if !record.names_same_store(&settings.database_url)? => {
            anyhow::bail!(
                "the data directory {} belongs to the store {}, not {}",
                settings.data_dir.display(),
                record.database_url,
                settings.database_url
            )
        }
        Some(_) => Ok(false),
        None => Ok(true),
    }
}

/// Opens (and on first start initialises) the vault described by `settings`.
pub async fn open(settings: &Settings) -> anyhow::Result<App> {
    metrics::handle();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&settings.data_dir)
        .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
    let catalogue = Arc::new(load_catalogue(settings)?);
    let reports = Arc::new(
        Reports::load(settings.reports_dir.as_deref(), &catalogue)
            .context("loading the audit reports")?,
    );
    let policy = Arc::new(
        Policy::load(settings.policy_dir.clone(), catalogue.clone())
            .await
            .context("loading the access policy")?,
    );
    let unrecorded = check_store_binding(settings)?;
    let connections = if settings.database_url.starts_with("sqlite:") {
        8
    } else {
        16
    };
    let store = Store::connect(&settings.database_url, connections)
        .await
        .context("opening the store")?;
    let (keys, initialised_now) = keys::open(&store, &settings.master, settings.suite)
        .await
        .context("loading the master key")?;
    let keys = Arc::new(keys);
    if unrecorded {
        crate::config::StoreRecord::write(&settings.data_dir, &settings.database_url)
            .context("recording the store in the data directory")?;
    }
    let audit_key = Arc::new(
        AuditKey::load_or_create(&settings.audit_key_file)
            .context("loading the audit signing key")?,
    );
    let checkpoint_file = settings
        .audit_key_file
        .parent()
        .unwrap_or(&settings.data_dir)
        .join("checkpoints.log");
    let file = &settings.file;
    let defaults = AuditConfig::default();
    store.spawn_wal_checkpointer();
    let audit = Audit::start_with_key_file(
        store.clone(),
        Some(audit_key),
        Some(settings.audit_key_file.clone()),
        AuditConfig {
            checkpoint_every_events: file
                .audit_checkpoint_events
                .unwrap_or(defaults.checkpoint_every_events)
                .max(1),
            checkpoint_every: file
                .audit_checkpoint_secs
                .map(std::time::Duration::from_secs)
                .unwrap_or(defaults.checkpoint_every),
            checkpoint_file: Some(checkpoint_file.clone()),
            ..defaults
        },
    );
    tracing::info!(
        backend = ?store.backend(),
        kek_version = keys.master().current_version(),
        policy = %policy.current().digest(),
        initialised_now,
        "vault opened"
    );
    let tokens = Tokens::new(
        store.clone(),
        audit.clone(),
        keys.clone(),
        settings.max_token_ttl,
    );
    let consents = pipl::Consents::new(store.clone(), audit.clone());
    let vault = Vault::new(store.clone(), audit.clone(), keys, catalogue.clone())
        .with_snapshot_cache(
            file.subject_cache_entries
                .unwrap_or(vault::DEFAULT_SNAPSHOT_CACHE_ENTRIES),
        );
    let retention = pipl::Retention::new(
        store.clone(),
        catalogue.clone(),
        audit.clone(),
        vault.clone(),
    );
    let changes = changes::ChangeFeed::new(
        store.clone(),
        tokens.clone(),
        consents.clone(),
        vault.clone(),
    )
    .with_audit(audit.clone());
    changes.sync().await.context("reading the change feed")?;
    changes.clone().start(
        file.cache_sync_ms
            .map(std::time::Duration::from_millis)
            .unwrap_or(changes::DEFAULT_SYNC_INTERVAL)
            .max(std::time::Duration::from_millis(10)),
    );
    Ok(App {
        vault,
        tokens,
        policy,
        consents,
        changes,
        retention,
        audit,
        requests: pipl::Requests::new(
            store.clone(),
            pipl::WorkCalendar::load(settings.policy_dir.as_deref())
                .context("loading policies/holidays.toml")?,
            settings
                .file
                .dsr_due_working_days
                .unwrap_or(pipl::DEFAULT_DUE_WORKING_DAYS),
        )
        .with_calendar_fallback(settings.file.dsr_calendar_fallback.unwrap_or(false))
        .with_bulk_export_threshold(
            settings
                .file
                .bulk_export_approval_over
                .unwrap_or(pipl::DEFAULT_BULK_EXPORT_THRESHOLD),
        ),
        reports,
        checkpoint_file,
        store,
        initialised_now,
        rotation: Arc::default(),
    })
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Plain HTTP instead of HTTPS: only on a loopback address.
    pub plain_http: bool,
    pub max_body_bytes: usize,
    /// How often the policy files are checked for changes (SIGHUP reloads at once).
    pub policy_reload: std::time::Duration,
    /// Budget of bad tokens per client address.
    pub bad_token_limit: LimitConfig,
    /// How often the server sweeps expired data (None: never; the CLI can).
    pub retention_sweep: Option<std::time::Duration>,
    /// One INFO line per request (else the access log is at DEBUG).
    pub access_log: bool,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A request's headers (and, for HTTPS, the TLS handshake before them) must arrive
    /// within this…
    pub header_timeout: std::time::Duration,
    /// …and its body within this.
    pub body_timeout: std::time::Duration,
    /// A connection silent this long, reading or writing, is closed.
    pub idle_timeout: std::time::Duration,
}

impl ServeOptions {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            plain_http: false,
            max_body_bytes: config::DEFAULT_MAX_BODY_BYTES,
            policy_reload: std::time::Duration::from_secs(5),
            bad_token_limit: LimitConfig::default(),
            retention_sweep: Some(std::time::Duration::from_secs(3600)),
            access_log: false,
            max_connections: config::DEFAULT_MAX_CONNECTIONS,
            header_timeout: std::time::Duration::from_secs(config::DEFAULT_HEADER_TIMEOUT_SECS),
            body_timeout: std::time::Duration::from_secs(config::DEFAULT_BODY_TIMEOUT_SECS),
            idle_timeout: std::time::Duration::from_secs(config::DEFAULT_IDLE_TIMEOUT_SECS),
        }
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub scheme: &'static str,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Stops accepting, lets requests in flight finish (up to 10 s), and waits.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.handle
            .graceful_shutdown(Some(std::time::Duration::from_secs(10)));
        self.wait().await
    }

    /// Waits until the server stops.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task")?.context("server")
    }

    pub fn handle(&self) -> axum_server::Handle {
        self.handle.clone()
    }
}

/// Keeps every PIPIA record the policy holds in the store (PIPL Art. 56: at least three
/// years), at start and after each policy change, so a record removed from pipia.toml
/// is not lost; checked every `every`.
fn spawn_pipia_archive(app: &App, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
    let (policy, store) = (app.policy.clone(), app.store.clone());
    tokio::spawn(async move {
        let mut archived: Option<String> = None;
        loop {
            let set = policy.current();
            if archived.as_deref() != Some(set.digest()) {
                let records = set
                    .recipients()
                    .pipia
                    .iter()
                    .map(|(id, p)| {
                        (
                            id.clone(),
                            p.date.clone(),
                            p.conclusion.clone(),
                            p.reviewer.clone(),
                        )
                    })
                    .collect();
                match store.archive_pipia(records).await {
                    Ok(()) => archived = Some(set.digest().to_owned()),
                    Err(e) => {
                        tracing::error!(error = %e, "PIPIA records could not be archived; trying again")
                    }
                }
            }
            tokio::time::sleep(every.max(std::time::Duration::from_millis(100))).await;
        }
    })
}

/// Binds and starts serving `app`. HTTPS with the data directory's certificate unless
/// plain HTTP was asked for on a loopback address.
pub async fn start(app: &App, settings: &Settings, opts: &ServeOptions) -> anyhow::Result<Server> {
    if opts.plain_http && !opts.listen.ip().is_loopback() {
        anyhow::bail!(
            "plain HTTP is only allowed on a loopback address; {} is not one",
            opts.listen.ip()
        );
    }
    let state = http::AppState::new(app.pipeline(opts.bad_token_limit));
    app.policy
        .clone()
        .watch(opts.policy_reload, app.audit.clone());
    if let Some(every) = opts.retention_sweep {
        let retention = app.retention.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = retention.sweep(store::now_ms(), false).await {
                    tracing::error!(error = %e, "retention sweep failed");
                }
            }
        });
    }
    let router = http::router(
        state,
        http::Limits {
            max_body_bytes: opts.max_body_bytes,
            body_timeout: opts.body_timeout,
        },
        opts.access_log,
    );
    let listener = std::net::TcpListener::bind(opts.listen)
        .with_context(|| format!("binding {}", opts.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let limited = http::conn::Limited::new(http::conn::Bounds {
        max_connections: opts.max_connections,
        idle_timeout: opts.idle_timeout,
    });
    let header_timeout = opts.header_timeout;
    let http1 = |builder: &mut hyper_util::server::conn::auto::Builder<_>| {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout);
    };
    // This node reports itself (and the master-key versions it holds) while it serves,
    // so that a rotation can tell whether every node has a new version.
    let vault = app.vault.clone();
    let (heartbeat, node) =
        keys::nodes::spawn_heartbeat(app.store.clone(), addr.to_string(), move || {
            let keys = vault.keys().0;
            (keys.master().versions(), keys.system_versions().0)
        });
    let key_source_watch = app.vault.spawn_key_source_watch(settings.key_source_hold);
    let pipia_archive = spawn_pipia_archive(app, opts.policy_reload);
    let store = app.store.clone();
    let serving = move |serve: std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>,
    >| {
        tokio::spawn(async move {
            let result = serve.await;
            heartbeat.abort();
            if let Some(watch) = key_source_watch {
                watch.abort();
            }
            pipia_archive.abort();
            let _ = store
                .forget_nodes(&node, store::now_ms() - 86_400_000)
                .await;
            result
        })
    };
    let (scheme, task) = if opts.plain_http {
        let mut server = axum_server::from_tcp(listener)
            .acceptor(limited)
            .handle(handle.clone());
        http1(server.http_builder());
        ("http", serving(Box::pin(server.serve(service))))
    } else {
        let tls = http::tls::server_config(&settings.data_dir)?;
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(RustlsConfig::from_config(tls))
            .handshake_timeout(header_timeout)
            .acceptor(limited);
        let mut server = axum_server::from_tcp(listener)
            .acceptor(acceptor)
            .handle(handle.clone());
        http1(server.http_builder());
        ("https", serving(Box::pin(server.serve(service))))
    };
    Ok(Server {
        addr,
        scheme,
        handle,
        task,
    })
}

impl App {
    /// The request pipeline over this vault, for an interface to call.
    pub fn pipeline(&self, bad_token_limit: LimitConfig) -> pipeline::Pipeline {
        pipeline::Pipeline {
            vault: self.vault.clone(),
            tokens: self.tokens.clone(),
            store: self.store.clone(),
            audit: self.audit.clone(),
            consents: self.consents.clone(),
            requests: self.requests.clone(),
            checkpoint_file: self.checkpoint_file.clone(),
            reports: self.reports.clone(),
            policy: self.policy.clone(),
            limiter: Arc::new(FailureLimiter::new(bad_token_limit)),
            rotation: self.rotation.clone(),
        }
    }

    /// The public keys an auditor of this vault trusts (see [`trusted_audit_keys`]).
    pub fn trusted_audit_keys(&self) -> Vec<AuditPublicKey> {
        trusted_audit_keys(&self.audit, &self.checkpoint_file)
    }

    /// Verifies the whole trail against the trusted keys and the checkpoint file.
    pub async fn verify_audit(&self) -> anyhow::Result<audit::VerifyReport> {
        verify_trail(
            &self.store,
            &self.trusted_audit_keys(),
            &self.checkpoint_file,
        )
        .await
    }
}

/// The public keys an auditor of this vault trusts: the signing key's, and every
/// `*.pub` file beside the checkpoint file (other nodes' keys, and this node's earlier
/// keys kept by `piivault keys rotate --audit`). Read afresh on each call, so a key
/// rotated while the vault runs is trusted at once.
pub fn trusted_audit_keys(audit: &Audit, checkpoint_file: &std::path::Path) -> Vec<AuditPublicKey> {
    let mut keys: Vec<AuditPublicKey> = audit
        .key()
        .map(|k| k.public().clone())
        .into_iter()
        .collect();
    if let Some(dir) = checkpoint_file.parent() {
        for k in audit::public_keys_in(dir) {
            if !keys.iter().any(|x| x.key_id() == k.key_id()) {
                keys.push(k);
            }
        }
    }
    keys
}

/// Verifies the trail in `store` with `keys`, adding the checkpoints of `checkpoint_file`.
pub async fn verify_trail(
    store: &Store,
    keys: &[AuditPublicKey],
    checkpoint_file: &std::path::Path,
) -> anyhow::Result<audit::VerifyReport> {
    let extra = audit::read_checkpoint_file(checkpoint_file)
        .with_context(|| format!("reading {}", checkpoint_file.display()))?;
    Ok(audit::verify(store, keys, &extra).await?)
}
