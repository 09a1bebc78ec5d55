//! The `api` binary: parse configuration, bind, serve until SIGTERM/Ctrl-C.

use std::io::Write;

use anyhow::Context;
use api::{AppState, Config, router};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    shared::telemetry::init(config.log_format.as_str(), "info");

    let state = AppState::new(&config)?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, namespace = %config.namespace, "listening on {addr}");
    // Harnesses start us with port 0 and wait for this exact line.
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "LISTENING {addr}")?;
        out.flush()?;
    }

    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown(state))
        .await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown(state: AppState) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
    state.begin_shutdown();
}
