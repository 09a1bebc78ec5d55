//! HTTP handlers, one module per resource, and the two fallbacks. The route
//! table that mounts them is [`crate::app::TABLE`]; their paths are in
//! [`crate::paths`].

pub(crate) mod batch;
pub(crate) mod datasets;
pub(crate) mod health;
pub(crate) mod job_events;
pub(crate) mod jobs;
pub(crate) mod metrics;
pub(crate) mod models;
pub(crate) mod predict;
pub(crate) mod retrain;
pub(crate) mod search;
pub(crate) mod versions;
pub(crate) mod webhooks;
pub(crate) mod ws;

use crate::error::ApiError;

pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
