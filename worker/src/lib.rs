//! The worker: loads every ONNX model of a directory into ONNX Runtime,
//! publishes their signatures, then consumes the models' job streams and writes
//! results back, acknowledging each job in the same atomic step as its result.
//!
//! * [`config`]: command line and environment.
//! * [`runtime`]: finding and starting the ONNX Runtime library.
//! * [`backend`]: the model trait and its ONNX Runtime implementation.
//! * [`modelcheck`]: static checks of model bytes before ONNX Runtime.
//! * [`sandbox`]: validation of untrusted models in a limited child process.
//! * [`models`]: which registry versions are served and which are loaded
//!   (seeding from the models dir, hot swap on promotion, the LRU of
//!   sessions, pinned versions, quarantine, `validate` jobs).
//! * [`execute`]: one job's inputs → model → result JSON or a job error.
//! * [`consumer`]: the Redis Streams side around it: the read loop every
//!   slot runs, an attempt's life cycle, prediction batches, takeovers.
//! * [`slots`]: starts the read loops and decides which streams each reads.
//! * [`training`], [`retrain`]: training slots and what a `retrain` job does
//!   (train, score against the current version, register, maybe promote).
//! * [`watchdog`]: time limits and cancellation of inference runs, and the
//!   run limits every job is held to.
//! * [`memlimit`]: the worker's own memory ceiling (`--max-memory-mb`).
//! * [`allocator`]: jemalloc in place of glibc's malloc.
//! * [`http`]: metrics, liveness and readiness on `--metrics-listen`.

mod allocator;
pub mod backend;
mod config;
pub mod consumer;
mod error;
mod execute;
mod http;
mod memlimit;
pub mod modelcheck;
pub mod models;
pub mod retrain;
pub mod runtime;
pub mod sandbox;
pub mod slots;
mod training;
mod watchdog;

pub use config::Config;
pub use error::{JobFailure, WorkerError};

use std::sync::Arc;
use std::time::Duration;

use shared::metric_names::{WORKER_MODEL_SWAPS, WORKER_MODELS_LOADED, redis_op};
use shared::queue::consume::Policy;
use shared::queue::heartbeat;
use shared::redis_conn::{self, Limits};
use shared::redis_errors::count_redis_error;
use tokio::sync::watch;

