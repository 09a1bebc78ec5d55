//! Prometheus metrics: the process-wide recorder, the per-request middleware
//! (tracing span, request counter, latency histogram), Redis error counting
//! and `GET /metrics`, which appends the queue gauges sampled at scrape time
//! ([`crate::stream_stats`]).
//!
//! Names come from the catalogue in [`shared::metric_names`]. Label values
//! are bounded: the route label is the matched route template (or
//! `unmatched`), never the raw path, so unknown URLs cannot create series.
//! A `model` label is a model some worker published, or [`UNKNOWN_MODEL`];
//! a `reason` label is an [`ApiError`] code; an `op` label one of
//! [`redis_op`]. Never a job id.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::SharedString;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use shared::QueueError;
use shared::metric_names::SECONDS_BUCKETS;
pub use shared::metric_names::{
    HTTP_DURATION, HTTP_REQUESTS, JOBS_CANCELED, JOBS_DEDUPLICATED, JOBS_REJECTED, JOBS_SUBMITTED,
    REDIS_ERRORS, redis_op,
};
use tracing::Instrument;

use crate::error::ApiError;
use crate::routes;
use crate::state::AppState;
use crate::stream_stats::StreamStats;

/// The `model` label of requests naming no published model: the raw name
/// would let any client create series at will.
pub const UNKNOWN_MODEL: &str = "unknown";

const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The global recorder's handle. The recorder is process-global, but tests
/// build many routers in one process: install it once and share the handle.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics stays empty");
    }
    describe();
    // Histogram samples pile up until upkeep drains them; a scrape does too,
    // but memory must not depend on someone scraping.
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
    }
    handle
}

fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status."
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency, by method, route template and status."
    );
    metrics::describe_counter!(
        JOBS_SUBMITTED,
        "Jobs accepted onto the queue, by model and kind."
    );
    metrics::describe_counter!(
        JOBS_DEDUPLICATED,
        "Submissions answered with an earlier job of the same Idempotency-Key, by model."
    );
    metrics::describe_counter!(JOBS_CANCELED, "Queued jobs canceled by clients, by model.");
    metrics::describe_counter!(
        JOBS_REJECTED,
        "Submissions refused, by model and reason (the error code)."
    );
    metrics::describe_counter!(
        REDIS_ERRORS,
        "Failed Redis calls (unreachable, timed out, or an error reply), by operation."
    );
}

/// `GET /metrics`: the recorder's metrics, then the queue gauges.
pub async fn render(
    State(state): State<AppState>,
    Extension(streams): Extension<StreamStats>,
) -> Response {
    // Sampled first, so a failure to sample is already counted in this
    // scrape's onnxq_redis_errors_total.
    let gauges = streams.render(&state).await;
    let handle = state.metrics();
    handle.run_upkeep();
    let mut text = handle.render();
    text.push_str(&gauges);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Wraps every request (matched or not) in a span and records its outcome.
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route = route_label(req.extensions().get::<MatchedPath>());
    let span = tracing::info_span!("request", method, route, job_id = tracing::field::Empty);
    let res = next.run(req).instrument(span).await;
    let status = status_label(res.status());
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route, "status" => status.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    res
}

/// Counts a refused submission. `model` must be a published model's name or
/// [`UNKNOWN_MODEL`].
pub fn count_rejection(model: SharedString, error: &ApiError) {
    metrics::counter!(JOBS_REJECTED, "model" => model, "reason" => error.code()).increment(1);
}

/// Counts a failed Redis call of kind `op` (one of [`redis_op`]) and turns
/// the error into the client's answer. Errors that are not Redis's (corrupt
/// data, encoding) are not counted.
pub fn redis_failed(op: &'static str) -> impl Fn(QueueError) -> ApiError {
    move |e| {
        count_redis_error(op, &e);
        ApiError::from(e)
    }
}

/// Counts `e` under `op` if it is a failure of Redis itself.
pub fn count_redis_error(op: &'static str, e: &QueueError) {
    if matches!(e, QueueError::Redis(_) | QueueError::Pool(_)) {
        metrics::counter!(REDIS_ERRORS, "op" => op).increment(1);
    }
}

fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    matched
        .and_then(|m| routes::ALL.into_iter().find(|r| *r == m.as_str()))
        .unwrap_or("unmatched")
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_label(s: StatusCode) -> SharedString {
    let label = match s.as_u16() {
        200 => "200",
        202 => "202",
        400 => "400",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => return SharedString::from(s.as_str().to_owned()),
    };
    SharedString::const_str(label)
}
