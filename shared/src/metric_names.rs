//! The Prometheus metric catalogue: every metric name both binaries export,
//! and the histogram buckets. Dashboards, alerts and the deployment tests
//! are built on these exact names, so they are defined once, here.
//!
//! Labels are bounded: `model` (a published model name or `unknown`),
//! `kind`, `status`, `reason` (an error code or `none`), `route` (a matched
//! route template), `method`, `op` (one of [`redis_op`]), `listener`
//! (`public`, `ops`), `phase`. Never a job id.

// ------------------------------------------------------------------ API

pub const HTTP_REQUESTS: &str = "onnxq_http_requests_total";
pub const HTTP_DURATION: &str = "onnxq_http_request_duration_seconds";
pub const JOBS_SUBMITTED: &str = "onnxq_jobs_submitted_total";
pub const JOBS_DEDUPLICATED: &str = "onnxq_jobs_deduplicated_total";
pub const JOBS_REJECTED: &str = "onnxq_jobs_rejected_total";
pub const JOBS_CANCELED: &str = "onnxq_jobs_canceled_total";
pub const STREAM_LENGTH: &str = "onnxq_stream_length";
pub const STREAM_PENDING: &str = "onnxq_stream_pending";
pub const STREAM_LAG: &str = "onnxq_stream_lag";
pub const STREAM_OLDEST_PENDING_AGE: &str = "onnxq_stream_oldest_pending_age_seconds";
pub const STREAM_CONSUMERS: &str = "onnxq_stream_consumers";
pub const DELAYED_JOBS: &str = "onnxq_delayed_jobs";
pub const DEAD_LETTERS: &str = "onnxq_dead_letters";
pub const WORKERS_READY: &str = "onnxq_workers_ready";
/// Open HTTP connections, by `listener` (`public`, `ops`).
pub const HTTP_CONNECTIONS: &str = "onnxq_http_connections";
/// Connections closed at accept, by `listener` and `reason`
/// (`per_address_limit`, `connection_limit`).
pub const HTTP_CONNECTIONS_REFUSED: &str = "onnxq_http_connections_refused_total";
/// Connections admitted past a full table to the probe reserve, by
/// `listener`.
pub const HTTP_CONNECTIONS_OVERFLOW: &str = "onnxq_http_connections_overflow_total";
/// Connections cut off by a timeout, by `listener` and `phase` (`header`,
/// `idle`, `body`).
pub const HTTP_TIMEOUTS: &str = "onnxq_http_timeouts_total";
pub const WEBHOOK_CALLS: &str = "onnxq_webhook_calls_total";
pub const WEBHOOK_CALL_DURATION: &str = "onnxq_webhook_call_duration_seconds";

// --------------------------------------------------------------- worker

pub const WORKER_JOBS_FINISHED: &str = "onnxq_worker_jobs_finished_total";
pub const WORKER_QUEUE_WAIT: &str = "onnxq_worker_queue_wait_seconds";
pub const WORKER_RUN: &str = "onnxq_worker_run_seconds";
pub const WORKER_END_TO_END: &str = "onnxq_worker_end_to_end_seconds";
pub const WORKER_INFERENCE: &str = "onnxq_worker_inference_seconds";
pub const WORKER_BATCH_SIZE: &str = "onnxq_worker_batch_size";
pub const WORKER_INFERENCE_BATCH_ROWS: &str = "onnxq_worker_inference_batch_rows";
pub const WORKER_JOB_RETRIES: &str = "onnxq_worker_job_retries_total";
pub const WORKER_JOBS_DEAD_LETTERED: &str = "onnxq_worker_jobs_dead_lettered_total";
pub const WORKER_JOBS_RECLAIMED: &str = "onnxq_worker_jobs_reclaimed_total";
pub const WORKER_RESULTS_DISCARDED: &str = "onnxq_worker_results_discarded_total";
pub const WORKER_MODELS_LOADED: &str = "onnxq_worker_models_loaded";
pub const WORKER_MODEL_SWAPS: &str = "onnxq_worker_model_swaps_total";
/// Retrain jobs: fitting time (built-in) or the external program's run
/// time, by `trainer`.
pub const WORKER_TRAINING: &str = "onnxq_worker_training_seconds";
/// Retrain jobs that registered a version, by `decision` (`promoted`,
/// `kept_current`, `registered_only`).
pub const WORKER_RETRAIN_DECISIONS: &str = "onnxq_worker_retrain_decisions_total";

// ----------------------------------------------------------------- both

pub const REDIS_ERRORS: &str = "onnxq_redis_errors_total";

/// The `op` label values of [`REDIS_ERRORS`]: one per kind of Redis call,
/// so the label stays bounded.
pub mod redis_op {
    // API
    pub const SUBMIT: &str = "submit";
    pub const GET_JOB: &str = "get_job";
    /// `GET /v1/jobs`: the job index and the records it names.
    pub const LIST_JOBS: &str = "list_jobs";
    pub const CANCEL: &str = "cancel";
    pub const LIST_MODELS: &str = "list_models";
    pub const GET_MODEL: &str = "get_model";
    pub const READYZ: &str = "readyz";
    pub const STREAM_STATS: &str = "stream_stats";
    /// Model registry reads and writes (versions, promote, rollback).
    pub const REGISTRY: &str = "registry";
    /// Dataset uploads, reads, listing and deletes.
    pub const DATASETS: &str = "datasets";
    /// Token buckets of the request rate limits.
    pub const RATE_LIMIT: &str = "rate_limit";
    /// Webhook signing secrets.
    pub const WEBHOOKS: &str = "webhooks";
    // worker
    pub const CONNECT: &str = "connect";
    pub const READ: &str = "read";
    pub const START: &str = "start";
    pub const FINISH: &str = "finish";
    pub const RENEW: &str = "renew";
    pub const RECLAIM: &str = "reclaim";
    pub const ACK: &str = "ack";
    /// Releasing due retries back onto their streams.
    pub const RELEASE_DUE: &str = "release_due";
    pub const TRIM: &str = "trim";
    pub const PUBLISH: &str = "publish";
    pub const ENSURE_GROUP: &str = "ensure_group";
    pub const HEARTBEAT: &str = "heartbeat";
    /// Retrain jobs: dataset reads, progress writes, registering.
    pub const TRAINING: &str = "training";
}

/// Buckets of every `*_seconds` histogram: 0.5 ms to 60 s.
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Buckets of the batch histograms (jobs per read, rows per run).
pub const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_increase() {
        assert!(SECONDS_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert!(BATCH_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
