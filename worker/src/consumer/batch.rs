//! What a prediction slot does with a batch it read or took over: start the
//! jobs, run the inference jobs on a blocking thread (stacked across jobs
//! of one model version by [`crate::execute::run_many`], split back per job)
//! while the batch's `validate` jobs run beside them on the executor (they
//! need Redis, and their CPU work runs in a child process), then write every
//! attempt's end. Leases are renewed until then.

use std::sync::Arc;
use std::time::Instant;

use shared::job::JobKind;
use shared::metric_names::WORKER_BATCH_SIZE;
use shared::queue::consume::Delivery;
use shared::queue::wire::JobEnvelope;
use shared::telemetry::spans;

use super::Context;
use super::attempt::{Attempted, Runnable, child_spans, finish_all, renew_leases, start_all};
use super::read::Batches;
use crate::error::JobFailure;
use crate::execute::{self, Resolved};
use crate::models::LoadError;
use crate::watchdog::CancelFlag;

/// The prediction slots' [`Batches`]: inference and `validate` jobs.
pub struct Predictions;

impl Batches for Predictions {
    async fn run(&self, ctx: &Context, batch: Vec<Delivery>) {
        process(ctx, batch).await
    }
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

/// Runs a read's jobs on the current (blocking) thread, stacked per model
/// where possible ([`execute::run_many`]), then logs and times each job in its
/// own span. `resolved` holds one entry per decoded job, in order. Returns
/// each job with the model version it ran on and its result JSON or failure.
fn execute_all(
    resolved: Vec<Resolved>,
    runnable: Vec<Runnable>,
    max_rows: usize,
) -> Vec<(Runnable, Attempted)> {
    let started = Instant::now();
    let decoded: Vec<&JobEnvelope> = runnable
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
