//! `worker` binary: parses the configuration and runs [`worker::run`].

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = worker::Config::parse();
    shared::telemetry::init(&cfg.log_format, "info,ort=warn");
    match worker::run(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "worker cannot start");
            eprintln!("worker: {error}");
            ExitCode::FAILURE
        }
    }
}
