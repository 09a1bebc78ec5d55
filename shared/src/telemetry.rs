//! Logging and tracing set-up shared by the binaries, and the few helpers
//! that carry a job's trace from the API to the worker.
//!
//! * Logs: `tracing` with a JSON or a human-readable format
//!   (`LOG_FORMAT=json|pretty`) filtered by `RUST_LOG`. Logs go to stderr;
//!   stdout stays free for machine-readable lines such as the API's
//!   `LISTENING <addr>`. In JSON ([`crate::json_log`], the same lines as
//!   `tracing-subscriber`'s JSON format, cheaper) each line carries the fields of the span it
//!   was logged in under `span`: a job's lines are logged in its span
//!   (`submit` in the API, `job` in the worker), which holds `job_id`,
//!   `model`, `attempt` and `trace_id` (and `parent_span_id` on the worker).
//! * Traces: with an OTLP endpoint (`--otlp-endpoint`, off by default, cargo
//!   feature `otlp`) the job spans listed in [`spans`] are also exported over
//!   OTLP/HTTP (protobuf) through `tracing-opentelemetry`. Only those spans
//!   are exported, never the per-request or library spans, and log events at
//!   info level or above are attached to them as span events. `RUST_LOG`
//!   filters the log output only.
//!
//! The trace ids themselves are [`crate::trace::TraceContext`]s: without OTLP
//! the ids are generated here, with OTLP the OpenTelemetry SDK makes them and
//! they are read back from the exported span, so the stored `traceparent`
//! always names a span that exists in the exported trace.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use tracing::Span;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt as tfmt, prelude::*};

use crate::trace::TraceContext;

/// Names of the spans that make up a job's trace (and the only ones exported
/// over OTLP). The binaries create their spans with these names.
pub mod spans {
    /// API: accepting a job (validate, write to Redis).
    pub const SUBMIT: &str = "submit";
    /// Worker: one attempt of a job, from its start to its result written.
    pub const JOB: &str = "job";
    /// Worker: the ONNX Runtime run the job took part in (maybe batched).
    pub const INFERENCE: &str = "inference";
    /// Worker: the Redis round trip that writes the result.
    pub const WRITE_RESULT: &str = "write result";
    /// Worker: from submission to the start of the attempt (exported only,
    /// with explicit timestamps; never a live `tracing` span).
    pub const QUEUE_WAIT: &str = "queue wait";

    #[cfg(feature = "otlp")]
    pub(crate) const EXPORTED: [&str; 4] = [SUBMIT, JOB, INFERENCE, WRITE_RESULT];
}

/// How to set up logging and tracing.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// `json` or `pretty`; anything else falls back to the compact format.
    pub format: &'a str,
    /// The filter when `RUST_LOG` is unset.
    pub default_filter: &'a str,
    /// OpenTelemetry `service.name` (unless `OTEL_SERVICE_NAME` is set).
    pub service_name: &'static str,
    /// OTLP/HTTP base URL (e.g. `http://collector:4318`); traces go to
    /// `<base>/v1/traces`. `None`: no export.
    pub otlp_endpoint: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "OTLP export was asked for (--otlp-endpoint), but this binary was built without the `otlp` cargo feature"
    )]
    OtlpNotBuilt,
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(String),
    #[error("OTLP export must be set up inside a Tokio runtime")]
    NoRuntime,
}

static OTLP_ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported. Code that would build spans only for the
/// exporter (the worker's per-job child spans) checks this first, so they
/// cost nothing when export is off.
pub fn otlp_enabled() -> bool {
    OTLP_ON.load(Ordering::Relaxed)
}

/// What [`init_with`] set up; flush it with [`Telemetry::shutdown`] before
/// the process exits, or the last spans are lost.
#[must_use = "call shutdown() before exiting so the last spans are exported"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered and stops the exporter. Blocks (up to
    /// the export timeout): call it from a blocking thread, not the executor.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider {
            OTLP_ON.store(false, Ordering::Relaxed);
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "flushing the last spans to the OTLP endpoint failed");
            }
        }
    }
}

/// Installs the global subscriber with logs only. A second call (tests) is
/// harmless: the first subscriber stays.
pub fn init(format: &str, default_filter: &str) -> Telemetry {
    let opts = Options {
        format,
        default_filter,
        service_name: "onnx-queue",
        otlp_endpoint: None,
    };
    // Without an endpoint nothing can fail.
    init_with(&opts).unwrap_or(Telemetry {
        #[cfg(feature = "otlp")]
        provider: None,
    })
}

