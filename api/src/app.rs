//! The top of the crate: the route table and the routers built from it.
//! Nothing else in the crate imports this module.
//!
//! [`Routers`] builds the whole HTTP surface from an [`AppState`] and the
//! route [`TABLE`], as three routers:
//!
//! ```text
//!  public:   edge layers ─┬─ open routes (/healthz, /readyz, /metrics, /openapi.json; tenants left out)
//!                         └─ admit (authenticate, then shed) ─▶ tenant routes (/v1/..., and the 404 fallback)
//!  overflow: edge layers ── open routes; anything else 503 too_many_connections
//!  ops:      edge layers ── open routes with operator detail (every tenant)
//! ```
//!
//! The edge layers, outermost first: [`edge_layer`] (the request's span and
//! metrics, [`metrics::Tracked`]; the request-body deadlines,
//! [`body_deadline`]; `Connection: close` when a body was left unread,
//! [`conn_reuse`]), panic containment and the body limit. The first three
//! are one middleware, not three: each `from_fn` layer costs a boxed
//! future and a clone of the inner service per request. [`admission`]
//! authenticates first (the same layer, for the same reason), then applies
//! the request pools, the tenant's share of them and its rate limits.

use std::any::Any;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Extension, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::error::ApiError;
use crate::paths::{
    CANCEL, DATASET, DATASETS, EVENTS, HEALTHZ, JOB, JOBS, METRICS, MODEL, MODELS, OPENAPI,
    PREDICT, PREDICT_BATCH, PROMOTE, READYZ, RETRAIN, ROLLBACK, VERSION, VERSIONS, WEBHOOK_SECRET,
    WEBHOOK_SECRET_ROTATE, WS,
};
use crate::routes::health::Audience;
use crate::routes::{
    self, batch, datasets, health, job_events, jobs, models, predict, retrain, search, versions,
    webhooks, ws,
};
use crate::state::AppState;
use crate::stream_stats::StreamStats;
use crate::{admission, body_deadline, conn_reuse, metrics};

/// The routers of the two listeners and of the probe reserve.
pub struct Routers {
    /// The public listener (`--listen`).
    pub public: Router,
    /// Connections admitted past a full table (see [`crate::conn_limits`]).
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
    TABLE
        .iter()
        .filter(|r| r.access == access)
        .fold(Router::new(), |app, r| {
            // A `Method` the table holds is one of the standard ones, which
            // all have a filter; the unit tests mount the whole table.
            let filter = MethodFilter::try_from(r.method.clone())
                .unwrap_or_else(|_| panic!("no method filter for {}", r.method));
            app.route(r.path, (r.handler)(filter))
        })
}

/// The open routes, answering `audience`.
fn open(audience: Audience, streams: &StreamStats) -> Router<AppState> {
    mount(Access::Open)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(Extension(audience))
        .layer(Extension(streams.clone()))
}

/// The layers every router shares (see the module docs for their order);
/// `listener` labels its metrics.
fn edge(router: Router<AppState>, state: &AppState, listener: &'static str) -> Router {
    let bodies = BodyEdge {
        rules: state.body_rules(),
        listener,
    };
    router
        .layer(DefaultBodyLimit::max(state.max_body_bytes()))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(bodies, edge_layer))
        .with_state(state.clone())
}

#[derive(Clone, Copy)]
struct BodyEdge {
    rules: body_deadline::BodyRules,
    listener: &'static str,
}

/// What every request goes through at the edge: its span and metrics, the
/// body deadlines, and `Connection: close` for an unread body. A body that
/// broke a deadline rule is answered 408 `request_timeout`, whatever the
/// handler made of its failed read (an upload handler would call it too
/// large), and counted with that 408.
async fn edge_layer(State(edge): State<BodyEdge>, req: Request, next: Next) -> Response {
    let (tracked, span) = metrics::Tracked::start(&req);
    let (req, body) = body_deadline::wrap(req, edge.rules);
    let mut res = next.run(req).instrument(span).await;
    if let Some(broken) = body.timed_out() {
        ::metrics::counter!(
            shared::metric_names::HTTP_TIMEOUTS,
            "listener" => edge.listener,
            "phase" => "body"
        )
        .increment(1);
        res = ApiError::RequestTimeout(broken.to_string()).into_response();
    }
    tracked.finish(res.status());
    conn_reuse::close_if_body_unread(&mut res, &body);
    res
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

/// Which router a route belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Health, readiness, metrics and the OpenAPI document: no key, never
    /// shed (an orchestrator must tell "busy" from "dead" exactly when the
    /// API is busiest), also served on the probe reserve and, with operator
    /// detail, on the operator listener.
    Open,
    /// Everything under `/v1`: authenticated, then admitted by the load
    /// shedder.
    Tenant,
}

/// One route: a method on a path, and its handler.
pub(crate) struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    /// Builds the handler for `method` (so the two cannot disagree);
    /// called once per router that mounts the route.
    pub handler: fn(MethodFilter) -> MethodRouter<AppState>,
}

