use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::authz::{parse_ttl, IssueRequest};
use crate::config::{Settings, DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES};
use crate::ServeOptions;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "PIIVAULT_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Serve plain HTTP instead of HTTPS (refused unless the address is loopback).
    #[arg(long, env = "PIIVAULT_PLAIN_HTTP")]
    plain_http: bool,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "PIIVAULT_MAX_BODY_BYTES", value_name = "BYTES")]
    max_body_bytes: Option<usize>,
    /// Log one INFO line per request (method, path, status, time). Off by default: the
    /// access log is then at DEBUG (RUST_LOG=piivault::access=debug shows it).
    #[arg(long, env = "PIIVAULT_ACCESS_LOG")]
    access_log: bool,
    /// Lifetime of the bootstrap admin token printed on first start (s, m, h, d).
    #[arg(long, default_value = "24h", value_name = "TTL")]
    bootstrap_token_ttl: String,
}

pub async fn run(settings: &Settings, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let file = &settings.file;
    let default_listen: SocketAddr = DEFAULT_LISTEN.parse().context("default listen address")?;
    let mut opts = ServeOptions::new(args.listen.or(file.listen).unwrap_or(default_listen));
    opts.plain_http = args.plain_http || file.plain_http.unwrap_or(false);
    opts.access_log = args.access_log || file.access_log.unwrap_or(false);
    opts.max_body_bytes = args
        .max_body_bytes
        .or(file.max_body_bytes)
        .unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if let Some(secs) = file.policy_reload_secs {
        opts.policy_reload = std::time::Duration::from_secs(secs.max(1));
    }
    if let Some(n) = file.bad_token_max_failures {
        opts.bad_token_limit.max_failures = n;
    }
    if let Some(secs) = file.bad_token_window_secs {
        opts.bad_token_limit.window = std::time::Duration::from_secs(secs.max(1));
    }
    if let Some(n) = file.max_connections {
        opts.max_connections = n.max(1);
    }
    let secs = |v: Option<u64>, default: std::time::Duration| {
        v.map_or(default, |s| std::time::Duration::from_secs(s.max(1)))
    };
    opts.header_timeout = secs(file.header_timeout_secs, opts.header_timeout);
    opts.body_timeout = secs(file.body_timeout_secs, opts.body_timeout);
    opts.idle_timeout = secs(file.idle_timeout_secs, opts.idle_timeout);
    let bootstrap_ttl = parse_ttl(&args.bootstrap_token_ttl)
        .context("--bootstrap-token-ttl takes a number and s, m, h or d (e.g. 24h)")?;
    let app = crate::open(settings).await?;
    let server = crate::start(&app, settings, &opts).await?;
    if app.initialised_now {
        let (info, secret) = app
            .tokens
            .issue(
                IssueRequest {
                    role: "admin".into(),
                    purposes: vec!["admin".into()],
                    ttl: bootstrap_ttl,
                    description: "bootstrap admin token".into(),
                    created_by: "bootstrap".into(),
                },
                &app.policy.current(),
                crate::audit::Event::new("bootstrap", "vault", "admin", "bootstrap", "token.issue"),
            )
            .await
            .context("issuing the bootstrap admin token")?;
        println!(
            "First start: vault initialised in {}.\n\
             Bootstrap admin token ({}, expires {}; shown only this once):\n{}",
            settings.data_dir.display(),
            info.id,
            info.expires_at,
            secret.as_str()
        );
    }
    let listening = format!(
        "piivault listening on {}://{} (clients trust {})",
        server.scheme,
        server.addr,
        crate::http::tls::TlsPaths::in_dir(&settings.data_dir)
            .ca
            .display()
    );
    // A JSON log stays JSON: the line is an INFO event there, a plain line otherwise.
    match settings.log_format {
        crate::config::LogFormat::Json => tracing::info!("{listening}"),
        crate::config::LogFormat::Text => eprintln!("{listening}"),
    }
    spawn_calendar_watch(app.requests.clone());
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        handle.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    });
    server.wait().await?;
    if let Err(e) = app.audit.checkpoint_now().await {
        tracing::error!(error = %e, "final audit checkpoint failed");
    }
    app.store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Warns the operator at start, and once a day after, when new data-subject requests will
/// soon fall due in a year `policies/holidays.toml` does not list (see
/// `Requests::calendar_warning`): the State Council publishes each year's calendar in the
/// autumn before, and without it requests are refused from mid-December.
fn spawn_calendar_watch(requests: crate::pipl::Requests) {
    tokio::spawn(async move {
        let mut day = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
        loop {
            day.tick().await;
            let today = time::OffsetDateTime::now_utc().date();
            if let Some(warning) = requests.calendar_warning(today) {
                tracing::warn!("{warning}");
            }
        }
    });
}
