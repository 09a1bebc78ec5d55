//! The Redis Streams side of the worker: read (or reclaim) a batch of
//! entries, start the jobs, run them on a blocking thread while their leases
//! are renewed, then end every attempt in one pipelined round trip.
//!
//! Each loop ("slot") owns a dedicated connection for its blocking
//! `XREADGROUP`; everything else goes through the shared pool. Several slots
//! overlap one batch's Redis round trips with another batch's inference.
//! Reads are never cancelled mid-flight: an entry the server has delivered is
//! always processed, so shutdown waits at most one block interval plus the
//! batch in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, UNIX_EPOCH};

use deadpool_redis::Pool;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use shared::metric_names::{
    WORKER_BATCH_SIZE, WORKER_END_TO_END, WORKER_JOB_RETRIES, WORKER_JOBS_DEAD_LETTERED,
    WORKER_JOBS_FINISHED, WORKER_JOBS_RECLAIMED, WORKER_QUEUE_WAIT, WORKER_RESULTS_DISCARDED,
    WORKER_RUN, redis_op,
};
use shared::queue::consume::{self, Delivery, Finish, Finished, Outcome, Policy, Renewed, Start};
use shared::queue::{Keys, QueueError};
use shared::redis_conn::{self, Limits};
use shared::telemetry::{self, spans};
use shared::trace::TraceContext;
use tokio::sync::watch;
use tracing::{Span, info_span, trace_span};
use uuid::Uuid;

use arc_swap::ArcSwap;
use shared::job::JobKind;

use crate::error::JobFailure;
use crate::execute::{self, Resolved};
use crate::models::{LoadError, ModelStore};
use crate::watchdog::CancelFlag;

