//! The path templates of every route, and nothing else: the router mounts
//! them, the metrics middleware labels requests with them, and admission
//! tells long-polls and predicts apart by them. A leaf, so any module can
//! name a route without importing the router.
//!
//! The paths are constants so the metrics middleware can map a matched route
//! back to a `&'static str` label without allocating.

pub(crate) const PREDICT: &str = "/v1/models/{model}/predict";
pub(crate) const PREDICT_BATCH: &str = "/v1/models/{model}/predict/batch";
pub(crate) const MODELS: &str = "/v1/models";
pub(crate) const MODEL: &str = "/v1/models/{model}";
pub(crate) const JOBS: &str = "/v1/jobs";
pub(crate) const JOB: &str = "/v1/jobs/{id}";
pub(crate) const CANCEL: &str = "/v1/jobs/{id}/cancel";
pub(crate) const EVENTS: &str = "/v1/jobs/{id}/events";
pub(crate) const WS: &str = "/v1/ws";
pub(crate) const HEALTHZ: &str = "/healthz";
pub(crate) const READYZ: &str = "/readyz";
pub(crate) const METRICS: &str = "/metrics";
pub(crate) const OPENAPI: &str = "/openapi.json";
pub(crate) const VERSIONS: &str = "/v1/models/{model}/versions";
pub(crate) const VERSION: &str = "/v1/models/{model}/versions/{version}";
pub(crate) const PROMOTE: &str = "/v1/models/{model}/promote";
pub(crate) const ROLLBACK: &str = "/v1/models/{model}/rollback";
pub(crate) const RETRAIN: &str = "/v1/models/{model}/retrain";
pub(crate) const DATASETS: &str = "/v1/datasets";
pub(crate) const DATASET: &str = "/v1/datasets/{name}";
pub(crate) const WEBHOOK_SECRET: &str = "/v1/webhooks/secret";
pub(crate) const WEBHOOK_SECRET_ROTATE: &str = "/v1/webhooks/secret/rotate";

pub(crate) const ALL: [&str; 22] = [
    PREDICT,
    PREDICT_BATCH,
    JOBS,
    MODELS,
    MODEL,
    JOB,
    CANCEL,
    EVENTS,
    WS,
    HEALTHZ,
    READYZ,
    METRICS,
    OPENAPI,
    VERSIONS,
    VERSION,
    PROMOTE,
    ROLLBACK,
    RETRAIN,
    DATASETS,
    DATASET,
    WEBHOOK_SECRET,
    WEBHOOK_SECRET_ROTATE,
];