/// Runs a worker until SIGTERM or Ctrl-C: start ONNX Runtime, load the models,
/// publish them, then consume. Start-up errors are returned, not panicked.
pub async fn run(cfg: Config) -> Result<(), WorkerError> {
    cfg.validate()?;
    // Installed now: a worker told to stop while it is still starting
    // (its models may already be published) must withdraw its heartbeat.
    let shutdown = shared::shutdown::signal();
    match memlimit::apply(cfg.max_memory_mb) {
        Ok(Some(bytes)) => tracing::info!(
            max_memory_mb = bytes >> 20,
            "memory ceiling (RLIMIT_DATA) set"
        ),
        Ok(None) => tracing::info!("no memory ceiling: no --max-memory-mb and no container limit"),
        Err(error) => tracing::warn!(%error, "cannot set the memory ceiling"),
    }
    watchdog::set_limits(watchdog::RunLimits {
        max_run: Duration::from_millis(cfg.max_run_ms),
        max_output_elements: usize::try_from(cfg.max_output_elements).unwrap_or(usize::MAX),
        max_result_bytes: usize::try_from(cfg.max_result_bytes).unwrap_or(usize::MAX),
    });
    let lib = runtime::find_library(cfg.ort_lib.as_deref())?;
    let models_dir = cfg.models_dir.clone();
    let keys = cfg.queue.keys(&cfg.namespace);
    let store_keys = keys.clone();
    let consumer = consumer::consumer_name();
    let settings = store_settings(&cfg, &lib, &consumer)?;
    // Loading sessions is CPU work: keep it off the executor.
    let models = tokio::task::spawn_blocking(move || {
        let env = runtime::start(&lib)?;
        tracing::info!(library = %lib.display(), "ONNX Runtime started");
        models::ModelStore::load_dir(env, &models_dir, settings, store_keys)
    })
    .await
    .map_err(|e| WorkerError::OrtLoad {
        path: cfg.ort_lib.clone().unwrap_or_default(),
        message: e.to_string(),
    })??;

    let topology = redis_conn::Topology::parse(&cfg.redis_url)?;
    let limits = Limits {
        connect: Duration::from_millis(cfg.redis_timeout_ms),
        response: Duration::from_millis(cfg.redis_timeout_ms),
    };
    let models = Arc::new(models);
    let pool = redis_conn::Pool::new(&topology, limits)?;
    let ctx = Arc::new(consumer::Context {
        streams: keys
            .all_partitions()
            .map(|_| Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new())))
            .collect(),
        consumer,
        pool,
        topology,
        keys,
        models,
        limits,
        read_count: cfg.max_batch,
        max_batch_rows: cfg.max_batch,
        max_batch_delay_ms: cfg.max_batch_delay_ms,
        block_ms: cfg.block_ms,
        lease: Duration::from_millis(cfg.lease_ms),
        policy: Policy {
            max_attempts: cfg.max_attempts,
            succeeded_ttl_secs: cfg.result_ttl_secs,
            failed_ttl_secs: cfg.failed_ttl_secs,
            durability: cfg.queue.durability(),
        },
        retry_base: Duration::from_millis(cfg.retry_base_ms),
        retry_max: Duration::from_millis(cfg.retry_max_ms),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let http = match cfg.metrics_listen {
        Some(addr) => {
            let handle = http::install_recorder().map_err(WorkerError::Metrics)?;
            let listener = http::bind(addr)
                .await
                .map_err(|e| WorkerError::Metrics(format!("cannot listen on {addr}: {e}")))?;
            Some(tokio::spawn(http::serve(
                listener,
                Arc::clone(&ctx),
                handle,
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    // A version that killed a worker while it loaded is quarantined
    // before this worker loads anything from the registry.
    if let Err(error) = models::quarantine::sweep(&ctx.models, &ctx.pool).await {
        tracing::warn!(%error, "cannot check for abandoned model loads yet");
    }
    // Seed the registry and switch to its current versions before reading
    // jobs (and after the HTTP listener is up: seeding publishes the
    // signatures, which tells clients the worker is there). With Redis down
    // the files are served as they are and the watcher catches up later.
    match tokio::time::timeout(limits.connect * 3, ctx.models.reconcile(&ctx.pool)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "cannot read the model registry yet"),
        Err(_) => tracing::warn!("timed out reading the model registry"),
    }
    let names = ctx.models.names();
    ctx.refresh_streams();
    tracing::info!(consumer = %ctx.consumer, models = ?names, "worker starting");
    metrics::gauge!(WORKER_MODELS_LOADED).set(names.len() as f64);
    for name in &names {
        // Present from the start (at 0), so a dashboard's rate() has a series
        // before the first swap.
        metrics::counter!(WORKER_MODEL_SWAPS, "model" => name.clone()).absolute(0);
    }
    let maintainer = tokio::spawn(maintain(
        Arc::clone(&ctx),
        Maintenance {
            announce_every: Duration::from_secs(cfg.publish_interval_secs),
            trim_every: Duration::from_secs(cfg.trim_interval_secs),
            dead_letter_max_len: cfg.dead_letter_max_len,
            trains: cfg.train_slots > 0,
        },
        stop_rx.clone(),
    ));
    let watcher = {
        let ctx2 = Arc::clone(&ctx);
        tokio::spawn(models::watch(
            Arc::clone(&ctx.models),
            ctx.pool.clone(),
            ctx.topology.clone(),
            ctx.keys.registry_channel(),
            move || {
                ctx2.refresh_streams();
                let ctx3 = Arc::clone(&ctx2);
                tokio::spawn(async move {
                    if let Err(error) = ctx3.ensure_groups().await {
                        tracing::warn!(%error, "cannot create consumer groups of new models");
                    }
                });
            },
            stop_rx.clone(),
        ))
    };
    // Best effort: with Redis down, slots meet NOGROUP or a connection error
    // later and recover on their own.
    if let Err(error) = ctx.ensure_groups().await {
        tracing::warn!(%error, "cannot create consumer groups yet");
    }
    let trainer = Arc::new(retrain::TrainerConfig {
        external: cfg
            .external_trainer
            .as_deref()
            .and_then(retrain::split_command),
        external_timeout: Duration::from_secs(cfg.external_trainer_timeout_secs),
        work_dir: cfg
            .train_dir
            .clone()
            .unwrap_or_else(retrain::default_work_dir),
        max_train: Duration::from_secs(cfg.max_train_secs),
        max_work: cfg.max_train_work,
    });
    tracing::info!(
        train_slots = cfg.train_slots,
        external_trainer = trainer.external.is_some(),
        "training slots starting"
    );
    let slots = slots::start(&ctx, &trainer, cfg.concurrency, cfg.train_slots, &stop_rx);

    shutdown.await;
    let grace = Duration::from_secs(cfg.shutdown_grace_secs);
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: finishing in-flight jobs"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(grace, async {
        for slot in slots {
            let _ = slot.await;
        }
    })
    .await;
    if drained.is_err() {
        // Unfinished jobs stay pending: their leases run out and another
        // worker takes them over. Nothing is lost, only delayed.
        tracing::warn!("grace period over with jobs still running; exiting anyway");
    }
    let _ = maintainer.await;
    let _ = watcher.await;
    if let Some(http) = http
        && let Ok(Err(error)) = http.await
    {
        tracing::error!(%error, "metrics listener failed");
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// The model store's settings from the flags. The validation child is this
/// very binary; its working directory and ONNX Runtime's external-data
/// base are one empty directory of the worker's own.
fn store_settings(
    cfg: &Config,
    lib: &std::path::Path,
    consumer: &str,
) -> Result<models::StoreSettings, WorkerError> {
    let cache_dir = cfg
        .model_cache_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("onnx-queue-model-cache"));
    let exe = std::env::current_exe().map_err(|e| WorkerError::OrtLoad {
        path: lib.to_path_buf(),
        message: format!("cannot find the worker's own executable: {e}"),
    })?;
    let ort_lib = std::fs::canonicalize(lib).unwrap_or_else(|_| lib.to_path_buf());
    let check = modelcheck::Limits {
        max_tensor_bytes: cfg.max_model_tensor_bytes,
        max_nodes: cfg.max_model_nodes,
    };
    Ok(models::StoreSettings {
        intra_threads: cfg.intra_threads,
        consumer: consumer.to_owned(),
        check,
        sandbox: sandbox::SandboxConfig {
            exe,
            ort_lib,
            external_data_dir: cache_dir.join("no-external-data"),
            memory_bytes: cfg.validate_memory_mb.saturating_mul(1 << 20),
            cpu_secs: cfg.validate_cpu_secs,
            timeout: Duration::from_secs(cfg.validate_timeout_secs),
            max_tensor_bytes: check.max_tensor_bytes,
            max_nodes: check.max_nodes,
        },
        cache_dir,
        max_loaded_models: cfg.max_loaded_models,
        max_loaded_bytes: cfg.max_loaded_model_bytes,
        load_stale: Duration::from_millis(cfg.load_stale_ms),
    })
}

/// Intervals of the background upkeep.
struct Maintenance {
    announce_every: Duration,
    trim_every: Duration,
    dead_letter_max_len: usize,
    /// Whether this worker has training slots: it then beats for the
    /// training stream too, so `onnxq_workers_ready{model=".train"}` counts
    /// the workers that can take a retrain job.
    trains: bool,
}

/// Background upkeep, until shutdown: moves due retries back onto their
/// streams (every 100 ms), writes this worker's heartbeat (every
/// [`heartbeat::BEAT_EVERY`]), re-publishes model signatures and consumer
/// groups (a Redis that lost its data gets them back), and trims
/// acknowledged entries. Every step is safe to run in several workers at
/// once. On shutdown the heartbeat is withdrawn.
async fn maintain(ctx: Arc<consumer::Context>, m: Maintenance, mut stop: watch::Receiver<bool>) {
    let mut next_announce = tokio::time::Instant::now();
    let mut next_beat = tokio::time::Instant::now();
    let mut next_trim = tokio::time::Instant::now() + m.trim_every;
    let mut next_sweep = tokio::time::Instant::now();
    let mut served;
    loop {
        let now = tokio::time::Instant::now();
        served = ctx.models.names();
        if m.trains {
            served.push(shared::queue::keys::TRAIN.to_owned());
        }
        if now >= next_beat {
            next_beat = now + heartbeat::BEAT_EVERY;
            if let Err(error) = beat(&ctx, &served).await {
                count_redis_error(redis_op::HEARTBEAT, &error);
                tracing::debug!(%error, "cannot write the heartbeat");
            }
        }
        if now >= next_announce {
            let res = match ctx.ensure_groups().await {
                Ok(()) => ctx
                    .publish_models()
                    .await
                    .inspect_err(|e| count_redis_error(redis_op::PUBLISH, e)),
                Err(e) => {
                    count_redis_error(redis_op::ENSURE_GROUP, &e);
                    Err(e)
                }
            };
            next_announce = match res {
                Ok(()) => now + m.announce_every,
                Err(error) => {
                    tracing::warn!(%error, "cannot publish models; retrying");
                    now + Duration::from_secs(1)
                }
            };
        }
        if now >= next_sweep {
            next_sweep = now + models::quarantine::REFRESH_EVERY;
            // A quarantine bumps the epoch: every watcher reloads.
            if let Err(error) = models::quarantine::sweep(&ctx.models, &ctx.pool).await {
                tracing::debug!(%error, "cannot check for abandoned model loads");
            }
        }
        if let Err(error) = release_due(&ctx).await {
            count_redis_error(redis_op::RELEASE_DUE, &error);
            tracing::debug!(%error, "cannot re-queue due retries");
        }
        if now >= next_trim {
            next_trim = now + m.trim_every;
            if let Err(error) = trim(&ctx, m.dead_letter_max_len).await {
                count_redis_error(redis_op::TRIM, &error);
                tracing::warn!(%error, "cannot trim streams");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => break,
        }
    }
    // Best effort: if it fails, the heartbeat goes stale within
    // `heartbeat::FRESH_WITHIN` anyway.
    let left = async {
        let mut conn = ctx.pool.get();
        heartbeat::leave(&mut conn, &ctx.keys, &ctx.consumer, &served).await
    };
    match tokio::time::timeout(ctx.limits.connect + ctx.limits.response, left).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "cannot withdraw the heartbeat"),
        Err(_) => tracing::debug!("timed out withdrawing the heartbeat"),
    }
}

async fn beat(ctx: &consumer::Context, served: &[String]) -> Result<(), shared::QueueError> {
    let mut conn = ctx.pool.get();
    heartbeat::beat(&mut conn, &ctx.keys, &ctx.consumer, served).await
}

async fn release_due(ctx: &consumer::Context) -> Result<(), shared::QueueError> {
    let mut conn = ctx.pool.get();
    let mut streams = ctx.served_streams();
    streams.extend(ctx.train_streams());
    let moved = shared::queue::consume::release_due(
        &mut conn,
        &ctx.keys,
        &streams,
        shared::time::now_ms(),
        1000,
    )
    .await?;
    if moved > 0 {
        tracing::debug!(moved, "re-queued due retries");
    }
    Ok(())
}

async fn trim(
    ctx: &consumer::Context,
    dead_letter_max_len: usize,
) -> Result<(), shared::QueueError> {
    let mut conn = ctx.pool.get();
    let mut streams = ctx.served_streams();
    streams.extend(ctx.train_streams());
    for stream in &streams {
        let removed = shared::queue::consume::trim_acked(&mut conn, stream).await?;
        if removed > 0 {
            tracing::debug!(stream, removed, "trimmed acknowledged entries");
        }
    }
    shared::queue::consume::trim_dead_letters(&mut conn, &ctx.keys, dead_letter_max_len).await
}
