//! `GET /healthz` (liveness: the process is up) and `GET /readyz`
//! (readiness: it can reach Redis, so it can accept and serve jobs).
//!
//! `/readyz` reports how many distinct workers have heartbeated within
//! [`heartbeat::FRESH_WITHIN`]. On the operator listener it adds, per
//! published model, the workers and the age of the last beat; the public
//! listener leaves that out, because model names are tenants' data (a
//! tenant's model `m` is `{tenant}~m`) and `/readyz` needs no key.
//!
//! Missing workers do not make the API unready: it still accepts jobs,
//! which wait in the queue until workers come (scaling from zero, a worker
//! roll-out), and a readiness probe must not take every API replica out of
//! service because of that. Only a Redis it cannot use makes it answer 503.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use shared::metric_names::redis_op;
use shared::queue::heartbeat;
use shared::redis_errors::count_redis_error;

use crate::error::ApiError;
use crate::paths;
use crate::queue::Queue;

/// Who an open route answers, set by the router it is mounted in: the
/// public listener leaves tenants out of `/readyz` and `/metrics`, the
/// operator listener (`--ops-listen`) shows everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    Public,
    Operator,
}

#[utoipa::path(
    get,
    path = paths::HEALTHZ,
    tag = "operations",
    summary = "Liveness: the process is up",
    responses((status = 200, description = "Always, while the process runs", body = Health))
)]
pub(crate) async fn healthz() -> Response {
    Json(Health { status: "ok" }).into_response()
}

/// `GET /healthz` body.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// Always `ok`.
    status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Ready {
    status: &'static str,
    redis: &'static str,
    /// The freshness window a worker's heartbeat must fall in to count.
    worker_heartbeat_window_seconds: u64,
    /// Distinct workers with a heartbeat in the window, over all models.
    workers: u64,
    /// Per published model; only on the operator listener (`--ops-listen`).
    #[serde(skip_serializing_if = "Option::is_none")]
    models: Option<BTreeMap<String, ModelReadiness>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ModelReadiness {
    workers: u64,
    /// `null` when no worker has beaten for this model within the last
    /// minute (heartbeats are forgotten after [`heartbeat::RETAIN`]).
    last_heartbeat_age_seconds: Option<f64>,
}

/// 200 with the worker count (and, for operators, the per-model detail),
/// or 503 `redis_unavailable`. Bounded by the Redis response limits (two
/// round trips).
#[utoipa::path(
    get,
    path = paths::READYZ,
    tag = "operations",
    summary = "Readiness: Redis answers; how many workers heartbeat",
    responses(
        (status = 200, description = "Ready, with the number of workers that heartbeat (missing workers do not make the API unready). The per-model detail (`models`) is served on the operator listener (`--ops-listen`) only: model names are tenants' data", body = Ready),
        (status = 503, description = "`redis_unavailable`", body = crate::error::Body<'static>,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(crate) async fn readyz(
    State(queue): State<Queue>,
    Extension(audience): Extension<Audience>,
) -> Result<Response, ApiError> {
    let mut conn = queue.conn();
    let beats = match heartbeat::read_all(&mut conn, queue.keys()).await {
        Ok(beats) => beats,
        Err(e) => {
            count_redis_error(redis_op::READYZ, &e);
            // Whatever the cause, the answer to "can you serve?" is no.
            return Err(ApiError::RedisUnavailable(e));
        }
    };
    let body = Ready {
        status: "ready",
        redis: "ok",
        worker_heartbeat_window_seconds: heartbeat::FRESH_WITHIN.as_secs(),
        workers: beats.fresh_workers,
        models: (audience == Audience::Operator).then(|| {
            beats
                .models
                .into_iter()
                .map(|m| {
                    (
                        m.model,
                        ModelReadiness {
                            workers: m.fresh,
                            last_heartbeat_age_seconds: m
                                .last_beat_age_ms
                                .map(|ms| ms as f64 / 1e3),
                        },
                    )
                })
                .collect()
        }),
    };
    Ok(Json(body).into_response())
}
