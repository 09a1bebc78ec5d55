//! The `api` binary: parse configuration, bind, serve until SIGTERM/Ctrl-C;
//! SIGHUP reloads the API keys and tenants files.
//!
//! On the signal the listener is closed (new connections are refused), idle
//! connections are closed, long-polls answer at once with their job's
//! current state, and every request in flight is finished; then the process
//! exits 0. A client that keeps a request open longer than
//! `--shutdown-grace-secs` does not keep the process alive.

use std::future::IntoFuture;
use std::io::Write;

use anyhow::Context;
use api::{AppState, Config, router};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = shared::telemetry::init_with(&shared::telemetry::Options {
        format: config.log_format.as_str(),
        default_filter: "info",
        service_name: "onnx-queue-api",
        otlp_endpoint: config.otlp_endpoint.as_deref(),
    })?;
    let served = serve(config).await;
    // Export the last spans; blocking, so off the executor.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    served
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let state = AppState::new(&config)?;
    reload_on_sighup(state.clone());
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

    // Flipped when the signal arrives, to start the grace period's clock.
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let app = router(state.clone());
    let signal = async move {
        shutdown(state).await;
        stopping_tx.send_replace(true);
    };
    let serve = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .into_future();
    let grace = config.shutdown_grace();
    let grace_over = async {
        if stopping.wait_for(|s| *s).await.is_err() {
            // The signal task ended without signalling: nothing to time.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        res = serve => res?,
        () = grace_over => {
            tracing::warn!(?grace, "requests still in flight after the shutdown grace period; exiting");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP re-reads the API keys and tenants files (see [`AppState::reload`]);
/// a bad file is logged and the previous one stays in force.
fn reload_on_sighup(state: AppState) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reloads need a restart");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match state.reload() {
                Ok(()) => tracing::info!("reloaded the API keys and tenants files"),
                Err(e) => tracing::error!(error = %e, "reload refused; keeping the previous files"),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = state;
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
