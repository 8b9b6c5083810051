//! `glimpse`: a thin binary over the Glimpse libraries. It parses flags, validates them,
//! calls `glimpse_models::pipeline`, and prints — for people, or as JSON with `--json`.
//! Errors go to stderr with a message naming the bad input and a non-zero exit.

mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any thread starts: keep tensor buffers on the heap (see the module).
    glimpse_models::allocator::tune_for_tensors();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GLIMPSE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match commands::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