/// Installs the global subscriber: logs, and OTLP export when an endpoint is
/// given. Must run inside a Tokio runtime when exporting (the exporter's HTTP
/// requests run on it).
pub fn init_with(opts: &Options<'_>) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(opts.default_filter));
    let fmt_layer = if opts.format.eq_ignore_ascii_case("json") {
        tfmt::layer()
            .with_writer(std::io::stderr)
            // As `.json()` would: no colour codes in machine-read lines.
            .with_ansi(false)
            .fmt_fields(crate::json_log::SpanFields)
            .event_format(crate::json_log::JsonLines)
            .with_filter(filter)
            .boxed()
    } else {
        tfmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_filter(filter)
            .boxed()
    };
    let (telemetry, otel_layer) = match opts.otlp_endpoint.filter(|e| !e.trim().is_empty()) {
        None => (
            Telemetry {
                #[cfg(feature = "otlp")]
                provider: None,
            },
            None,
        ),
        #[cfg(not(feature = "otlp"))]
        Some(_) => return Err(TelemetryError::OtlpNotBuilt),
        #[cfg(feature = "otlp")]
        Some(endpoint) => {
            let (provider, layer) = otlp::setup(endpoint, opts.service_name)?;
            (
                Telemetry {
                    provider: Some(provider),
                },
                Some(layer),
            )
        }
    };
    let layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> =
        std::iter::once(fmt_layer).chain(otel_layer).collect();
    // A second init (tests) is harmless; keep the first subscriber.
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok()
    {
        #[cfg(feature = "otlp")]
        OTLP_ON.store(telemetry.provider.is_some(), Ordering::Relaxed);
    }
    Ok(telemetry)
}

/// API: the trace context of a new job's submit span `span` (not yet
/// entered), continuing the client's `traceparent` when there is one, else
/// starting a new trace. The returned context (trace id, this span's id) is
/// what the job stores and the worker continues.
pub fn submit_trace(span: &Span, client: Option<&TraceContext>) -> TraceContext {
    #[cfg(feature = "otlp")]
    if otlp_enabled()
        && let Some(tc) = otlp::adopt(span, client)
    {
        return tc;
    }
    let _ = span;
    TraceContext::child_of(client)
}

/// Worker: makes the job span `span` (not yet entered) a child of the span
/// the API stored with the job, for export. The log fields `trace_id` and
/// `parent_span_id` are the caller's to set when it creates the span.
pub fn continue_trace(span: &Span, parent: &TraceContext) {
    #[cfg(feature = "otlp")]
    if otlp_enabled() {
        otlp::set_parent(span, parent);
    }
    let _ = (span, parent);
}

