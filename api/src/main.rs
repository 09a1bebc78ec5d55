//! The `api` binary: parse configuration, size the connection limits from
//! the descriptor limit, bind, serve until SIGTERM/Ctrl-C; SIGHUP reloads
//! the API keys and tenants files.
//!
//! On the signal the listeners are closed (new connections are refused),
//! idle connections are closed, long-polls answer at once with their job's
//! current state, and every request in flight is finished; then the process
//! exits 0. A client that keeps a request open longer than
//! `--shutdown-grace-secs` does not keep the process alive.

use std::io::Write;

use anyhow::Context;
use api::conn_limits::{self, Budget};
use api::conn_watch::Timeouts;
use api::serve::{self, Server};
use api::{AppState, Config, Routers};
use clap::Parser;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = shared::telemetry::init_with(&shared::telemetry::Options {
        format: config.log_format.as_str(),
        default_filter: "info",
        service_name: "onnx-queue-api",
        otlp_endpoint: config.otlp_endpoint.as_deref(),
    })?;
    let served = run(config).await;
    // Export the last spans; blocking, so off the executor.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    served
}

/// Raises the descriptor limit and sizes both connection tables from it.
fn connection_budget(config: &Config) -> anyhow::Result<Budget> {
    let nofile = conn_limits::raise_nofile().context("cannot read RLIMIT_NOFILE")?;
    let budget = conn_limits::budget(
        nofile.soft,
        config.ops_listen.is_some(),
        config.max_connections,
        config.max_connections_per_ip,
    )?;
    tracing::info!(
        nofile_initial = nofile.initial,
        nofile = nofile.soft,
        nofile_hard = nofile.hard,
        reserved_fds = conn_limits::RESERVED_FDS,
        probe_reserve = budget.public.overflow,
        ops_connections = budget.ops.map_or(0, |o| o.max_connections),
        fd_budget = budget.fd_budget,
        max_connections_flag = config.max_connections,
        max_connections = budget.public.max_connections,
        max_connections_per_ip = budget.public.max_per_ip,
        "connection limits"
    );
    if (budget.public.max_connections as u64) < config.max_connections {
        tracing::warn!(
            flag = config.max_connections,
            cap = budget.public.max_connections,
            "--max-connections is above the file descriptor budget; capped"
        );
    }
    Ok(budget)
}

async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let budget = connection_budget(&config)?;
    let state = AppState::new(&config)?;
    reload_on_sighup(state.clone());
    let routers = Routers::new(state.clone());
    let timeouts = Timeouts {
        header: config.header_read_timeout(),
        idle: config.idle_timeout(),
    };
    let public = bind(&config.listen).await?;
    let addr = public.local_addr()?;
    let ops = match (&config.ops_listen, budget.ops) {
        (Some(ops_addr), Some(limits)) => {
            let listener = bind(ops_addr).await?;
            let ops_addr = listener.local_addr()?;
            tracing::info!(addr = %ops_addr, "operator listener on {ops_addr}");
            Some((listener, ops_addr, limits))
        }
        _ => None,
    };
    tracing::info!(%addr, namespace = %config.namespace, "listening on {addr}");
    // Harnesses start us with port 0 and wait for the LISTENING line; the
    // operator address comes first, so it is known by then.
    {
        let mut out = std::io::stdout().lock();
        if let Some((_, ops_addr, _)) = &ops {
            writeln!(out, "OPS_LISTENING {ops_addr}")?;
        }
        writeln!(out, "LISTENING {addr}")?;
        out.flush()?;
    }

    // Turns true when the signal arrives: stops the accept loops and starts
    // the grace period's clock.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let signal_state = state.clone();
    tokio::spawn(async move {
        shutdown(signal_state).await;
        stop_tx.send_replace(true);
    });
    let public = serve::serve(
        Server {
            listener: public,
            name: "public",
            app: routers.public,
            overflow_app: Some(routers.overflow),
            limits: budget.public,
            timeouts,
        },
        stop.clone(),
    );
    let ops = async {
        if let Some((listener, _, limits)) = ops {
            serve::serve(
                Server {
                    listener,
                    name: "ops",
                    app: routers.ops,
                    overflow_app: None,
                    limits,
                    timeouts,
                },
                stop.clone(),
            )
            .await;
        }
    };
    let grace = config.shutdown_grace();
    let mut stopping = stop.clone();
    let grace_over = async {
        if stopping.wait_for(|s| *s).await.is_err() {
            // The signal task ended without signalling: nothing to time.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        ((), ()) = async { tokio::join!(public, ops) } => {}
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
    shared::shutdown::signal().await;
    tracing::info!("shutting down");
    state.begin_shutdown();
}
