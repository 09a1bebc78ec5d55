//! `jobctl`: the operator's command line for the inference queue. Lists and
//! shows dead letters, replays them onto their work streams, and prints
//! per-model queue statistics. See `jobctl --help` and the README's
//! Operations section.
//!
//! This file owns process concerns only: argument parsing, the runtime, and
//! turning an error into one line on stderr and exit code 1.

mod cli;
mod commands;
mod error;
mod render;
mod webhooks;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    // One connection, one request at a time: a current-thread runtime is
    // all this needs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(commands::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// Prints the error as one line (Redis errors can span several) and
/// returns the failure exit code.
fn fail(message: &str) -> ExitCode {
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("jobctl: {line}");
    ExitCode::FAILURE
}
