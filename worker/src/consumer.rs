//! The Redis Streams side of the worker: read a batch of entries, mark the
//! jobs running, run them on a blocking thread, write results and acks.
//!
//! Each loop ("slot") owns a dedicated connection for its blocking
//! `XREADGROUP`; everything else goes through the shared pool. Several slots
//! overlap one batch's Redis round trips with another batch's inference.
//! Reads are never cancelled mid-flight: an entry the server has delivered is
//! always processed, so shutdown waits at most one block interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::Pool;
use redis::aio::MultiplexedConnection;
use shared::queue::consume::{self as ops, Delivery, Finish, Finished, Outcome, Start};
use shared::queue::{Keys, QueueError};
use shared::redis_conn::{self, Limits};
use tokio::sync::watch;
use tracing::{Instrument, info_span};
use uuid::Uuid;

use crate::backend::Models;
use crate::error::JobFailure;
use crate::execute;

/// What every slot of one worker process shares.
pub struct Context {
    pub keys: Keys,
    pub models: Arc<Models>,
    /// The streams of the models this worker serves.
    pub streams: Vec<String>,
    /// Unique per process start, so a restarted worker never inherits the
    /// pending entries of its previous life under the same name.
    pub consumer: String,
    pub redis_url: String,
    pub pool: Pool,
    pub limits: Limits,
    pub read_count: usize,
    pub block_ms: u64,
    pub result_ttl_secs: u64,
}

impl Context {
    /// Creates the consumer group of every served stream.
    pub async fn ensure_groups(&self) -> Result<(), QueueError> {
        let mut conn = self.pool.get().await?;
        for model in self.models.keys() {
            ops::ensure_group(&mut conn, &self.keys, model).await?;
        }
        Ok(())
    }

    /// Publishes every served model's signature.
    pub async fn publish_models(&self) -> Result<(), QueueError> {
        let mut conn = self.pool.get().await?;
        for model in self.models.values() {
            let mut info = model.info().clone();
            info.updated_at_ms = shared::time::now_ms();
            ops::publish_model(&mut conn, &self.keys, &info).await?;
        }
        Ok(())
    }
}

/// A unique consumer name: host, pid and a random suffix.
pub fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let suffix = Uuid::now_v7().simple().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &suffix[suffix.len() - 8..]
    )
}

/// Exponential back-off for a loop that lost Redis: 100 ms doubling to 5 s.
struct Backoff(u32);