/// Exports a span that already ended, with explicit times (a job's wait in
/// the queue, which no process was running). A no-op without export.
pub fn record_finished_span(
    name: &'static str,
    parent: &TraceContext,
    start: SystemTime,
    end: SystemTime,
    attributes: &[(&'static str, &dyn fmt::Display)],
) {
    #[cfg(feature = "otlp")]
    if otlp_enabled() {
        otlp::record_finished(name, parent, start, end, attributes);
    }
    let _ = (name, parent, start, end, attributes);
}

/// An error with its `source()` chain on one line (`outer: cause: cause`),
/// each message once: most of our errors already embed their source's
/// message, and a log line should not repeat it.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let msg = cause.to_string();
            if !last.contains(&msg) {
                write!(f, ": {msg}")?;
            }
            last = msg;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    //! The OpenTelemetry half: exporter, tracer provider, the layer that
    //! turns job spans into OpenTelemetry spans, and the conversions between
    //! our [`TraceContext`] and OpenTelemetry's.

    use std::fmt;
    use std::sync::OnceLock;
    use std::time::{Duration, SystemTime};

    use http_body_util::{BodyExt, Full, Limited};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use opentelemetry::trace::{
        Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::{Layer, Registry};

    use super::{TelemetryError, spans};
    use crate::trace::{self, TraceContext};

    /// One export request's time limit, and the exporter's.
    const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
    /// A collector's answer is a small protobuf; refuse to buffer more.
    const MAX_RESPONSE_BYTES: usize = 1 << 20;

    /// For spans built directly (the queue wait), not through `tracing`.
    static TRACER: OnceLock<SdkTracer> = OnceLock::new();

    type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

    pub(super) fn setup(
        endpoint: &str,
        service_name: &'static str,
    ) -> Result<(SdkTracerProvider, BoxedLayer), TelemetryError> {
        let url = traces_url(endpoint)?;
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(RuntimeHttpClient::new(handle))
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let mut resource = Resource::builder();
        // The standard variable wins, as everywhere else in OpenTelemetry.
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service_name);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("onnx-queue");
        let _ = TRACER.set(tracer.clone());
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(|meta| {
                if meta.is_span() {
                    let ours =
                        meta.target().starts_with("api") || meta.target().starts_with("worker");
                    ours && spans::EXPORTED.contains(&meta.name())
                } else {
                    // Events become span events of the exported span they
                    // happen in (and are dropped outside of one).
                    *meta.level() <= tracing::Level::INFO
                }
            }))
            .boxed();
        Ok((provider, layer))
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` semantics: a base URL to which the
    /// signal's path is appended.
    fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
        let base = endpoint.trim().trim_end_matches('/');
        let bad = |reason: &str| TelemetryError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = base
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "only plain http is supported; export to a local collector or agent",
                ));
            }
            _ => return Err(bad("expected http://host:port")),
        }
        if uri.host().is_none() {
            return Err(bad("no host"));
        }
        Ok(format!("{base}/v1/traces"))
    }

    fn remote_context(tc: &TraceContext) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(tc.trace_id.0),
            SpanId::from_bytes(tc.span_id.0),
            TraceFlags::new(tc.flags),
            true,
            TraceState::default(),
        ))
    }

    pub(super) fn adopt(span: &Span, client: Option<&TraceContext>) -> Option<TraceContext> {
        if let Some(parent) = client {
            let _ = span.set_parent(remote_context(parent));
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| TraceContext {
            trace_id: trace::TraceId(sc.trace_id().to_bytes()),
            span_id: trace::SpanId(sc.span_id().to_bytes()),
            flags: sc.trace_flags().to_u8() & trace::FLAG_SAMPLED,
        })
    }

    pub(super) fn set_parent(span: &Span, parent: &TraceContext) {
        let _ = span.set_parent(remote_context(parent));
    }

    pub(super) fn record_finished(
        name: &'static str,
        parent: &TraceContext,
        start: SystemTime,
        end: SystemTime,
        attributes: &[(&'static str, &dyn fmt::Display)],
    ) {
        let Some(tracer) = TRACER.get() else { return };
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(
                attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(*k, v.to_string())),
            )
            .start_with_context(tracer, &remote_context(parent));
        span.end_with_timestamp(end.max(start));
    }

    /// The exporter's HTTP client. The SDK exports from its own thread,
    /// outside any Tokio runtime, by blocking on the export future; hyper
    /// needs a runtime, so each request is spawned onto the process's
    /// runtime and only awaited from the exporter's thread. HTTP/1.1 only:
    /// collectors accept it and it keeps HTTP/2 out of the build.
    #[derive(Debug)]
    struct RuntimeHttpClient {
        handle: tokio::runtime::Handle,
        client: Client<HttpConnector, Full<Bytes>>,
    }

    impl RuntimeHttpClient {
        fn new(handle: tokio::runtime::Handle) -> RuntimeHttpClient {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(EXPORT_TIMEOUT));
            RuntimeHttpClient {
                handle,
                client: Client::builder(TokioExecutor::new()).build(connector),
            }
        }
    }

    #[async_trait::async_trait]
    impl HttpClient for RuntimeHttpClient {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let client = self.client.clone();
            let (parts, body) = request.into_parts();
            let request = Request::from_parts(parts, Full::new(body));
            let task = self.handle.spawn(async move {
                tokio::time::timeout(EXPORT_TIMEOUT, async move {
                    let response = client.request(request).await?;
                    let (parts, body) = response.into_parts();
                    let body = Limited::new(body, MAX_RESPONSE_BYTES)
                        .collect()
                        .await?
                        .to_bytes();
                    Ok::<_, HttpError>(Response::from_parts(parts, body))
                })
                .await?
            });
            task.await?
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn endpoint_is_a_base_url() {
            assert_eq!(
                traces_url("http://127.0.0.1:4318").unwrap(),
                "http://127.0.0.1:4318/v1/traces"
            );
            assert_eq!(
                traces_url(" http://collector:4318/ ").unwrap(),
                "http://collector:4318/v1/traces"
            );
            for bad in [
                "collector:4318",
                "https://collector:4318",
                "http://",
                "not a url",
            ] {
                assert!(traces_url(bad).is_err(), "{bad}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer failed: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner failed")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn error_chain_names_each_cause_once() {
        let e = Outer(Inner(std::io::Error::other("disk on fire")));
        // `Outer` already embeds `Inner`'s message; the io error is new.
        assert_eq!(
            ErrorChain(&e).to_string(),
            "outer failed: inner failed: disk on fire"
        );
    }

    #[test]
    fn without_export_ids_are_generated_and_continue_the_client() {
        let client =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let tc = submit_trace(&Span::none(), Some(&client));
        assert_eq!(tc.trace_id, client.trace_id);
        assert_ne!(tc.span_id, client.span_id);
        let fresh = submit_trace(&Span::none(), None);
        assert_ne!(fresh.trace_id, client.trace_id);
    }
}
