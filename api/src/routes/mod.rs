//! HTTP handlers, one module per resource, and the route table's paths.
//!
//! The paths are constants so the metrics middleware can map a matched route
//! back to a `&'static str` label without allocating.

pub mod health;
pub mod jobs;
pub mod models;
pub mod predict;

use crate::error::ApiError;

pub const PREDICT: &str = "/v1/models/{model}/predict";
pub const MODELS: &str = "/v1/models";
pub const MODEL: &str = "/v1/models/{model}";
pub const JOB: &str = "/v1/jobs/{id}";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";

pub const ALL: [&str; 7] = [PREDICT, MODELS, MODEL, JOB, HEALTHZ, READYZ, METRICS];

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
