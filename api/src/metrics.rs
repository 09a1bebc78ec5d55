//! Prometheus metrics: the process-wide recorder, each request's span,
//! counter and latency histogram ([`Tracked`]), Redis error counting
//! and the public view of a scrape. `GET /metrics` itself is the handler in
//! `routes::metrics`, which appends the queue gauges sampled at scrape time
//! ([`crate::stream_stats`]).
//!
//! Names come from the catalogue in [`shared::metric_names`]. Every label
//! value is bounded:
//!
//! | label | values | bounded by |
//! |---|---|---|
//! | `route` | a route template of [`paths::ALL`], or `unmatched` | the route table: never the raw path |
//! | `method` | the common methods, or `other` | [`method_label`] |
//! | `status` | the status code | the codes the API answers with |
//! | `model` | a model the API knows, or [`UNKNOWN_MODEL`] | the model cache (published signatures), enforced by the recorder ([`ModelLabels`]) |
//! | `kind`, `reason` | job kinds, [`ApiError`] codes | Rust enums |
//! | `op` | [`redis_op`] | constants |
//! | `listener`, `phase` | `public`/`ops`, `header`/`idle`/`body` | constants |
//! | `outcome` | `delivered`, `retrying`, `dead` (webhook calls) | constants |
//!
//! Never a job id. The public listener's `/metrics` leaves out every series
//! of a tenant's model ([`public_view`]); the operator listener shows all.

use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use shared::QueueError;
use shared::metric_names::{
    HTTP_CONNECTIONS, HTTP_CONNECTIONS_OVERFLOW, HTTP_CONNECTIONS_REFUSED, HTTP_TIMEOUTS,
    SECONDS_BUCKETS,
};
pub(crate) use shared::metric_names::{
    HTTP_DURATION, HTTP_REQUESTS, JOBS_CANCELED, JOBS_DEDUPLICATED, JOBS_REJECTED, JOBS_SUBMITTED,
    REDIS_ERRORS, WEBHOOK_CALL_DURATION, WEBHOOK_CALLS, redis_op,
};
use shared::model::TENANT_SEPARATOR;
// The one Redis error count both binaries keep; re-exported for the routes.
use shared::redis_errors::count_redis_error;

use crate::error::ApiError;
use crate::models_cache::ModelCache;
use crate::paths;

/// The `model` label of requests naming no published model: the raw name
/// would let any client create series at will.
pub(crate) const UNKNOWN_MODEL: &str = "unknown";

const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The model caches of the live application states (one in the binary,
/// several in tests that run many in one process): a model in any of them
/// may become a `model` label.
static KNOWN_MODELS: RwLock<Vec<Weak<ModelCache>>> = RwLock::new(Vec::new());

/// The global recorder's handle. The recorder is process-global, but tests
/// build many routers in one process: install it once and share the handle.
/// `models` joins the caches whose models are allowed as labels.
pub(crate) fn handle(models: &Arc<ModelCache>) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    let mut known = KNOWN_MODELS.write().unwrap_or_else(PoisonError::into_inner);
    known.retain(|w| w.strong_count() > 0);
    known.push(Arc::downgrade(models));
    drop(known);
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(ModelLabels(recorder)) {
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
    metrics::describe_gauge!(
        HTTP_CONNECTIONS,
        "Open HTTP connections, by listener (probe reserve included)."
    );
    metrics::describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "Connections closed at accept, by listener and reason (per_address_limit, connection_limit)."
    );
    metrics::describe_counter!(
        HTTP_CONNECTIONS_OVERFLOW,
        "Connections admitted past a full table to the probe reserve (one request, probes and metrics only)."
    );
    metrics::describe_counter!(
        WEBHOOK_CALLS,
        "Webhook call attempts, by outcome (delivered, retrying, dead)."
    );
    metrics::describe_histogram!(
        WEBHOOK_CALL_DURATION,
        metrics::Unit::Seconds,
        "Time of one webhook call attempt, to the receiver's answer or the failure."
    );
    metrics::describe_counter!(
        HTTP_TIMEOUTS,
        "Connections cut off by a timeout, by listener and phase (header, idle, body)."
    );
}

/// The recorder, with every `model` label checked when a metric is
/// registered: a value that is not a model the API knows becomes
/// [`UNKNOWN_MODEL`]. Handlers label with the model a request names, and a
/// request may name a model that does not exist yet (a retrain creates
/// one); here, whatever a handler passes, only known models become series.
struct ModelLabels<R>(R);