/// What every slot of one worker process shares.
pub struct Context {
    pub keys: Keys,
    /// The served model versions, swapped when the registry changes.
    pub models: Arc<ModelStore>,
    /// The streams of the models this worker serves, and the control stream;
    /// replaced when a model is added.
    pub streams: ArcSwap<Vec<String>>,
    /// Unique per process start, so a restarted worker never inherits the
    /// pending entries of its previous life under the same name.
    pub consumer: String,
    pub redis_url: String,
    pub pool: Pool,
    pub limits: Limits,
    pub read_count: usize,
    /// Rows stacked into one ONNX Runtime run at most; 1 turns stacking off.
    pub max_batch_rows: usize,
    /// After a read that returned fewer than `read_count` entries, how long
    /// to wait for more before running the batch (0: run at once).
    pub max_batch_delay_ms: u64,
    pub block_ms: u64,
    pub lease: Duration,
    pub policy: Policy,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Context {
    /// Creates the consumer group of every served stream, of the control
    /// stream and of the training stream.
    pub async fn ensure_groups(&self) -> Result<(), QueueError> {
        let mut conn = self.pool.get().await?;
        for model in self.models.names() {
            consume::ensure_group(&mut conn, &self.keys, &model).await?;
        }
        consume::ensure_group(&mut conn, &self.keys, shared::queue::keys::CONTROL).await?;
        consume::ensure_group(&mut conn, &self.keys, shared::queue::keys::TRAIN).await
    }

    /// Reads the streams of the models served now (after a model was added).
    pub fn refresh_streams(&self) {
        let mut streams: Vec<String> = self
            .models
            .names()
            .iter()
            .map(|m| self.keys.stream(m))
            .collect();
        streams.push(self.keys.stream(shared::queue::keys::CONTROL));
        self.streams.store(Arc::new(streams));
    }

    /// Publishes every served model's signature.
    pub async fn publish_models(&self) -> Result<(), QueueError> {
        let mut conn = self.pool.get().await?;
        for model in self.models.snapshot().values() {
            let mut info = model.info().clone();
            // Promotion writes the new current version's signature; a worker
            // that has not swapped yet must not put its old one back.
            if let Ok(loaded) = info.version.parse::<u32>()
                && shared::queue::registry::current(&mut conn, &self.keys, &info.name).await?
                    != Some(loaded)
            {
                continue;
            }
            info.updated_at_ms = shared::time::now_ms();
            consume::publish_model(&mut conn, &self.keys, &info).await?;
        }
        Ok(())
    }

    /// The back-off before retry number `attempt` (1-based attempt that
    /// just failed): exponential, capped, with "equal jitter" (half fixed,
    /// half random) so jobs failing together do not retry together.
    fn retry_delay(&self, attempt: u32) -> Duration {
        let exp = self
            .retry_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.retry_max);
        let half = exp / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
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
pub(crate) struct Backoff(pub(crate) u32);

impl Backoff {
    pub(crate) async fn wait(&mut self) {
        let ms = 100u64.saturating_mul(1 << self.0.min(6)).min(5_000);
        self.0 += 1;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// One read→run→write loop, until `shutdown` turns true. Slot 0 also
/// reclaims expired leases, every half lease.
pub async fn run_slot(ctx: Arc<Context>, slot: usize, mut shutdown: watch::Receiver<bool>) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Backoff(0);
    let mut last_reclaim = Instant::now();
    // The server blocks up to block_ms; the client must wait longer than that.
    let read_limits = Limits {
        response: ctx.limits.response + Duration::from_millis(ctx.block_ms),
        ..ctx.limits
    };
    while !*shutdown.borrow_and_update() {
        if slot == 0 && last_reclaim.elapsed() >= ctx.lease / 2 {
            last_reclaim = Instant::now();
            reclaim_expired(&ctx).await;
        }
        if conn.is_none() {
            match redis_conn::dedicated(&ctx.redis_url, read_limits).await {
                Ok(c) => conn = Some(c),
                Err(error) => {
                    metrics::counter!(shared::metric_names::REDIS_ERRORS, "op" => redis_op::CONNECT)
                        .increment(1);
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
        // Slot 0 must come back in time to reclaim; others may block longer.
        let block_ms = if slot == 0 {
            ctx.block_ms.min(duration_ms(ctx.lease / 2).max(1))
        } else {
            ctx.block_ms
        };
        let streams = ctx.streams.load_full();
        let read = consume::read_new(c, &streams, &ctx.consumer, ctx.read_count, block_ms).await;
        let read = match read {
            Ok(mut batch)
                if ctx.max_batch_delay_ms > 0
                    && !batch.is_empty()
                    && batch.len() < ctx.read_count =>
            {
                // Triton's max_queue_delay: give stragglers a moment to join.
                let more = consume::read_new(
                    c,
                    &streams,
                    &ctx.consumer,
                    ctx.read_count - batch.len(),
                    ctx.max_batch_delay_ms,
                )
                .await;
                match more {
                    Ok(more) => batch.extend(more),
                    Err(error) => {
                        count_redis_error(redis_op::READ, &error);
                        // What was already read must still run: keep it.
                        tracing::warn!(slot, %error, "second read of a batch failed");
                        conn = None;
                    }
                }
                Ok(batch)
            }
            other => other,
        };
        match read {
            Ok(batch) => {
                backoff = Backoff(0);
                if !batch.is_empty() {
                    process(&ctx, batch).await;
                }
            }
            Err(QueueError::Redis(e)) if e.code() == Some("NOGROUP") => {
                metrics::counter!(shared::metric_names::REDIS_ERRORS, "op" => redis_op::READ)
                    .increment(1);
                // The stream or group vanished (e.g. a Redis without
                // persistence restarted): recreate and read again.
                tracing::warn!(slot, "consumer group missing; recreating");
                if let Err(error) = ctx.ensure_groups().await {
                    count_redis_error(redis_op::ENSURE_GROUP, &error);
                    tracing::warn!(slot, %error, "cannot recreate consumer groups");
                    backoff.wait().await;
                }
            }
            Err(error) => {
                count_redis_error(redis_op::READ, &error);
                tracing::warn!(slot, %error, "reading the job streams failed; reconnecting");
                conn = None;
                backoff.wait().await;
            }
        }
    }
    tracing::debug!(slot, "slot stopped");
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Takes over the entries of every served stream whose lease expired and
/// runs them like new deliveries; their start takes a new attempt.
async fn reclaim_expired(ctx: &Context) {
    for stream in ctx.streams.load().iter() {
        let claimed = async {
            let mut conn = ctx.pool.get().await?;
            consume::reclaim(
                &mut conn,
                stream,
                &ctx.consumer,
                duration_ms(ctx.lease),
                ctx.read_count,
            )
            .await
        }
        .await;
        match claimed {
            Ok(batch) if !batch.is_empty() => {
                tracing::warn!(
                    stream,
                    jobs = batch.len(),
                    "took over jobs whose lease expired"
                );
                let model = ctx.keys.model_of_stream(stream).unwrap_or("").to_owned();
                metrics::counter!(WORKER_JOBS_RECLAIMED, "model" => model)
                    .increment(batch.len() as u64);
                process(ctx, batch).await;
            }
            Ok(_) => {}
            Err(error) => {
                count_redis_error(redis_op::RECLAIM, &error);
                tracing::warn!(stream, %error, "reclaiming expired leases failed");
            }
        }
    }
}

/// A job that will run: its delivery and the attempt it runs as.
pub(crate) struct Runnable {
    pub(crate) job_id: Uuid,
    pub(crate) delivery: Delivery,
    pub(crate) attempt: u32,
    /// Every line about the job is logged inside it; it ends once the
    /// attempt's result is written.
    pub(crate) span: Span,
    /// Set when the lease renewal finds that a client canceled the job;
    /// the run or the training stops at its next check.
    pub(crate) cancel: CancelFlag,
}

/// The span of one delivered job, with `job_id`, `model`, `attempt` (once
/// started) and, from the `traceparent` the API stored, `trace_id` and
/// `parent_span_id` (the API's submit span). With OTLP export it continues
/// that trace, and the job's wait in the queue is exported as a span ending
/// `started_ms`.
fn job_span(
    delivery: &Delivery,
    job_id: Uuid,
    model: &str,
    attempt: Option<u32>,
    started_ms: i64,
) -> Span {
    let job = delivery.job.as_ref().ok();
    let parent = job
        .and_then(|j| j.traceparent.as_deref())
        .and_then(TraceContext::parse);
    let span = info_span!(
        spans::JOB,
        job_id = %job_id,
        model,
        attempt,
        trace_id = parent.as_ref().map(|p| tracing::field::display(p.trace_id)),
        parent_span_id = parent.as_ref().map(|p| tracing::field::display(p.span_id)),
    );
    if let Some(parent) = &parent {
        telemetry::continue_trace(&span, parent);
        if let (Some(job), Some(attempt)) = (job, attempt)
            && telemetry::otlp_enabled()
        {
            let at = |ms: i64| UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            telemetry::record_finished_span(
                spans::QUEUE_WAIT,
                parent,
                at(job.submitted_at_ms),
                at(started_ms),
                &[
                    ("job_id", &job_id),
                    ("model", &model),
                    ("attempt", &attempt),
                ],
            );
        }
    }
    span
}

/// Child spans of each job's span, only for export: without it they would
/// be disabled spans anyway, and skipping them saves a vector per batch.
fn child_spans<'a>(name: &'static str, parents: impl Iterator<Item = &'a Span>) -> Vec<Span> {
    if !telemetry::otlp_enabled() {
        return Vec::new();
    }
    parents
        .map(|parent| match name {
            spans::INFERENCE => trace_span!(parent: parent, spans::INFERENCE),
            _ => trace_span!(parent: parent, spans::WRITE_RESULT),
        })
        .collect()
}

async fn process(ctx: &Context, batch: Vec<Delivery>) {
    metrics::histogram!(WORKER_BATCH_SIZE).record(batch.len() as f64);
    let started = Instant::now();
    let runnable = start_all(ctx, batch).await;
    if runnable.is_empty() {
        return;
    }

    // Renew the leases while the batch runs, so a long job is not taken over
    // from a live worker; stop as soon as the batch is done.
    let renewer = tokio::spawn(renew_leases(ctx, &runnable));
    // Control jobs need Redis and run beside the batch's inference.
    let (validations, runnable): (Vec<_>, Vec<_>) = runnable.into_iter().partition(|r| {
        r.delivery
            .job
            .as_ref()
            .is_ok_and(|j| j.kind == JobKind::Validate)
    });
    let resolved = resolve_all(ctx, &runnable).await;
    let max_rows = ctx.max_batch_rows;
    let inference = tokio::task::spawn_blocking(move || execute_all(resolved, runnable, max_rows));
    let mut validated = Vec::with_capacity(validations.len());
    for r in validations {
        let outcome = match &r.delivery.job {
            Ok(job) => {
                let _entered = r.span.enter();
                crate::models::validate_job(&ctx.models, &ctx.pool, job).await
            }
            Err(e) => (String::new(), Err(JobFailure::InvalidPayload(e.clone()))),
        };
        validated.push((r, outcome));
    }
    let executed = match inference.await {
        Ok(mut e) => {
            e.extend(validated);
            e
        }
        Err(error) => {
            renewer.abort();
            tracing::error!(%error, "inference thread panicked; jobs stay pending until reclaimed");
            return;
        }
    };

    finish_all(ctx, &executed, started).await;
    renewer.abort();
}

/// Starts a read's jobs (one script call per stream) and returns those to
/// run, each with its attempt and span; entries without a job id are
/// acknowledged and dropped, and jobs that must not run (canceled, past
/// their deadline, out of attempts) are reported here.
pub(crate) async fn start_all(ctx: &Context, batch: Vec<Delivery>) -> Vec<Runnable> {
    // Entries without a job id cannot have come from the API: nothing to
    // report them to, so acknowledge and drop them loudly.
    let (with_id, orphans): (Vec<_>, Vec<_>) = batch.into_iter().partition(|d| d.job_id.is_some());
    ack_orphans(ctx, &orphans).await;
    if with_id.is_empty() {
        return Vec::new();
    }

    let refs: Vec<&Delivery> = with_id.iter().collect();
    let starts = match with_retry(redis_op::START, || async {
        let mut conn = ctx.pool.get().await?;
        let now = shared::time::now_ms();
        consume::start(&mut conn, &ctx.keys, &ctx.consumer, &ctx.policy, &refs, now).await
    })
    .await
    {
        Ok(s) => s,
        Err(error) => {
            // Not started, so not lost: the entries stay pending under this
            // consumer until their lease runs out and they are reclaimed.
            tracing::error!(%error, jobs = refs.len(), "cannot start jobs; leaving them pending");
            return Vec::new();
        }
    };

    let mut runnable = Vec::with_capacity(with_id.len());
    let started_ms = shared::time::now_ms();
    for (delivery, start) in with_id.into_iter().zip(starts) {
        let job_id = delivery.job_id.unwrap_or_default();
        let model = delivery.model(&ctx.keys).to_owned();
        let attempt = match start {
            Start::Run(attempt) => Some(attempt),
            _ => None,
        };
        // Logs name the job's model; control and training jobs travel on
        // streams of their own, which metrics keep as their label.
        let job_model = delivery.job.as_ref().map_or(model.as_str(), |j| &j.model);
        let span = job_span(&delivery, job_id, job_model, attempt, started_ms);
        let _entered = span.enter();
        match start {
            Start::Run(attempt) => runnable.push(Runnable {
                job_id,
                delivery,
                attempt,
                span: span.clone(),
                cancel: CancelFlag::default(),
            }),
            Start::DeadlineExceeded => {
                tracing::warn!(%job_id, model, "job failed: deadline exceeded before it started");
                count_finished(&delivery, model, "expired", "deadline_exceeded");
                record_end_to_end(&delivery, &ctx.keys);
            }
            Start::Exhausted => {
                tracing::error!(%job_id, model, "job dead-lettered: attempts exhausted by lost workers");
                metrics::counter!(WORKER_JOBS_DEAD_LETTERED, "model" => model.clone(), "reason" => "attempts_exhausted").increment(1);
                count_finished(&delivery, model, "failed", "attempts_exhausted");
                record_end_to_end(&delivery, &ctx.keys);
            }
            Start::NotRunnable => {
                // Only a job canceled while queued leaves an unacknowledged
                // entry behind a terminal record: every other end
                // acknowledges in the script that makes the job terminal.
                tracing::info!(%job_id, model, "not running job: canceled");
                count_finished(&delivery, model, "canceled", "none");
            }
            Start::Gone => {
                tracing::info!(%job_id, model, ?start, "not running job");
            }
        }
    }
    let now = shared::time::now_ms();
    for r in &runnable {
        if let Ok(job) = &r.delivery.job {
            let waited = (now - job.submitted_at_ms).max(0) as f64 / 1e3;
            metrics::histogram!(WORKER_QUEUE_WAIT, "model" => job.model.clone()).record(waited);
        }
    }
    runnable
}

/// Writes the ends of attempts (one script call per stream) and reports
/// each in its job's span. What cannot be written stays pending and is
/// reclaimed once its lease expires.
pub(crate) async fn finish_all(
    ctx: &Context,
    executed: &[(Runnable, Attempted)],
    started: Instant,
) {
    let finishes: Vec<Finish<'_>> = executed
        .iter()
        .map(|(r, (version, result))| Finish {
            delivery: &r.delivery,
            job_id: r.job_id,
            attempt: r.attempt,
            model_version: version,
            outcome: outcome_of(ctx, r.attempt, result),
        })
        .collect();
    let writing = child_spans(spans::WRITE_RESULT, executed.iter().map(|(r, _)| &r.span));
    let written = with_retry(redis_op::FINISH, || async {
        let mut conn = ctx.pool.get().await?;
        let now = shared::time::now_ms();
        consume::finish(&mut conn, &ctx.keys, &ctx.policy, &finishes, now).await
    })
    .await;
    drop(writing);
    match written {
        Ok(results) => {
            let run_secs = started.elapsed().as_secs_f64();
            for ((f, finished), (r, _)) in finishes.iter().zip(results).zip(executed) {
                let _entered = r.span.enter();
                report(ctx, f, finished, run_secs);
            }
        }
        Err(error) => {
            tracing::error!(%error, jobs = finishes.len(), "cannot write results; jobs stay pending until reclaimed");
        }
    }
}

/// Decides how an attempt ends. The failure's type decides whether it is
/// retried; the attempt count decides whether a retry is still allowed.
fn outcome_of(ctx: &Context, attempt: u32, result: &Result<String, JobFailure>) -> Outcome {
    match result {
        Ok(result_json) => Outcome::Succeeded {
            result_json: result_json.clone(),
        },
        Err(JobFailure::Canceled) => Outcome::Canceled,
        Err(f) if !f.is_transient() => Outcome::Failed(f.to_job_error()),
        Err(f) if attempt >= ctx.policy.max_attempts => Outcome::DeadLetter(f.to_job_error()),
        Err(f) => Outcome::Retry {
            error: f.to_job_error(),
            retry_at_ms: shared::time::now_ms()
                + i64::try_from(ctx.retry_delay(attempt).as_millis()).unwrap_or(i64::MAX / 2),
        },
    }
}

/// Logs and counts an attempt's end. Counting only what was written keeps
/// metrics exact: a discarded late result is never counted twice.
fn report(ctx: &Context, f: &Finish<'_>, finished: Finished, run_secs: f64) {
    let model = f.delivery.model(&ctx.keys).to_owned();
    match finished {
        Finished::Written => {
            let status = f.outcome.status();
            metrics::histogram!(WORKER_RUN, "model" => model.clone()).record(run_secs);
            match &f.outcome {
                Outcome::Retry { error, retry_at_ms } => {
                    tracing::warn!(code = %error.code, error = %error.message, retry_in_ms = retry_at_ms - shared::time::now_ms(), "job will be retried");
                    metrics::counter!(WORKER_JOB_RETRIES, "model" => model, "reason" => error.code.clone()).increment(1);
                    return;
                }
                Outcome::DeadLetter(error) => {
                    tracing::error!(status, code = %error.code, error = %error.message, "job finished: dead-lettered after its last attempt");
                    metrics::counter!(WORKER_JOBS_DEAD_LETTERED, "model" => model.clone(), "reason" => error.code.clone())
                        .increment(1);
                    count_finished(f.delivery, model, status, error.code.clone());
                }
                Outcome::Failed(error) => {
                    tracing::warn!(status, code = %error.code, "job finished");
                    count_finished(f.delivery, model, status, error.code.clone());
                }
                Outcome::Succeeded { .. } => {
                    tracing::info!(status, "job finished");
                    count_finished(f.delivery, model, status, "none");
                }
                Outcome::Canceled => {
                    tracing::info!(status, "job finished: canceled while running");
                    count_finished(f.delivery, model, status, "client");
                }
            }
            record_end_to_end(f.delivery, &ctx.keys);
        }
        Finished::Stale => {
            tracing::warn!("result discarded: another attempt owns the job");
            metrics::counter!(WORKER_RESULTS_DISCARDED, "model" => model).increment(1);
        }
        Finished::Gone => tracing::warn!("job record vanished before its result"),
    }
}

/// Keeps the leases of running jobs alive until aborted, and raises a job's
/// cancel flag when the renewal finds that a client canceled it. Spawn the
/// returned future; abort it once the jobs' ends are written.
pub(crate) fn renew_leases(
    ctx: &Context,
    running: &[Runnable],
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let pool = ctx.pool.clone();
    let keys = ctx.keys.clone();
    let consumer = ctx.consumer.clone();
    let every = ctx.lease / 3;
    let jobs: Vec<(String, String, Uuid, CancelFlag)> = running
        .iter()
        .map(|r| {
            (
                r.delivery.stream.clone(),
                r.delivery.entry_id.clone(),
                r.job_id,
                Arc::clone(&r.cancel),
            )
        })
        .collect();
    async move {
        let leases: Vec<consume::Lease<'_>> = jobs
            .iter()
            .map(|(stream, entry_id, job_id, _)| consume::Lease {
                stream,
                entry_id,
                job_id: *job_id,
            })
            .collect();
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.tick().await; // the first tick is immediate; the lease is fresh
        loop {
            tick.tick().await;
            let res = async {
                let mut conn = pool.get().await?;
                consume::renew(&mut conn, &keys, &consumer, &leases).await
            }
            .await;
            match res {
                Ok(renewed) => {
                    let lost = renewed.iter().filter(|r| **r == Renewed::Lost).count();
                    if lost > 0 {
                        tracing::warn!(
                            lost,
                            "lost the lease of running jobs; their results will be discarded"
                        );
                    }
                    for (r, (.., flag)) in renewed.iter().zip(&jobs) {
                        if *r == Renewed::CancelRequested {
                            flag.store(true, Ordering::Release);
                        }
                    }
                }
                Err(error) => {
                    count_redis_error(redis_op::RENEW, &error);
                    tracing::warn!(%error, "renewing leases failed");
                }
            }
        }
    }
}

/// The model version an attempt ran on, and its result JSON or failure.
pub(crate) type Attempted = (String, Result<String, JobFailure>);

/// Runs a read's jobs on the current (blocking) thread, stacked per model
/// where possible ([`execute::run_many`]), then logs and times each job in its
/// own span. Returns each job with the model version it ran on and its result
/// JSON or failure.
fn execute_all(
    resolved: Vec<Resolved>,
    runnable: Vec<Runnable>,
    max_rows: usize,
) -> Vec<(Runnable, Attempted)> {
    let started = Instant::now();
    let decoded: Vec<&shared::queue::wire::JobEnvelope> = runnable
        .iter()
        .filter_map(|r| r.delivery.job.as_ref().ok())
        .collect();
    let cancels: Vec<CancelFlag> = runnable
        .iter()
        .filter(|r| r.delivery.job.is_ok())
        .map(|r| Arc::clone(&r.cancel))
        .collect();
    let inference = child_spans(spans::INFERENCE, runnable.iter().map(|r| &r.span));
    let mut ran = execute::run_many(&resolved, &decoded, &cancels, max_rows).into_iter();
    let mut versions = resolved.iter().map(|r| match r {
        Ok(m) => m.info().version.clone(),
        Err(_) => String::new(),
    });
    drop(inference);
    let elapsed = started.elapsed().as_secs_f64();
    let results: Vec<_> = runnable
        .iter()
        .map(|r| match &r.delivery.job {
            Ok(_) => {
                let version = versions.next().unwrap_or_default();
                ran.next()
                    .map(|x| (x.result, x.batch_rows, version))
                    .unwrap_or_else(|| {
                        (
                            Err(JobFailure::Inference("job was not run".to_owned())),
                            0,
                            String::new(),
                        )
                    })
            }
            Err(e) => (Err(JobFailure::InvalidPayload(e.clone())), 0, String::new()),
        })
        .collect();
    runnable
        .into_iter()
        .zip(results)
        .map(|(r, (result, batch_rows, version))| {
            let entered = r.span.enter();
            let elapsed_ms = elapsed * 1e3;
            let outcome = match result {
                Ok(s) => {
                    tracing::debug!(elapsed_ms, batch_rows, "inference done");
                    (s.model_version, Ok(s.result_json))
                }
                Err(failure) => {
                    tracing::warn!(code = failure.code(), error = %failure, elapsed_ms, transient = failure.is_transient(), "attempt failed");
                    (version, Err(failure))
                }
            };
            drop(entered);
            (r, outcome)
        })
        .collect()
}

/// The version each decoded job runs on, from one snapshot of the served
/// set (so a swap mid-batch cannot split it), or its pinned version.
async fn resolve_all(ctx: &Context, runnable: &[Runnable]) -> Vec<Resolved> {
    let snapshot = ctx.models.snapshot();
    let mut out = Vec::with_capacity(runnable.len());
    for job in runnable.iter().filter_map(|r| r.delivery.job.as_ref().ok()) {
        let resolved = ctx
            .models
            .resolve(&ctx.pool, &job.model, job.model_version, &snapshot)
            .await;
        out.push(match resolved {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(JobFailure::ModelUnavailable(job.model.clone())),
            // Redis trouble is worth a retry; a bad pin is not.
            Err(LoadError::Queue(e)) => Err(JobFailure::ModelUnavailable(format!(
                "{} (registry unavailable: {e})",
                job.model
            ))),
            Err(e) => Err(JobFailure::VersionUnavailable(format!(
                "version {} of model {}: {e}",
                job.model_version.unwrap_or_default(),
                job.model
            ))),
        });
    }
    out
}

/// Acknowledges entries without a job id.
pub(crate) async fn ack_orphans(ctx: &Context, orphans: &[Delivery]) {
    for d in orphans {
        tracing::error!(stream = %d.stream, entry = %d.entry_id, "dropping stream entry without a job id");
        let res = async {
            let mut conn = ctx.pool.get().await?;
            consume::ack(&mut conn, &d.stream, &[d.entry_id.as_str()]).await
        }
        .await;
        if let Err(error) = res {
            count_redis_error(redis_op::ACK, &error);
            tracing::warn!(%error, "ack failed; the entry will be delivered again");
        }
    }
}

/// Retries a Redis step while Redis is unreachable, a few times with
/// back-off, so a blip does not strand a finished batch. Both steps it wraps
/// are safe to repeat: `start` at worst counts one extra attempt, `finish`
/// is a compare-and-set.
pub(crate) async fn with_retry<T, F, Fut>(op: &'static str, mut step: F) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let mut backoff = Backoff(0);
    loop {
        match step().await {
            Err(e) if e.is_unavailable() && backoff.0 < 6 => {
                count_redis_error(op, &e);
                tracing::warn!(error = %e, "redis unavailable; retrying");
                backoff.wait().await;
            }
            Err(e) => {
                count_redis_error(op, &e);
                return Err(e);
            }
            ok => return ok,
        }
    }
}

/// Counts a failed Redis call of kind `op` (one of [`redis_op`]); errors that
/// are not Redis's own (corrupt data, encoding) are not counted. It lives
/// here, not in [`crate::http`], which serves what is counted and reads this
/// module's [`Context`].
pub fn count_redis_error(op: &'static str, e: &QueueError) {
    if matches!(e, QueueError::Redis(_) | QueueError::Pool(_)) {
        metrics::counter!(shared::metric_names::REDIS_ERRORS, "op" => op).increment(1);
    }
}

/// Counts a job this worker brought to an end (once per job).
fn count_finished(
    d: &Delivery,
    model: String,
    status: &'static str,
    reason: impl Into<metrics::SharedString>,
) {
    let kind = d.job.as_ref().map_or("unknown", |j| j.kind.as_str());
    metrics::counter!(WORKER_JOBS_FINISHED, "model" => model, "kind" => kind, "status" => status, "reason" => reason.into())
        .increment(1);
}

/// Records submission → final outcome for a job that just ended.
fn record_end_to_end(d: &Delivery, keys: &Keys) {
    if let Ok(job) = &d.job {
        let secs = (shared::time::now_ms() - job.submitted_at_ms).max(0) as f64 / 1e3;
        metrics::histogram!(WORKER_END_TO_END, "model" => d.model(keys).to_owned()).record(secs);
    }
}
