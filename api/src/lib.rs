//! HTTP front end of the inference queue: validates predict requests against
//! the signatures workers publish, queues them as jobs in Redis, and serves
//! job state, long-polling until a job finishes.
//!
//! ```text
//!  client ─ POST /v1/models/{m}/predict ─▶ validate ─▶ queue::ops::submit ─▶ 202 + Location
//!  client ─ GET /v1/jobs/{id}?wait=5 ────▶ HGETALL; sleep on Waiters ◀─ events (pub/sub) ◀─ worker PUBLISH
//!  client ─ DELETE /v1/jobs/{id} ────────▶ queue::ops::cancel (queued → canceled, PUBLISH) ─▶ 200 | 409
//! ```
//!
//! Every request except health, readiness and metrics is admitted by
//! [`admission`]: a slot of the request pool (or of the long-poll pool), a
//! slot of its tenant's share, and a token of its tenant's rate, or a 503 /
//! 429 at once.
//!
//! [`router`] builds the whole HTTP surface from an [`AppState`]; the binary
//! (`main.rs`) only parses [`Config`], binds and serves.

pub mod admission;
pub mod auth;
pub mod config;
pub mod conn_reuse;
pub mod error;
pub mod events;
pub mod extract;
pub mod metrics;
pub mod models_cache;
pub mod openapi;
pub mod routes;
pub mod state;
pub mod stream_stats;
pub mod submit;
pub mod tenants;
pub mod text;
pub mod validate;
pub mod waiters;

use std::any::Any;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;

pub use config::{Config, LogFormat};
pub use error::ApiError;
pub use state::{AppState, StartupError};

/// The application: every route, the JSON 404/405 fallbacks, the body limit,
/// panic containment, load shedding and per-request metrics and tracing.
pub fn router(state: AppState) -> Router {
    // Exactly the routes of the table, which the OpenAPI tests check the
    // document against: add a route there, never here.
    routes::TABLE
        .iter()
        .fold(Router::new(), |app, r| app.route(r.path, (r.handler)()))
        // Must follow the routes: it is applied to the routes present.
        .method_not_allowed_fallback(routes::method_not_allowed)
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(state.max_body_bytes()))
        .layer(CatchPanicLayer::custom(panic_response))
        // Inside authentication: shares and rates are the tenant's.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admission::admit,
        ))
        // Inside `track`, so refused requests are counted and logged too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::middleware::from_fn(conn_reuse::close_if_body_unread))
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
