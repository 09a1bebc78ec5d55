//! `worker` binary: parses the configuration and runs [`worker::run`].

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = worker::Config::parse();
    let telemetry = match shared::telemetry::init_with(&shared::telemetry::Options {
        format: &cfg.log_format,
        default_filter: "info,ort=warn",
        service_name: "onnx-queue-worker",
        otlp_endpoint: cfg.otlp_endpoint.as_deref(),
    }) {
        Ok(t) => t,
        Err(error) => {
            eprintln!("worker: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match worker::run(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %shared::telemetry::ErrorChain(&error), "worker cannot start");
            eprintln!("worker: {error}");
            ExitCode::FAILURE
        }
    };
    // Export the last spans; blocking, so off the executor.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}
