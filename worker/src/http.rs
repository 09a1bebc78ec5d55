//! The worker's own small HTTP surface on `--metrics-listen`: Prometheus
//! metrics (`/metrics`), liveness (`/healthz`) and readiness (`/readyz`:
//! Redis answers). Everything a worker counts is recorded through the
//! `metrics` facade; this module installs the recorder and serves it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::consumer::Context;

/// Buckets for the `*_seconds` histograms: 100 µs to 30 s.
const SECONDS_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the process-wide recorder and describes what the worker records.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("worker_batch_size".into()), &BATCH_BUCKETS)
        })
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    metrics::describe_counter!(
        "worker_jobs_finished_total",
        "Jobs this worker brought to a terminal state, by model, status and reason (error code, or none). Counted once per job: discarded late results are not counted."
    );
    metrics::describe_counter!(
        "worker_job_retries_total",
        "Transient failures sent back to the queue with a back-off, by model."
    );
    metrics::describe_counter!(
        "worker_jobs_dead_lettered_total",
        "Jobs copied to the dead-letter stream, by model."
    );
    metrics::describe_counter!(
        "worker_jobs_reclaimed_total",
        "Jobs taken over from workers whose lease expired."
    );
    metrics::describe_counter!(
        "worker_results_discarded_total",
        "Late results dropped because another attempt owned the job, by model."
    );
    metrics::describe_histogram!(
        "worker_queue_wait_seconds",
        metrics::Unit::Seconds,
        "Submission to start of the attempt, by model."
    );
    metrics::describe_histogram!(
        "worker_inference_seconds",
        metrics::Unit::Seconds,
        "ONNX Runtime time per job, by model."
    );
    metrics::describe_histogram!(
        "worker_batch_size",
        metrics::Unit::Count,
        "Jobs started together from one read."
    );
    Ok(handle)
}

#[derive(Clone)]
struct HttpState {
    ctx: Arc<Context>,
    metrics: PrometheusHandle,
}

/// Binds the listener (at start-up, so a taken port stops the worker there).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    Ok(listener)
}

/// Serves the endpoints until `stop` turns true.
pub async fn serve(
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

async fn readyz(State(s): State<HttpState>) -> Response {
    let ping = tokio::time::timeout(s.ctx.limits.connect + s.ctx.limits.response, async {
        let mut conn = s.ctx.pool.get().await.map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    match ping {
        Ok(Ok(_)) => json(StatusCode::OK, r#"{"status":"ready"}"#.to_owned()),
        Ok(Err(e)) => unavailable(&e),
        Err(_) => unavailable("timed out"),
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
