//! An attempt's life cycle, for prediction and training slots alike: start
//! the jobs of a batch (one script call per stream, which takes the attempt
//! and checks deadline, attempts and cancellation), renew their leases while
//! they run, then end every attempt in one pipelined round trip, after
//! deciding whether a failure is retried, dead-lettered or final.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, UNIX_EPOCH};

use shared::metric_names::{WORKER_QUEUE_WAIT, redis_op};
use shared::queue::QueueError;
use shared::queue::consume::{self, Delivery, Finish, Outcome, Renewed, Start};
use shared::redis_errors::count_redis_error;
use shared::telemetry::{self, spans};
use shared::trace::TraceContext;
use tracing::{Span, info_span, trace_span};
use uuid::Uuid;

use super::Context;
use super::backoff::with_retry;
use super::metrics::{count_dead_letter, count_finished, record_end_to_end, report};
use crate::error::JobFailure;
use crate::watchdog::CancelFlag;

/// A job that will run: its delivery and the attempt it runs as.
pub struct Runnable {
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

/// The model version an attempt ran on, and its result JSON or failure.
pub type Attempted = (String, Result<String, JobFailure>);

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
pub(crate) fn child_spans<'a>(
    name: &'static str,
    parents: impl Iterator<Item = &'a Span>,
) -> Vec<Span> {
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
        let mut conn = ctx.pool.get();
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
                count_dead_letter(model.clone(), "attempts_exhausted");
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

/// Acknowledges entries without a job id.
async fn ack_orphans(ctx: &Context, orphans: &[Delivery]) {
    for d in orphans {
        tracing::error!(stream = %d.stream, entry = %d.entry_id, "dropping stream entry without a job id");
        let res = async {
            let mut conn = ctx.pool.get();
            consume::ack(&mut conn, &d.stream, &[d.entry_id.as_str()]).await
        }
        .await;
        if let Err(error) = res {
            count_redis_error(redis_op::ACK, &error);
            tracing::warn!(%error, "ack failed; the entry will be delivered again");
        }
    }
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
            outcome: outcome_of(result, r.attempt, ctx.policy.max_attempts, || {
                shared::time::now_ms()
                    + i64::try_from(ctx.retry_delay(r.attempt).as_millis()).unwrap_or(i64::MAX / 2)
            }),
        })
        .collect();
    let writing = child_spans(spans::WRITE_RESULT, executed.iter().map(|(r, _)| &r.span));
    let written = with_retry(redis_op::FINISH, || async {
        let mut conn = ctx.pool.get();
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
                report(&ctx.keys, f, finished, run_secs);
            }
        }
        // `--durability replicated`: the master wrote and acknowledged the
        // results, no replica confirmed them in time. If the master
        // survives they stand; if it is lost, its replica still has the
        // entries pending and another attempt writes the results there.
        Err(error @ QueueError::NotReplicated { .. }) => {
            tracing::warn!(%error, jobs = finishes.len(), "results written but not confirmed by a replica");
        }
        Err(error) => {
            tracing::error!(%error, jobs = finishes.len(), "cannot write results; jobs stay pending until reclaimed");
        }
    }
}

