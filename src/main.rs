//! The `piivault` binary: parse the command line, set up telemetry, hand over.

use clap::Parser;

/// mimalloc instead of the system allocator: under load the vault's request path spends a
/// fifth of its time in glibc's malloc and free (measured with perf; see benches/load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = piivault::cli::Cli::parse();
    piivault::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(piivault::cli::run(cli))
}
