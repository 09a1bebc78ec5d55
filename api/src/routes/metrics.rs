//! `GET /metrics`: the recorder's metrics ([`crate::metrics`]), then the
//! queue gauges sampled at scrape time ([`crate::stream_stats`]). The public
//! listener's scrape leaves out every series of a tenant's model
//! ([`public_view`]); the operator listener's shows all.

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::metrics::public_view;
use crate::paths;
use crate::queue::Queue;
use crate::routes::health::Audience;
use crate::stream_stats::StreamStats;

/// `GET /metrics`: the recorder's metrics, then the queue gauges; on the
/// public listener without tenants' models.
#[utoipa::path(
    get,
    path = paths::METRICS,
    tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text exposition format. On the public listener every series of a tenant's model is left out; the operator listener (`--ops-listen`) serves them all", body = String, content_type = "text/plain; version=0.0.4"))
)]
pub(crate) async fn render(
    State(queue): State<Queue>,
    State(handle): State<PrometheusHandle>,
    Extension(streams): Extension<StreamStats>,
    Extension(audience): Extension<Audience>,
) -> Response {
    // Sampled first, so a failure to sample is already counted in this
    // scrape's onnxq_redis_errors_total.
    let gauges = streams.render(&queue).await;
    handle.run_upkeep();
    let mut text = handle.render();
    text.push_str(&gauges);
    if audience == Audience::Public {
        text = public_view(&text);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
