//! `GET /healthz` (liveness: the process is up) and `GET /readyz`
//! (readiness: it can reach Redis, so it can accept and serve jobs).
//!
//! `/readyz` also reports, per published model, how many workers have
//! heartbeated within [`heartbeat::FRESH_WITHIN`] and how old the last beat
//! is. Missing workers do not make the API unready: it still accepts jobs,
//! which wait in the queue until workers come (scaling from zero, a worker
//! roll-out), and a readiness probe must not take every API replica out of
//! service because of that. Only a Redis it cannot use makes it answer 503.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::metric_names::redis_op;
use shared::queue::heartbeat;

use crate::error::ApiError;
use crate::metrics::count_redis_error;
use crate::state::AppState;

pub async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Ready {
    status: &'static str,
    redis: &'static str,
    /// The freshness window a worker's heartbeat must fall in to count.
    worker_heartbeat_window_seconds: u64,
    models: BTreeMap<String, ModelReadiness>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ModelReadiness {
    workers: u64,
    /// `null` when no worker has beaten for this model within the last
    /// minute (heartbeats are forgotten after [`heartbeat::RETAIN`]).
    last_heartbeat_age_seconds: Option<f64>,
}

/// 200 with the per-model worker detail, or 503 `redis_unavailable`.
/// Bounded by the Redis response limits (two round trips).
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut conn = state.conn();
    let models = match heartbeat::read_all(&mut conn, state.keys()).await {
        Ok(models) => models,
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
        models: models
            .into_iter()
            .map(|m| {
                (
                    m.model,
                    ModelReadiness {
                        workers: m.fresh,
                        last_heartbeat_age_seconds: m.last_beat_age_ms.map(|ms| ms as f64 / 1e3),
                    },
                )
            })
            .collect(),
    };
    Ok(Json(body).into_response())
}
