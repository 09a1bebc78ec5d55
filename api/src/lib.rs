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
//! [`Routers`] builds the whole HTTP surface from an [`AppState`] and the
//! route table, as three routers:
//!
//! ```text
//!  public:   edge layers ─┬─ open routes (/healthz, /readyz, /metrics, /openapi.json; tenants left out)
//!                         └─ authenticate ─▶ admit ─▶ tenant routes (/v1/..., and the 404 fallback)
//!  overflow: edge layers ── open routes; anything else 503 too_many_connections
//!  ops:      edge layers ── open routes with operator detail (every tenant)
//! ```
//!
//! The edge layers, outermost first: `Connection: close` when a body was
//! left unread ([`conn_reuse`]), per-request metrics and tracing
//! ([`metrics::track`]), the request-body deadlines ([`body_deadline`]),
//! panic containment and the body limit. Authentication runs before
//! [`admission`] (the request pools, the tenant's share of them, its rate
//! limits), so admission knows the tenant. The binary (`main.rs`) parses
//! [`Config`], sizes the connection limits ([`conn_limits`]) and serves the
//! routers with [`serve`].

pub mod admission;
pub mod auth;
pub mod body_deadline;
pub mod config;
pub mod conn_limits;
pub mod conn_reuse;
pub mod conn_watch;
pub mod error;
pub mod events;
pub mod extract;
pub mod metrics;
pub mod models_cache;
pub mod openapi;
pub mod paths;
pub mod routes;
pub mod schema;
pub mod serve;
pub mod state;
pub mod stream_stats;
pub mod submit;
pub mod tenants;
pub mod text;
pub mod validate;
pub mod waiters;

use std::any::Any;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use tower_http::catch_panic::CatchPanicLayer;

pub use config::{Config, LogFormat};
pub use error::ApiError;
pub use state::{AppState, StartupError};

use routes::{Access, Audience};
use stream_stats::StreamStats;

/// The routers of the two listeners and of the probe reserve.
pub struct Routers {
    /// The public listener (`--listen`).
    pub public: Router,
    /// Connections admitted past a full table (see [`conn_limits`]).
    pub overflow: Router,
    /// The operator listener (`--ops-listen`).
    pub ops: Router,
}

impl Routers {
    pub fn new(state: AppState) -> Routers {
        // One queue sample cache for all three, so scrapes on either
        // listener share one Redis sample a second.
        let streams = StreamStats::new();
        let tenant = mount(Access::Tenant)
            // Must follow the routes: it is applied to the routes present.
            .method_not_allowed_fallback(routes::method_not_allowed)
            // Here, not on the merged router: an unknown path is
            // authenticated and shed like any tenant route, so it tells an
            // anonymous caller nothing the 401 would not.
            .fallback(routes::not_found)
            .layer(middleware::from_fn_with_state(
                state.clone(),
                admission::admit,
            ))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                auth::authenticate,
            ));
        let public = open(Audience::Public, &streams).merge(tenant);
        let overflow = open(Audience::Public, &streams).fallback(too_many_connections);
        let ops = open(Audience::Operator, &streams).fallback(routes::not_found);
        Routers {
            public: edge(public, &state, "public"),
            overflow: edge(overflow, &state, "public"),
            ops: edge(ops, &state, "ops"),
        }
    }
}

/// The public listener's router alone (what in-process tests drive).
pub fn router(state: AppState) -> Router {
    Routers::new(state).public
}

/// Exactly the routes of the table with `access`, which the OpenAPI tests
/// check the document against: add a route there, never here.
fn mount(access: Access) -> Router<AppState> {
    routes::TABLE
        .iter()
        .filter(|r| r.access == access)
        .fold(Router::new(), |app, r| app.route(r.path, (r.handler)()))
}

/// The open routes, answering `audience`.
fn open(audience: Audience, streams: &StreamStats) -> Router<AppState> {
    mount(Access::Open)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(Extension(audience))
        .layer(Extension(streams.clone()))
}

/// The layers every router shares (see the crate docs for their order);
/// `listener` labels its metrics.
fn edge(router: Router<AppState>, state: &AppState, listener: &'static str) -> Router {
    let bodies = BodyEdge {
        rules: state.body_rules(),
        listener,
    };
    router
        .layer(DefaultBodyLimit::max(state.max_body_bytes()))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(bodies, enforce_body_rules))
        // Inside `track`, so cut-off bodies are counted with their 408.
        .layer(middleware::from_fn(metrics::track))
        .layer(middleware::from_fn(conn_reuse::close_if_body_unread))
        .with_state(state.clone())
}

#[derive(Clone, Copy)]
struct BodyEdge {
    rules: body_deadline::BodyRules,
    listener: &'static str,
}

/// Holds the request body to [`body_deadline`]'s rules. A body that broke
/// one is answered 408 `request_timeout`, whatever the handler made of its
/// failed read (an upload handler would call it too large).
async fn enforce_body_rules(State(edge): State<BodyEdge>, req: Request, next: Next) -> Response {
    let (req, outcome) = body_deadline::wrap(req, edge.rules);
    let res = next.run(req).await;
    match outcome.timed_out() {
        Some(broken) => {
            ::metrics::counter!(
                shared::metric_names::HTTP_TIMEOUTS,
                "listener" => edge.listener,
                "phase" => "body"
            )
            .increment(1);
            ApiError::RequestTimeout(broken.to_string()).into_response()
        }
        None => res,
    }
}

async fn too_many_connections() -> ApiError {
    ApiError::TooManyConnections
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