/// Decides how an attempt ends. The failure's type decides whether it is
/// retried; the attempt count decides whether a retry is still allowed
/// (`retry_at_ms` is asked only then).
fn outcome_of(
    result: &Result<String, JobFailure>,
    attempt: u32,
    max_attempts: u32,
    retry_at_ms: impl FnOnce() -> i64,
) -> Outcome {
    match result {
        Ok(result_json) => Outcome::Succeeded {
            result_json: result_json.clone(),
        },
        Err(JobFailure::Canceled) => Outcome::Canceled,
        Err(f) if !f.is_transient() => Outcome::Failed(f.to_job_error()),
        Err(f) if attempt >= max_attempts => Outcome::DeadLetter(f.to_job_error()),
        Err(f) => Outcome::Retry {
            error: f.to_job_error(),
            retry_at_ms: retry_at_ms(),
        },
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
                let mut conn = pool.get();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> i64 {
        panic!("a retry time was asked for an outcome that is not a retry")
    }

    #[test]
    fn success_and_cancel_end_the_job_whatever_the_attempt() {
        let ok = Ok(r#"{"outputs":[]}"#.to_owned());
        assert_eq!(
            outcome_of(&ok, 3, 3, never),
            Outcome::Succeeded {
                result_json: r#"{"outputs":[]}"#.to_owned()
            }
        );
        assert_eq!(
            outcome_of(&Err(JobFailure::Canceled), 1, 3, never),
            Outcome::Canceled
        );
    }

    #[test]
    fn a_permanent_failure_is_final_on_any_attempt() {
        let bad = Err(JobFailure::InvalidInput("no input x".into()));
        for attempt in [1, 3, 9] {
            match outcome_of(&bad, attempt, 3, never) {
                Outcome::Failed(e) => assert_eq!(e.code, "invalid_input"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_transient_failure_is_retried_until_the_last_attempt_then_dead_lettered() {
        let flaky = Err(JobFailure::Inference("blip".into()));
        for attempt in [1, 2] {
            match outcome_of(&flaky, attempt, 3, || 1234) {
                Outcome::Retry { error, retry_at_ms } => {
                    assert_eq!(
                        (error.code.as_str(), retry_at_ms),
                        ("inference_error", 1234)
                    );
                }
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        for attempt in [3, 4] {
            match outcome_of(&flaky, attempt, 3, never) {
                Outcome::DeadLetter(e) => assert_eq!(e.code, "inference_error"),
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        // One attempt allowed: the first failure is the last.
        assert!(matches!(
            outcome_of(&flaky, 1, 1, never),
            Outcome::DeadLetter(_)
        ));
    }

    /// How an attempt that failed so ends, by the failure alone.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Class {
        /// Retried while attempts remain, then dead-lettered.
        Retried,
        /// Failed at once, on any attempt.
        Permanent,
        Canceled,
    }

    /// The retry table, written out: a new variant does not compile here
    /// until it is put in a class (and into `one_of_each`).
    fn class(f: &JobFailure) -> Class {
        use JobFailure as F;
        match f {
            F::ModelUnavailable(_)
            | F::Inference(_)
            | F::ValidatorUnavailable(_)
            | F::ExternalTrainerNotConfigured
            | F::RegistryUnavailable(_) => Class::Retried,
            F::InvalidPayload(_)
            | F::InvalidInput(_)
            | F::NonFiniteOutput { .. }
            | F::UnsupportedOutput { .. }
            | F::InvalidModel(_)
            | F::ModelExternalData(_)
            | F::ModelTensorTooLarge(_)
            | F::ModelTooComplex(_)
            | F::ModelValidationTimeout(_)
            | F::ModelValidationMemory(_)
            | F::ModelValidationCrashed(_)
            | F::VersionUnavailable(_)
            | F::DatasetNotFound(_)
            | F::InvalidDataset(_)
            | F::TrainingFailed(_)
            | F::ExternalTrainer(_)
            | F::IncompatibleModel(_)
            | F::ExportMismatch(_)
            | F::InferenceTimeout { .. }
            | F::InferenceMemory
            | F::ResultTooLarge(_)
            | F::TrainingTimeout { .. }
            | F::TrainingBudget(_)
            | F::QuotaExceeded(_) => Class::Permanent,
            F::Canceled => Class::Canceled,
        }
    }

    fn one_of_each() -> Vec<JobFailure> {
        use JobFailure as F;
        let m = || "m".to_owned();
        vec![
            F::InvalidPayload(m()),
            F::ModelUnavailable(m()),
            F::InvalidInput(m()),
            F::Inference(m()),
            F::NonFiniteOutput {
                output: m(),
                index: 0,
            },
            F::UnsupportedOutput {
                output: m(),
                ty: m(),
            },
            F::InvalidModel(m()),
            F::ModelExternalData(m()),
            F::ModelTensorTooLarge(m()),
            F::ModelTooComplex(m()),
            F::ModelValidationTimeout(m()),
            F::ModelValidationMemory(m()),
            F::ModelValidationCrashed(m()),
            F::ValidatorUnavailable(m()),
            F::VersionUnavailable(m()),
            F::DatasetNotFound(m()),
            F::InvalidDataset(m()),
            F::TrainingFailed(m()),
            F::ExternalTrainer(m()),
            F::ExternalTrainerNotConfigured,
            F::IncompatibleModel(m()),
            F::ExportMismatch(m()),
            F::RegistryUnavailable(m()),
            F::InferenceTimeout { limit_ms: 1 },
            F::InferenceMemory,
            F::ResultTooLarge(m()),
            F::Canceled,
            F::TrainingTimeout { limit_secs: 1 },
            F::TrainingBudget(m()),
            F::QuotaExceeded(m()),
        ]
    }

    #[test]
    fn every_failure_class_below_at_and_past_the_last_attempt() {
        let all = one_of_each();
        let codes: std::collections::BTreeSet<&str> = all.iter().map(JobFailure::code).collect();
        assert_eq!(codes.len(), all.len(), "one failure of each variant");
        for max in [1, 3] {
            for attempt in [1, max - 1, max, max + 1].into_iter().filter(|&a| a >= 1) {
                for failure in &all {
                    let class = class(failure);
                    // The table agrees with the variant's own rule.
                    assert_eq!(
                        class == Class::Retried,
                        failure.is_transient(),
                        "{failure:?}"
                    );
                    let retries = class == Class::Retried && attempt < max;
                    let outcome = outcome_of(&Err(failure.clone()), attempt, max, || {
                        assert!(
                            retries,
                            "{failure:?}: retry time asked at attempt {attempt}/{max}"
                        );
                        42
                    });
                    let at = format!("{failure:?} at attempt {attempt} of {max}");
                    match (class, outcome) {
                        (Class::Canceled, Outcome::Canceled) => {}
                        (Class::Permanent, Outcome::Failed(e)) => {
                            assert_eq!(e.code, failure.code(), "{at}")
                        }
                        (Class::Retried, Outcome::Retry { error, retry_at_ms }) if retries => {
                            assert_eq!(
                                (error.code.as_str(), retry_at_ms),
                                (failure.code(), 42),
                                "{at}"
                            );
                        }
                        (Class::Retried, Outcome::DeadLetter(e)) if !retries => {
                            assert_eq!(e.code, failure.code(), "{at}");
                            assert_eq!(e.message, failure.to_string(), "{at}");
                        }
                        (class, other) => panic!("{at}: {class:?} ended {other:?}"),
                    }
                }
            }
        }
    }
}
