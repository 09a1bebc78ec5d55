//! HTTP front end of the inference queue: validates predict requests against
//! the signatures workers publish, queues them as jobs in Redis, and serves
//! job state, long-polling until a job finishes.
//!
//! ```text
//!  client ─ POST /v1/models/{m}/predict ─▶ validate ─▶ queue::ops::submit ─▶ 202 + Location
//!  client ─ GET /v1/jobs/{id}?wait=5 ────▶ HGETALL; sleep on Waiters ◀─ events (pub/sub) ◀─ worker PUBLISH
//! ```
//!
//! [`router`] builds the whole HTTP surface from an [`AppState`]; the binary
//! (`main.rs`) only parses [`Config`], binds and serves.

pub mod config;
pub mod error;
pub mod events;
pub mod extract;
pub mod metrics;
pub mod models_cache;
pub mod routes;
pub mod state;
pub mod validate;
pub mod waiters;

use std::any::Any;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;

pub use config::{Config, LogFormat};
pub use error::ApiError;
pub use state::{AppState, StartupError};

/// The application: every route, the JSON 404/405 fallbacks, the body limit,
/// panic containment and per-request metrics and tracing.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(routes::PREDICT, post(routes::predict::predict))
        .route(routes::MODELS, get(routes::models::list))
        .route(routes::MODEL, get(routes::models::get_one))
        .route(routes::JOB, get(routes::jobs::get_job))
        .route(routes::HEALTHZ, get(routes::health::healthz))
        .route(routes::READYZ, get(routes::health::readyz))
        .route(routes::METRICS, get(metrics::render))
        // Must follow the routes: it is applied to the routes present.
        .method_not_allowed_fallback(routes::method_not_allowed)
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(state.max_body_bytes()))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload");
    ApiError::Internal(anyhow::anyhow!("handler panicked: {what}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{StatusCode, header};

    #[test]
    fn a_panic_becomes_a_json_500() {
        let res = panic_response(Box::new("boom"));
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    }
}
