//! HTTP handlers, one module per resource, and the route table (its paths
//! are in [`crate::paths`]).

pub mod datasets;
pub mod health;
pub mod jobs;
pub mod models;
pub mod predict;
pub mod retrain;
pub mod versions;

use axum::http::Method;
use axum::routing::{MethodRouter, get, post};

use crate::error::ApiError;
use crate::paths::*;
use crate::state::AppState;

/// Which router a route belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health, readiness, metrics and the OpenAPI document: no key, never
    /// shed (an orchestrator must tell "busy" from "dead" exactly when the
    /// API is busiest), also served on the probe reserve and, with operator
    /// detail, on the operator listener.
    Open,
    /// Everything under `/v1`: authenticated, then admitted by the load
    /// shedder.
    Tenant,
}

/// Who an open route answers, set by the router it is mounted in: the
/// public listener leaves tenants out of `/readyz` and `/metrics`, the
/// operator listener (`--ops-listen`) shows everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Public,
    Operator,
}

/// One route: a method on a path, and its handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    /// Builds the handler; called once per router that mounts the route.
    pub handler: fn() -> MethodRouter<AppState>,
}

/// Every route the API serves. The routers ([`crate::Routers`]) are built
/// from this table alone, and the OpenAPI tests check the document against
/// it in both directions, so a route cannot be added without being
/// documented.
pub const TABLE: [Route; 19] = [
    Route {
        method: Method::POST,
        path: PREDICT,
        access: Access::Tenant,
        handler: || post(predict::predict),
    },
    Route {
        method: Method::GET,
        path: MODELS,
        access: Access::Tenant,
        handler: || get(models::list),
    },
    Route {
        method: Method::GET,
        path: MODEL,
        access: Access::Tenant,
        handler: || get(models::get_one),
    },
    Route {
        method: Method::GET,
        path: JOB,
        access: Access::Tenant,
        handler: || get(jobs::get_job),
    },
    Route {
        method: Method::DELETE,
        path: JOB,
        access: Access::Tenant,
        handler: || axum::routing::delete(jobs::cancel),
    },
    Route {
        method: Method::GET,
        path: HEALTHZ,
        access: Access::Open,
        handler: || get(health::healthz),
    },
    Route {
        method: Method::GET,
        path: READYZ,
        access: Access::Open,
        handler: || get(health::readyz),
    },
    Route {
        method: Method::GET,
        path: METRICS,
        access: Access::Open,
        handler: || get(crate::metrics::render),
    },
    Route {
        method: Method::GET,
        path: OPENAPI,
        access: Access::Open,
        handler: || get(crate::openapi::serve),
    },
    Route {
        method: Method::POST,
        path: VERSIONS,
        access: Access::Tenant,
        handler: || post(versions::upload),
    },
    Route {
        method: Method::GET,
        path: VERSIONS,
        access: Access::Tenant,
        handler: || get(versions::list),
    },
    Route {
        method: Method::DELETE,
        path: VERSION,
        access: Access::Tenant,
        handler: || axum::routing::delete(versions::delete),
    },
    Route {
        method: Method::POST,
        path: PROMOTE,
        access: Access::Tenant,
        handler: || post(versions::promote),
    },
    Route {
        method: Method::POST,
        path: ROLLBACK,
        access: Access::Tenant,
        handler: || post(versions::rollback),
    },
    Route {
        method: Method::POST,
        path: RETRAIN,
        access: Access::Tenant,
        handler: || post(retrain::retrain),
    },
    Route {
        method: Method::GET,
        path: DATASETS,
        access: Access::Tenant,
        handler: || get(datasets::list),
    },
    Route {
        method: Method::PUT,
        path: DATASET,
        access: Access::Tenant,
        handler: || axum::routing::put(datasets::put),
    },
    Route {
        method: Method::GET,
        path: DATASET,
        access: Access::Tenant,
        handler: || get(datasets::get_one),
    },
    Route {
        method: Method::DELETE,
        path: DATASET,
        access: Access::Tenant,
        handler: || axum::routing::delete(datasets::delete),
    },
];

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

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
