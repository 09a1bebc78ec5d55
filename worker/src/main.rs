//! `worker` binary: parses the configuration and runs [`worker::run`]; or,
//! started by a worker as `worker __validate-model <settings>`, validates
//! one model in a process of its own ([`worker::sandbox`]).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before anything else starts (no runtime, no threads, no logging to
    // stderr of the parent): a validation child only answers on stdout.
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some(worker::sandbox::SUBCOMMAND) {
        return worker::sandbox::child_main(&args.next().unwrap_or_default());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(error) => {
            eprintln!("worker: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve())
}

async fn serve() -> ExitCode {
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
