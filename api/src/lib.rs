//! HTTP front end of the inference queue: validates predict requests against
//! the signatures workers publish, queues them as jobs in Redis, and serves
//! job state, long-polling until a job finishes.
//!
//! ```text
//!  client ─ POST /v1/models/{m}/predict ─▶ validate ─▶ queue::ops::submit ─▶ 202 + Location
//!  client ─ GET /v1/jobs/{id}?wait=5 ────▶ HGETALL; sleep on Waiters ◀─ events (pub/sub) ◀─ worker PUBLISH
//!  client ─ DELETE /v1/jobs/{id} ────────▶ queue::ops::cancel (queued → canceled, PUBLISH) ─▶ 200 | 409
//!  client ─ GET /v1/jobs/{id}/events ────▶ mark watched + read; sleep on Waiters; an SSE event per change
//!  client ═ /v1/ws (WebSocket) ══════════▶ predict messages through submit; results pushed as jobs end
//! ```
//!
//! [`Routers`] ([`app`]) builds the whole HTTP surface from an [`AppState`]
//! and the route table: see [`app`] for its three routers and their layers.
//! The binary (`main.rs`) parses [`Config`], sizes the connection limits
//! ([`conn_limits`]) and serves the routers with [`serve`].
//!
//! The modules import one another one way only, downwards:
//!
//! ```text
//!  app                     the route table and the routers; nothing imports it
//!  openapi, state          the document; AppState, the parts put together
//!  routes::*               handlers, each on the parts it uses (`State<Queue>`, ...)
//!  webhooks::dispatch      the webhook dispatcher, started by the state
//!  submit, extract, view,  what handlers share (view: the job as clients see it)
//!  validate, stream_stats
//!  admission, auth         the tenant routes' middleware
//!  metrics, events         the recorder and its counters; the event listener
//!  queue, config, tenants, the parts of the state, and leaves (paths, error,
//!  models_cache, waiters   schema, text, the connection modules; webhooks' flags,
//!                          subscription checks and destination guard)
//! ```
//!
//! [`allocator`] sets the process's allocator (jemalloc) for every binary
//! and test that links the crate.

mod admission;
mod allocator;
mod app;
mod auth;
mod body_deadline;
mod config;
pub mod conn_limits;
mod conn_reuse;
pub mod conn_watch;
mod error;
mod events;
mod extract;
mod json_error;
mod metrics;
mod models_cache;
mod openapi;
mod paths;
mod queue;
mod routes;
mod schema;
pub mod serve;
mod state;
mod stream_stats;
mod submit;
mod tenants;
mod text;
mod validate;
mod view;
mod waiters;
mod webhooks;
mod whole;

pub use app::{Routers, router};
pub use config::{Config, LogFormat};
pub use error::ApiError;
pub use state::{AppState, StartupError};
