//! What the consumer logs and counts: the end of each attempt (once, and
//! only once it is written), jobs that end before they run, takeovers, and
//! failed Redis calls. The names are [`shared::metric_names`]'; the
//! recorder and the descriptions are [`crate::http`]'s.

use shared::metric_names::{
    WORKER_END_TO_END, WORKER_JOB_RETRIES, WORKER_JOBS_DEAD_LETTERED, WORKER_JOBS_FINISHED,
    WORKER_JOBS_RECLAIMED, WORKER_RESULTS_DISCARDED, WORKER_RUN,
};
use shared::queue::Keys;
use shared::queue::consume::{Delivery, Finish, Finished, Outcome};

// The one Redis error count both binaries keep; re-exported for the loops here.

/// Logs and counts an attempt's end. Counting only what was written keeps
/// metrics exact: a discarded late result is never counted twice.
pub(crate) fn report(keys: &Keys, f: &Finish<'_>, finished: Finished, run_secs: f64) {
    let model = f.delivery.model(keys).to_owned();
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
            record_end_to_end(f.delivery, keys);
        }
        Finished::Stale => {
            tracing::warn!("result discarded: another attempt owns the job");
            metrics::counter!(WORKER_RESULTS_DISCARDED, "model" => model).increment(1);
        }
        Finished::Gone => tracing::warn!("job record vanished before its result"),
    }
}

/// Counts a job whose start script ended it for good (past its deadline,
/// out of attempts): there is no attempt, so no run time.
pub(crate) fn count_dead_letter(model: String, reason: &'static str) {
    metrics::counter!(WORKER_JOBS_DEAD_LETTERED, "model" => model, "reason" => reason).increment(1);
}

/// Counts entries of `stream` taken over from a worker whose lease expired.
pub(crate) fn count_reclaimed(keys: &Keys, stream: &str, jobs: usize) {
    let model = keys.model_of_stream(stream).unwrap_or("").to_owned();
    metrics::counter!(WORKER_JOBS_RECLAIMED, "model" => model).increment(jobs as u64);
}

/// Counts a job this worker brought to an end (once per job).
pub(crate) fn count_finished(
    d: &Delivery,
    model: String,
    status: &'static str,
    reason: impl Into<metrics::SharedString>,
) {
    let kind = d.job.as_ref().map_or("unknown", |j| j.kind().as_str());
    metrics::counter!(WORKER_JOBS_FINISHED, "model" => model, "kind" => kind, "status" => status, "reason" => reason.into())
        .increment(1);
}

/// Records submission → final outcome for a job that just ended.
pub(crate) fn record_end_to_end(d: &Delivery, keys: &Keys) {
    if let Ok(job) = &d.job {
        let secs = (shared::time::now_ms() - job.submitted_at_ms).max(0) as f64 / 1e3;
        metrics::histogram!(WORKER_END_TO_END, "model" => d.model(keys).to_owned()).record(secs);
    }
}