impl Backoff {
    async fn wait(&mut self) {
        let ms = 100u64.saturating_mul(1 << self.0.min(6)).min(5_000);
        self.0 += 1;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// One read→run→write loop, until `shutdown` turns true.
pub async fn run_slot(ctx: Arc<Context>, slot: usize, mut shutdown: watch::Receiver<bool>) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Backoff(0);
    // The server blocks up to block_ms; the client must wait longer than that.
    let read_limits = Limits {
        response: ctx.limits.response + Duration::from_millis(ctx.block_ms),
        ..ctx.limits
    };
    while !*shutdown.borrow_and_update() {
        if conn.is_none() {
            match redis_conn::dedicated(&ctx.redis_url, read_limits).await {
                Ok(c) => conn = Some(c),
                Err(error) => {
                    tracing::warn!(slot, %error, "cannot connect to redis; backing off");
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let read =
            ops::read_new(c, &ctx.streams, &ctx.consumer, ctx.read_count, ctx.block_ms).await;
        match read {
            Ok(batch) => {
                backoff = Backoff(0);
                if !batch.is_empty() {
                    process(&ctx, batch).await;
                }
            }
            Err(QueueError::Redis(e)) if e.code() == Some("NOGROUP") => {
                // The stream or group vanished (e.g. a Redis without
                // persistence restarted): recreate and read again.
                tracing::warn!(slot, "consumer group missing; recreating");
                if let Err(error) = ctx.ensure_groups().await {
                    tracing::warn!(slot, %error, "cannot recreate consumer groups");
                    backoff.wait().await;
                }
            }
            Err(error) => {
                tracing::warn!(slot, %error, "reading the job streams failed; reconnecting");
                conn = None;
                backoff.wait().await;
            }
        }
    }
    tracing::debug!(slot, "slot stopped");
}

/// A job that will run: its delivery and the attempt it runs as.
struct Runnable {
    job_id: Uuid,
    delivery: Delivery,
    attempt: u32,
}

async fn process(ctx: &Context, batch: Vec<Delivery>) {
    // Entries without a job id cannot have come from the API: nothing to
    // report them to, so acknowledge and drop them loudly.
    let (with_id, orphans): (Vec<_>, Vec<_>) = batch.into_iter().partition(|d| d.job_id.is_some());
    for d in &orphans {
        tracing::error!(stream = %d.stream, entry = %d.entry_id, "dropping stream entry without a job id");
    }
    ack_all(ctx, &orphans).await;

    let ids: Vec<Uuid> = with_id.iter().filter_map(|d| d.job_id).collect();
    let starts = match with_retry(|| async {
        let mut conn = ctx.pool.get().await?;
        ops::start(
            &mut conn,
            &ctx.keys,
            &ctx.consumer,
            &ids,
            shared::time::now_ms(),
        )
        .await
    })
    .await
    {
        Ok(s) => s,
        Err(error) => {
            // Not started, so not lost: the entries stay pending under this
            // consumer until they are claimed again.
            tracing::error!(%error, jobs = ids.len(), "cannot mark jobs running; leaving them pending");
            return;
        }
    };

    let mut runnable = Vec::with_capacity(with_id.len());
    let mut skipped = Vec::new();
    for ((delivery, job_id), start) in with_id.into_iter().zip(ids).zip(starts) {
        match start {
            Start::Run(attempt) => runnable.push(Runnable {
                job_id,
                delivery,
                attempt,
            }),
            Start::Gone | Start::NotRunnable => {
                tracing::info!(%job_id, ?start, "not running job");
                skipped.push(delivery);
            }
        }
    }
    ack_all(ctx, &skipped).await;
    if runnable.is_empty() {
        return;
    }

    let models = Arc::clone(&ctx.models);
    let executed = tokio::task::spawn_blocking(move || {
        runnable
            .into_iter()
            .map(|r| {
                let outcome = execute_one(&models, &r);
                (r, outcome)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let executed = match executed {
        Ok(e) => e,
        Err(error) => {
            tracing::error!(%error, "inference thread panicked; jobs stay pending");
            return;
        }
    };

    let finishes: Vec<Finish<'_>> = executed
        .iter()
        .map(|(r, (version, outcome))| Finish {
            job_id: r.job_id,
            stream: &r.delivery.stream,
            entry_id: &r.delivery.entry_id,
            attempt: r.attempt,
            model_version: version,
            outcome: outcome.clone(),
            ttl_secs: ctx.result_ttl_secs,
        })
        .collect();
    let written = with_retry(|| async {
        let mut conn = ctx.pool.get().await?;
        ops::finish(&mut conn, &ctx.keys, &finishes, shared::time::now_ms()).await
    })
    .await;
    match written {
        Ok(results) => {
            for ((r, (_, outcome)), finished) in executed.iter().zip(results) {
                let status = match outcome {
                    Outcome::Succeeded { .. } => "succeeded",
                    Outcome::Failed(_) => "failed",
                };
                let _span = info_span!("job", job_id = %r.job_id, attempt = r.attempt).entered();
                match finished {
                    Finished::Written => tracing::info!(status, "job finished"),
                    Finished::Stale => {
                        tracing::warn!("result discarded: another attempt owns the job")
                    }
                    Finished::Gone => tracing::warn!("job record vanished before its result"),
                }
            }
        }
        Err(error) => {
            tracing::error!(%error, jobs = finishes.len(), "cannot write results; jobs stay pending");
        }
    }
}

/// Runs one job on the current (blocking) thread, inside its span.
fn execute_one(models: &Models, r: &Runnable) -> (String, Outcome) {
    let model = r
        .delivery
        .job
        .as_ref()
        .map(|j| j.model.as_str())
        .unwrap_or("?");
    let span = info_span!("job", job_id = %r.job_id, model, attempt = r.attempt);
    let _entered = span.enter();
    let started = Instant::now();
    let result = match &r.delivery.job {
        Ok(job) => execute::run(models, job),
        Err(e) => Err(JobFailure::InvalidPayload(e.clone())),
    };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(s) => {
            tracing::debug!(elapsed_ms, "inference done");
            (
                s.model_version,
                Outcome::Succeeded {
                    result_json: s.result_json,
                },
            )
        }
        Err(failure) => {
            tracing::warn!(code = failure.code(), error = %failure, elapsed_ms, "job failed");
            let version = r
                .delivery
                .job
                .as_ref()
                .ok()
                .and_then(|j| models.get(&j.model))
                .map(|m| m.info().version.clone())
                .unwrap_or_default();
            (version, Outcome::Failed(failure.to_job_error()))
        }
    }
}

/// Acknowledges deliveries that will not run, grouped per stream.
async fn ack_all(ctx: &Context, deliveries: &[Delivery]) {
    let mut streams: Vec<&str> = deliveries.iter().map(|d| d.stream.as_str()).collect();
    streams.sort_unstable();
    streams.dedup();
    for stream in streams {
        let ids: Vec<&str> = deliveries
            .iter()
            .filter(|d| d.stream == stream)
            .map(|d| d.entry_id.as_str())
            .collect();
        let res = async {
            let mut conn = ctx.pool.get().await?;
            ops::ack(&mut conn, stream, &ids).await
        }
        .instrument(info_span!("ack", stream))
        .await;
        if let Err(error) = res {
            tracing::warn!(stream, %error, "ack failed; entries will be delivered again");
        }
    }
}

/// Retries an idempotent Redis step while Redis is unreachable, a few times
/// with back-off, so a blip does not strand a finished batch.
async fn with_retry<T, F, Fut>(mut step: F) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let mut backoff = Backoff(0);
    loop {
        match step().await {
            Err(e) if e.is_unavailable() && backoff.0 < 6 => {
                tracing::warn!(error = %e, "redis unavailable; retrying");
                backoff.wait().await;
            }
            other => return other,
        }
    }
}
