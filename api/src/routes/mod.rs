//! HTTP handlers, one module per resource, and the route table's paths.
//!
//! The paths are constants so the metrics middleware can map a matched route
//! back to a `&'static str` label without allocating.

pub mod datasets;
pub mod health;
pub mod jobs;
pub mod models;
pub mod predict;
pub mod retrain;
pub mod versions;

use axum::Extension;
use axum::http::Method;
use axum::routing::{MethodRouter, get, post};

use crate::error::ApiError;
use crate::state::AppState;

pub const PREDICT: &str = "/v1/models/{model}/predict";
pub const MODELS: &str = "/v1/models";
pub const MODEL: &str = "/v1/models/{model}";
pub const JOB: &str = "/v1/jobs/{id}";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/openapi.json";
pub const VERSIONS: &str = "/v1/models/{model}/versions";
pub const VERSION: &str = "/v1/models/{model}/versions/{version}";
pub const PROMOTE: &str = "/v1/models/{model}/promote";
pub const ROLLBACK: &str = "/v1/models/{model}/rollback";
pub const RETRAIN: &str = "/v1/models/{model}/retrain";
pub const DATASETS: &str = "/v1/datasets";
pub const DATASET: &str = "/v1/datasets/{name}";

pub const ALL: [&str; 15] = [
    PREDICT, MODELS, MODEL, JOB, HEALTHZ, READYZ, METRICS, OPENAPI, VERSIONS, VERSION, PROMOTE,
    ROLLBACK, RETRAIN, DATASETS, DATASET,
];

/// One route: a method on a path, and its handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// Builds the handler; called once, when the router is built.
    pub handler: fn() -> MethodRouter<AppState>,
}

/// Every route the API serves. [`crate::router`] is built from this table
/// alone, and the OpenAPI tests check the document against it in both
/// directions, so a route cannot be added without being documented.
pub const TABLE: [Route; 19] = [
    Route {
        method: Method::POST,
        path: PREDICT,
        handler: || post(predict::predict),
    },
    Route {
        method: Method::GET,
        path: MODELS,
        handler: || get(models::list),
    },
    Route {
        method: Method::GET,
        path: MODEL,
        handler: || get(models::get_one),
    },
    Route {
        method: Method::GET,
        path: JOB,
        handler: || get(jobs::get_job),
    },
    Route {
        method: Method::DELETE,
        path: JOB,
        handler: || axum::routing::delete(jobs::cancel),
    },
    Route {
        method: Method::GET,
        path: HEALTHZ,
        handler: || get(health::healthz),
    },
    Route {
        method: Method::GET,
        path: READYZ,
        handler: || get(health::readyz),
    },
    Route {
        method: Method::GET,
        path: METRICS,
        handler: || {
            get(crate::metrics::render).layer(Extension(crate::stream_stats::StreamStats::new()))
        },
    },
    Route {
        method: Method::GET,
        path: OPENAPI,
        handler: || get(crate::openapi::serve),
    },
    Route {
        method: Method::POST,
        path: VERSIONS,
        handler: || post(versions::upload),
    },
    Route {
        method: Method::GET,
        path: VERSIONS,
        handler: || get(versions::list),
    },
    Route {
        method: Method::DELETE,
        path: VERSION,
        handler: || axum::routing::delete(versions::delete),
    },
    Route {
        method: Method::POST,
        path: PROMOTE,
        handler: || post(versions::promote),
    },
    Route {
        method: Method::POST,
        path: ROLLBACK,
        handler: || post(versions::rollback),
    },
    Route {
        method: Method::POST,
        path: RETRAIN,
        handler: || post(retrain::retrain),
    },
    Route {
        method: Method::GET,
        path: DATASETS,
        handler: || get(datasets::list),
    },
    Route {
        method: Method::PUT,
        path: DATASET,
        handler: || axum::routing::put(datasets::put),
    },
    Route {
        method: Method::GET,
        path: DATASET,
        handler: || get(datasets::get_one),
    },
    Route {
        method: Method::DELETE,
        path: DATASET,
        handler: || axum::routing::delete(datasets::delete),
    },
];

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Caps client-supplied text echoed back in error messages.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 128;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
