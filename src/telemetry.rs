//! Structured logs through `tracing`, as text or JSON, to standard error.
//! Spans carry ids (request, subject, token), never values.
//!
//! Lines go through a non-blocking writer (a dedicated thread drains a bounded queue),
//! so a slow terminal or pipe never stalls a request. If the queue is full, lines are
//! dropped and counted rather than waited for: the audit trail, not the log, is the
//! record of who did what. Colour codes only when standard error is a terminal.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. The level comes from `PIIVAULT_LOG`, else `RUST_LOG`
/// (both in `tracing` filter syntax: `debug`, `info,piivault::access=debug`), else `info`.
/// Keep the returned guard until the process ends: dropping it flushes the last lines.
pub fn init(format: LogFormat) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_env("PIIVAULT_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,rustls=warn"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            // Every span, outermost first: the `request` span carries the request id
            // that the audit events of the request carry too.
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    installed.ok().map(|()| guard)
}
