//! HTTP handlers, one module per resource, and the two fallbacks. The route
//! table that mounts them is [`crate::app::TABLE`]; their paths are in
//! [`crate::paths`].

pub mod datasets;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod predict;
pub mod retrain;
pub mod versions;

use crate::error::ApiError;

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
