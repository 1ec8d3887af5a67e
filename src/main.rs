//! The `piivault` binary: parse the command line, set up telemetry, hand over.

use clap::Parser;

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
