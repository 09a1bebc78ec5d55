//! The worker: loads every ONNX model of a directory into ONNX Runtime,
//! publishes their signatures, then consumes the models' job streams and writes
//! results back, acknowledging each job in the same atomic step as its result.
//!
//! * [`config`]: command line and environment.
//! * [`runtime`]: finding and starting the ONNX Runtime library.
//! * [`backend`]: the model trait and its ONNX Runtime implementation.
//! * [`execute`]: one job's inputs → model → result JSON or a job error.
//! * [`consumer`]: the Redis Streams loop around it.

pub mod backend;
pub mod config;
pub mod consumer;
pub mod error;
pub mod execute;
pub mod runtime;

pub use config::Config;
pub use error::{JobFailure, WorkerError};

use std::sync::Arc;
use std::time::Duration;

use shared::queue::Keys;
use shared::redis_conn::{self, Limits};
use tokio::sync::watch;

/// Runs a worker until SIGTERM or Ctrl-C: start ONNX Runtime, load the models,
/// publish them, then consume. Start-up errors are returned, not panicked.
pub async fn run(cfg: Config) -> Result<(), WorkerError> {
    let lib = runtime::find_library(cfg.ort_lib.as_deref())?;
    let models_dir = cfg.models_dir.clone();
    let intra = cfg.intra_threads;
    // Loading sessions is CPU work: keep it off the executor.
    let (env, models) = tokio::task::spawn_blocking(move || {
        let env = runtime::start(&lib)?;
        tracing::info!(library = %lib.display(), "ONNX Runtime started");
        let models = backend::load_dir(&env, &models_dir, intra)?;
        Ok::<_, WorkerError>((env, models))
    })
    .await
    .map_err(|e| WorkerError::OrtLoad {
        path: cfg.ort_lib.clone().unwrap_or_default(),
        message: e.to_string(),
    })??;

    redis_conn::check_url(&cfg.redis_url)?;
    let limits = Limits {
        connect: Duration::from_millis(cfg.redis_timeout_ms),
        response: Duration::from_millis(cfg.redis_timeout_ms),
    };
    let keys = Keys::new(&cfg.namespace);
    let mut names: Vec<String> = models.keys().cloned().collect();
    names.sort();
    let streams = names.iter().map(|m| keys.stream(m)).collect();
    let ctx = Arc::new(consumer::Context {
        streams,
        consumer: consumer::consumer_name(),
        pool: redis_conn::pool(&cfg.redis_url, 8, limits)?,
        redis_url: cfg.redis_url.clone(),
        keys,
        models: Arc::new(models),
        limits,
        read_count: cfg.read_count.max(1),
        block_ms: cfg.block_ms,
        result_ttl_secs: cfg.result_ttl_secs,
    });
    tracing::info!(consumer = %ctx.consumer, models = ?names, "worker starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let announcer = tokio::spawn(announce(
        Arc::clone(&ctx),
        Duration::from_secs(cfg.publish_interval_secs.max(1)),
        stop_rx.clone(),
    ));
    // Best effort: with Redis down, slots meet NOGROUP or a connection error
    // later and recover on their own.
    if let Err(error) = ctx.ensure_groups().await {
        tracing::warn!(%error, "cannot create consumer groups yet");
    }
    let slots: Vec<_> = (0..cfg.concurrency.max(1))
        .map(|slot| tokio::spawn(consumer::run_slot(Arc::clone(&ctx), slot, stop_rx.clone())))
        .collect();

    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight jobs");
    let _ = stop_tx.send(true);
    for slot in slots {
        let _ = slot.await;
    }
    let _ = announcer.await;
    drop(env);
    tracing::info!("worker stopped");
    Ok(())
}

/// Publishes model signatures and makes sure the consumer groups exist, at
/// start and then periodically (the signature doubles as a heartbeat, and a
/// Redis that lost its data gets them back).
async fn announce(ctx: Arc<consumer::Context>, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        let res = async {
            ctx.ensure_groups().await?;
            ctx.publish_models().await
        }
        .await;
        let wait = match res {
            Ok(()) => every,
            Err(error) => {
                tracing::warn!(%error, "cannot publish models; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
