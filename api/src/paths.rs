//! The path templates of every route, and nothing else: the router mounts
//! them, the metrics middleware labels requests with them, and admission
//! tells long-polls and predicts apart by them. A leaf, so any module can
//! name a route without importing the router.
//!
//! The paths are constants so the metrics middleware can map a matched route
//! back to a `&'static str` label without allocating.

pub const PREDICT: &str = "/v1/models/{model}/predict";
pub const MODELS: &str = "/v1/models";
pub const MODEL: &str = "/v1/models/{model}";
pub const JOB: &str = "/v1/jobs/{id}";
pub const CANCEL: &str = "/v1/jobs/{id}/cancel";
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

pub const ALL: [&str; 16] = [
    PREDICT, MODELS, MODEL, JOB, CANCEL, HEALTHZ, READYZ, METRICS, OPENAPI, VERSIONS, VERSION,
    PROMOTE, ROLLBACK, RETRAIN, DATASETS, DATASET,
];
