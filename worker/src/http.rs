//! The worker's own small HTTP surface on `--metrics-listen`: Prometheus
//! metrics (`/metrics`), liveness (`/healthz`) and readiness (`/readyz`:
//! Redis answers and the models are loaded, with JSON detail). Everything a
//! worker counts is recorded through the `metrics` facade under the names of
//! [`shared::metric_names`]; this module installs the recorder, describes
//! the metrics and serves them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use shared::metric_names::{
    BATCH_BUCKETS, REDIS_ERRORS, SECONDS_BUCKETS, WORKER_BATCH_SIZE, WORKER_END_TO_END,
    WORKER_INFERENCE, WORKER_INFERENCE_BATCH_ROWS, WORKER_JOB_RETRIES, WORKER_JOBS_DEAD_LETTERED,
    WORKER_JOBS_FINISHED, WORKER_JOBS_RECLAIMED, WORKER_MODEL_SWAPS, WORKER_MODELS_LOADED,
    WORKER_QUEUE_WAIT, WORKER_RESULTS_DISCARDED, WORKER_RUN, redis_op,
};
use shared::queue::QueueError;
use shared::redis_errors::count_redis_error;
use tokio::sync::watch;

use crate::consumer::Context;

/// Installs the process-wide recorder and describes what the worker records.
pub(crate) fn install_recorder() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(WORKER_BATCH_SIZE.into()), &BATCH_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(WORKER_INFERENCE_BATCH_ROWS.into()),
                &BATCH_BUCKETS,
            )
        })
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(
        WORKER_JOBS_FINISHED,
        "Jobs this worker brought to an end, by model, kind, status (succeeded, failed, expired: \
         deadline passed before the start, canceled: entry of a canceled job dropped unrun) and \
         reason (error code, or none). Counted once per job: discarded late results and retried \
         attempts are not counted."
    );
    metrics::describe_histogram!(
        WORKER_QUEUE_WAIT,
        metrics::Unit::Seconds,
        "Submission to the start of an attempt, by model."
    );
    metrics::describe_histogram!(
        WORKER_RUN,
        metrics::Unit::Seconds,
        "Start of an attempt to its outcome written to Redis, by model."
    );
    metrics::describe_histogram!(
        WORKER_END_TO_END,
        metrics::Unit::Seconds,
        "Submission to the final outcome written to Redis, by model (every finished job but canceled ones)."
    );
    metrics::describe_histogram!(
        WORKER_INFERENCE,
        metrics::Unit::Seconds,
        "Duration of one ONNX Runtime run (one job, or several stacked), by model."
    );
    metrics::describe_histogram!(
        WORKER_BATCH_SIZE,
        metrics::Unit::Count,
        "Jobs per read (or takeover) of the streams."
    );
    metrics::describe_histogram!(
        WORKER_INFERENCE_BATCH_ROWS,
        metrics::Unit::Count,
        "Rows per ONNX Runtime run, by model."
    );
    metrics::describe_counter!(
        WORKER_JOB_RETRIES,
        "Transient failures sent back to the queue with a back-off, by model and reason."
    );
    metrics::describe_counter!(
        WORKER_JOBS_DEAD_LETTERED,
        "Jobs copied to the dead-letter stream, by model and reason."
    );
    metrics::describe_counter!(
        WORKER_JOBS_RECLAIMED,
        "Jobs taken over from workers whose lease expired, by model."
    );
    metrics::describe_counter!(
        WORKER_RESULTS_DISCARDED,
        "Late results dropped because another attempt owned the job, by model."
    );
    metrics::describe_gauge!(WORKER_MODELS_LOADED, "Models this worker serves.");
    metrics::describe_counter!(
        WORKER_MODEL_SWAPS,
        "Times a served model was replaced by a new version, by model."
    );
    metrics::describe_histogram!(
        shared::metric_names::WORKER_TRAINING,
        metrics::Unit::Seconds,
        "Retrain jobs: time spent fitting (built-in) or in the external trainer, by trainer."
    );
    metrics::describe_counter!(
        shared::metric_names::WORKER_RETRAIN_DECISIONS,
        "Retrain jobs that registered a version, by decision (promoted, kept_current, registered_only)."
    );
    metrics::describe_counter!(
        REDIS_ERRORS,
        "Failed Redis calls (unreachable, timed out, or an error reply), by operation."
    );
}

#[derive(Clone)]
struct HttpState {
    ctx: Arc<Context>,
    metrics: PrometheusHandle,
}

/// Binds the listener (at start-up, so a taken port stops the worker there).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    Ok(listener)
}

/// Serves the endpoints until `stop` turns true.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Context>,
    metrics: PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let upkeep = metrics.clone();
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState { ctx, metrics });
    let upkeep_task = tokio::spawn(async move {
        // Histogram samples pile up until upkeep drains them; memory must not
        // depend on someone scraping.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    upkeep_task.abort();
    served
}

async fn render(State(s): State<HttpState>) -> Response {
    s.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> Response {
    json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
}

#[derive(serde::Serialize)]
struct Ready<'a> {
    status: &'static str,
    redis: &'static str,
    consumer: &'a str,
    models_loaded: usize,
    models: Vec<&'a str>,
}

/// 200 with detail when Redis answers a PING (the models are loaded before
/// this server starts); 503 `redis_unavailable` otherwise, within the Redis
/// time limits.
async fn readyz(State(s): State<HttpState>) -> Response {
    let ping = tokio::time::timeout(s.ctx.limits.connect + s.ctx.limits.response, async {
        let mut conn = s.ctx.pool.get();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(QueueError::from)
    })
    .await;
    match ping {
        Ok(Ok(_)) => {
            let names = s.ctx.models.names();
            let models: Vec<&str> = names.iter().map(String::as_str).collect();
            let body = Ready {
                status: "ready",
                redis: "ok",
                consumer: &s.ctx.consumer,
                models_loaded: models.len(),
                models,
            };
            // Strings and numbers always serialise; keep a fallback anyway.
            let text =
                serde_json::to_string(&body).unwrap_or_else(|_| r#"{"status":"ready"}"#.to_owned());
            json(StatusCode::OK, text)
        }
        Ok(Err(e)) => {
            count_redis_error(redis_op::READYZ, &e);
            unavailable(&e.to_string())
        }
        Err(elapsed) => {
            count_redis_error(redis_op::READYZ, &elapsed);
            unavailable("timed out")
        }
    }
}

fn unavailable(cause: &str) -> Response {
    tracing::warn!(cause, "readiness check failed: redis unavailable");
    let body = serde_json::json!({"error": {"code": "redis_unavailable", "message": "redis does not answer"}});
    json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