impl<R> ModelLabels<R> {
    fn bounded<'a>(&self, key: &'a Key) -> std::borrow::Cow<'a, Key> {
        let unknown = |l: &Label| l.key() == "model" && !is_known_model(l.value());
        if !key.labels().any(unknown) {
            return std::borrow::Cow::Borrowed(key);
        }
        let labels: Vec<Label> = key
            .labels()
            .map(|l| {
                if unknown(l) {
                    Label::new("model", UNKNOWN_MODEL)
                } else {
                    l.clone()
                }
            })
            .collect();
        std::borrow::Cow::Owned(Key::from_parts(key.name_shared(), labels))
    }
}

fn is_known_model(name: &str) -> bool {
    name == UNKNOWN_MODEL
        || KNOWN_MODELS
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .any(|m| m.is_cached(name))
}

impl<R: Recorder> Recorder for ModelLabels<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.0.register_counter(&self.bounded(key), metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.0.register_gauge(&self.bounded(key), metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.0.register_histogram(&self.bounded(key), metadata)
    }
}

/// Prometheus text without the series of tenants' models: a sample line
/// with a `~` (the tenant separator) names one, since `~` can appear
/// nowhere else in a sample (not in metric names, numbers, or any other
/// label's values). Comment lines stay, so every family keeps its type.
pub(crate) fn public_view(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with('#') || !line.contains(TENANT_SEPARATOR) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// One request's metrics, from its head to its answer (the edge layer in
/// [`crate::app`] holds it around every request, matched or not).
pub(crate) struct Tracked {
    start: Instant,
    method: &'static str,
    route: &'static str,
}

impl Tracked {
    /// Starts counting `req`, and opens the span it is to run in.
    pub(crate) fn start(req: &Request) -> (Tracked, tracing::Span) {
        let method = method_label(req.method());
        let route = route_label(req.extensions().get::<MatchedPath>());
        let span = tracing::info_span!("request", method, route, job_id = tracing::field::Empty);
        let tracked = Tracked {
            start: Instant::now(),
            method,
            route,
        };
        (tracked, span)
    }

    /// Counts the answer.
    pub(crate) fn finish(self, status: StatusCode) {
        let (method, route) = (self.method, self.route);
        let status = status_label(status);
        metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route, "status" => status.clone())
            .record(self.start.elapsed().as_secs_f64());
        metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
            .increment(1);
    }
}

/// Counts a refused submission. `model` must be a published model's name or
/// [`UNKNOWN_MODEL`].
pub(crate) fn count_rejection(model: SharedString, error: &ApiError) {
    metrics::counter!(JOBS_REJECTED, "model" => model, "reason" => error.code().as_str())
        .increment(1);
}

/// Counts a failed Redis call of kind `op` (one of [`redis_op`]) and turns
/// the error into the client's answer. Errors that are not Redis's (corrupt
/// data, encoding) are not counted.
pub(crate) fn redis_failed(op: &'static str) -> impl Fn(QueueError) -> ApiError {
    move |e| {
        count_redis_error(op, &e);
        ApiError::from(e)
    }
}

fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    matched
        .and_then(|m| paths::ALL.into_iter().find(|r| *r == m.as_str()))
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
        201 => "201",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        404 => "404",
        408 => "408",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_view_drops_tenants_series_only() {
        let text = "# HELP onnxq_jobs_submitted_total Jobs.\n\
                    # TYPE onnxq_jobs_submitted_total counter\n\
                    onnxq_jobs_submitted_total{model=\"mlp128\",kind=\"predict\"} 2\n\
                    onnxq_jobs_submitted_total{model=\"acme~secret\",kind=\"predict\"} 5\n\
                    onnxq_stream_lag{model=\"globex~m\"} 1\n\
                    onnxq_http_requests_total{method=\"GET\",route=\"/v1/models/{model}\",status=\"200\"} 3\n";
        let public = public_view(text);
        assert!(!public.contains('~'), "{public}");
        assert!(!public.contains("secret") && !public.contains("globex"));
        assert!(public.contains("model=\"mlp128\""));
        assert!(public.contains("route=\"/v1/models/{model}\""));
        assert!(public.contains("# TYPE onnxq_jobs_submitted_total counter"));
        assert_eq!(public.lines().count(), 4);
    }

    #[test]
    fn unknown_models_collapse_to_one_label() {
        // No model cache is registered in unit tests: every model is unknown.
        let guard = ModelLabels(());
        let key = Key::from_parts(
            JOBS_SUBMITTED,
            vec![
                Label::new("model", "made-up-7"),
                Label::new("kind", "retrain"),
            ],
        );
        let bounded = guard.bounded(&key);
        let labels: Vec<(&str, &str)> = bounded.labels().map(|l| (l.key(), l.value())).collect();
        assert_eq!(labels, [("model", UNKNOWN_MODEL), ("kind", "retrain")]);
        let other = Key::from_parts(REDIS_ERRORS, vec![Label::new("op", "submit")]);
        assert!(matches!(
            guard.bounded(&other),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
