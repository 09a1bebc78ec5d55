//! What a training slot does with the `retrain` jobs it reads off the
//! training stream (`{ns}:stream:.train`), one job per slot at a time.
//!
//! A training slot runs the read loop every slot runs
//! ([`crate::consumer::read`]) with `COUNT 1` and waits for its job before
//! reading again, so a worker never holds a training job it cannot start,
//! and `--train-slots 0` keeps a worker out of training altogether (see
//! [`crate::slots`]). Each job goes through the same start and finish
//! scripts as predictions ([`crate::consumer::attempt`]): its lease is renewed while
//! it trains, a worker that dies mid-training loses the job to another
//! worker once the lease expires, and the finish is a compare-and-set on the
//! attempt. While it runs, the job's progress is written to its record at
//! most every [`PROGRESS_EVERY`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shared::metric_names::redis_op;
use shared::queue::Keys;
use shared::queue::consume;
use shared::queue::wire::{JobEnvelope, JobSpec};
use shared::redis_conn::Pool;
use shared::redis_errors::count_redis_error;
use shared::retrain::Progress;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use crate::consumer::attempt::{finish_all, renew_leases, start_all};
use crate::consumer::read::Batches;
use crate::consumer::{Context, Runnable};
use crate::error::JobFailure;
use crate::retrain::{self, Reporter, Stopped, TrainerConfig};

/// Shortest interval between two progress writes of one job.
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The training slots' [`Batches`]: each started retrain job runs in turn.
/// A job running at shutdown is stopped and abandoned (see
/// [`crate::retrain`]).
pub(crate) struct Training {
    pub config: Arc<TrainerConfig>,
    pub shutdown: watch::Receiver<bool>,
}

impl Batches for Training {
    async fn run(&self, ctx: &Context, batch: Vec<consume::Delivery>) {
        for r in start_all(ctx, batch).await {
            run_job(ctx, &self.config, r, &self.shutdown).await;
        }
    }
}

/// Runs one started retrain job and writes its end.
async fn run_job(
    ctx: &Context,
    config: &TrainerConfig,
    r: Runnable,
    shutdown: &watch::Receiver<bool>,
) {
    let started = Instant::now();
    let renewer = tokio::spawn(renew_leases(ctx, std::slice::from_ref(&r)));
    let (reporter, progress) = Reporter::new(r.attempt);
    let writer = tokio::spawn(write_progress(
        ctx.pool.clone(),
        ctx.keys.clone(),
        r.job_id,
        r.attempt,
        progress,
    ));
    // The lease renewal raises `r.cancel` when a client cancels the job;
    // a shutdown raises it too, after saying that it is a shutdown.
    let stopping = Arc::new(AtomicBool::new(false));
    let canceller = {
        let (stop, stopping) = (Arc::clone(&r.cancel), Arc::clone(&stopping));
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            if shutdown.wait_for(|stop| *stop).await.is_ok() {
                stopping.store(true, Ordering::Release);
                stop.store(true, Ordering::Release);
            }
        })
    };
    let outcome = match &r.delivery.job {
        Ok(
            job @ JobEnvelope {
                spec: JobSpec::Retrain(spec),
                ..
            },
        ) => {
            let env = retrain::Env {
                store: &ctx.models,
                pool: &ctx.pool,
                keys: &ctx.keys,
                config,
                reporter: Arc::new(reporter),
                stop: Arc::clone(&r.cancel),
                shutdown: stopping,
                span: r.span.clone(),
            };
            // Every line the job logs carries its id, model and attempt.
            retrain::run(&env, job, spec, r.attempt)
                .instrument(r.span.clone())
                .await
        }
        // Only the API writes the training stream, and only retrain jobs.
        Ok(
            job @ JobEnvelope {
                spec: JobSpec::Predict { .. } | JobSpec::Validate { .. },
                ..
            },
        ) => Err(Stopped::Failed(JobFailure::InvalidPayload(format!(
            "a {} job cannot run on the training stream",
            job.kind().as_str()
        )))),
        Err(e) => Err(Stopped::Failed(JobFailure::InvalidPayload(e.clone()))),
    };
    canceller.abort();
    writer.abort();
    let attempted = match outcome {
        Ok(result) => match serde_json::to_string(&result) {
            Ok(json) => (result.version.to_string(), Ok(json)),
            Err(e) => (
                String::new(),
                Err(JobFailure::TrainingFailed(format!(
                    "encoding the result: {e}"
                ))),
            ),
        },
        Err(Stopped::Failed(failure)) => {
            let _entered = r.span.enter();
            tracing::warn!(code = failure.code(), error = %failure, transient = failure.is_transient(), "retrain attempt failed");
            (String::new(), Err(failure))
        }
        Err(Stopped::Interrupted) => {
            renewer.abort();
            let _entered = r.span.enter();
            tracing::warn!(
                "retrain interrupted by shutdown; another worker takes the job over once its lease expires"
            );
            return;
        }
    };
    finish_all(ctx, &[(r, attempted)], started).await;
    renewer.abort();
}

/// Writes the latest progress of a job, at most every [`PROGRESS_EVERY`],
/// until aborted. Best effort: a lost write only delays what clients see.
async fn write_progress(
    pool: Pool,
    keys: Keys,
    job_id: Uuid,
    attempt: u32,
    mut rx: watch::Receiver<Option<Progress>>,
) {
    while rx.changed().await.is_ok() {
        let Some(json) = rx
            .borrow_and_update()
            .as_ref()
            .and_then(|p| serde_json::to_string(p).ok())
        else {
            continue;
        };
        let res = async {
            let mut conn = pool.get();
            consume::write_progress(&mut conn, &keys, &job_id, attempt, &json).await
        }
        .await;
        if let Err(error) = res {
            count_redis_error(redis_op::TRAINING, &error);
            tracing::debug!(%error, "cannot write the job's progress");
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
}