/// Every route the API serves. The routers ([`Routers`]) are built
/// from this table alone, and the OpenAPI tests check the document against
/// it in both directions, so a route cannot be added without being
/// documented.
pub(crate) const TABLE: [Route; 26] = [
    Route {
        method: Method::POST,
        path: PREDICT,
        access: Access::Tenant,
        handler: |m| on(m, predict::predict),
    },
    Route {
        method: Method::POST,
        path: PREDICT_BATCH,
        access: Access::Tenant,
        handler: |m| on(m, batch::predict_batch),
    },
    Route {
        method: Method::GET,
        path: WEBHOOK_SECRET,
        access: Access::Tenant,
        handler: |m| on(m, webhooks::get_secret),
    },
    Route {
        method: Method::POST,
        path: WEBHOOK_SECRET_ROTATE,
        access: Access::Tenant,
        handler: |m| on(m, webhooks::rotate_secret),
    },
    Route {
        method: Method::GET,
        path: JOBS,
        access: Access::Tenant,
        handler: |m| on(m, search::list_jobs),
    },
    Route {
        method: Method::GET,
        path: MODELS,
        access: Access::Tenant,
        handler: |m| on(m, models::list),
    },
    Route {
        method: Method::GET,
        path: MODEL,
        access: Access::Tenant,
        handler: |m| on(m, models::get_one),
    },
    Route {
        method: Method::GET,
        path: JOB,
        access: Access::Tenant,
        handler: |m| on(m, jobs::get_job),
    },
    Route {
        method: Method::POST,
        path: CANCEL,
        access: Access::Tenant,
        handler: |m| on(m, jobs::cancel),
    },
    Route {
        method: Method::GET,
        path: EVENTS,
        access: Access::Tenant,
        handler: |m| on(m, job_events::job_events),
    },
    Route {
        method: Method::GET,
        path: WS,
        access: Access::Tenant,
        handler: |m| on(m, ws::session),
    },
    Route {
        method: Method::DELETE,
        path: JOB,
        access: Access::Tenant,
        // Deprecated in the API, and so in Rust; served for one release.
        #[allow(deprecated)]
        handler: |m| on(m, jobs::cancel_by_delete),
    },
    Route {
        method: Method::GET,
        path: HEALTHZ,
        access: Access::Open,
        handler: |m| on(m, health::healthz),
    },
    Route {
        method: Method::GET,
        path: READYZ,
        access: Access::Open,
        handler: |m| on(m, health::readyz),
    },
    Route {
        method: Method::GET,
        path: METRICS,
        access: Access::Open,
        handler: |m| on(m, routes::metrics::render),
    },
    Route {
        method: Method::GET,
        path: OPENAPI,
        access: Access::Open,
        handler: |m| on(m, crate::openapi::serve),
    },
    Route {
        method: Method::POST,
        path: VERSIONS,
        access: Access::Tenant,
        handler: |m| on(m, versions::upload),
    },
    Route {
        method: Method::GET,
        path: VERSIONS,
        access: Access::Tenant,
        handler: |m| on(m, versions::list),
    },
    Route {
        method: Method::DELETE,
        path: VERSION,
        access: Access::Tenant,
        handler: |m| on(m, versions::delete),
    },
    Route {
        method: Method::POST,
        path: PROMOTE,
        access: Access::Tenant,
        handler: |m| on(m, versions::promote),
    },
    Route {
        method: Method::POST,
        path: ROLLBACK,
        access: Access::Tenant,
        handler: |m| on(m, versions::rollback),
    },
    Route {
        method: Method::POST,
        path: RETRAIN,
        access: Access::Tenant,
        handler: |m| on(m, retrain::retrain),
    },
    Route {
        method: Method::GET,
        path: DATASETS,
        access: Access::Tenant,
        handler: |m| on(m, datasets::list),
    },
    Route {
        method: Method::PUT,
        path: DATASET,
        access: Access::Tenant,
        handler: |m| on(m, datasets::put),
    },
    Route {
        method: Method::GET,
        path: DATASET,
        access: Access::Tenant,
        handler: |m| on(m, datasets::get_one),
    },
    Route {
        method: Method::DELETE,
        path: DATASET,
        access: Access::Tenant,
        handler: |m| on(m, datasets::delete),
    },
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::http::{StatusCode, header};
    use utoipa::OpenApi;

    use super::*;
    use crate::openapi::ApiDoc;
    use crate::paths;

    fn documented() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if Method::from_bytes(method.to_uppercase().as_bytes()).is_ok()
                    && !matches!(method.as_str(), "parameters" | "summary" | "description")
                {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_document_has_exactly_the_routes_the_router_serves() {
        let served: BTreeSet<(String, String)> = TABLE
            .iter()
            .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
            .collect();
        assert_eq!(served.len(), TABLE.len(), "a route is listed twice");
        let documented = documented();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
        );
    }

    #[test]
    fn metrics_route_labels_cover_the_table() {
        let labels: BTreeSet<&str> = paths::ALL.into_iter().collect();
        let paths: BTreeSet<&str> = TABLE.iter().map(|r| r.path).collect();
        assert_eq!(labels, paths);
    }

    #[test]
    fn a_panic_becomes_a_json_500() {
        let res = panic_response(Box::new("boom"));
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn only_probes_metrics_and_the_document_are_open() {
        let open: Vec<&str> = TABLE
            .iter()
            .filter(|r| r.access == Access::Open)
            .map(|r| r.path)
            .collect();
        assert_eq!(open, [HEALTHZ, READYZ, METRICS, OPENAPI]);
        assert!(
            TABLE
                .iter()
                .filter(|r| r.access == Access::Tenant)
                .all(|r| r.path.starts_with("/v1/")),
            "every tenant route is under /v1"
        );
    }
}
