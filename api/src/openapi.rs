//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API, generated
//! by `utoipa` at start-up.
//!
//! What it owns: the operations (one `#[utoipa::path]` per route of
//! [`routes::TABLE`], on the description-only functions below, so the handler
//! modules keep only their code) and the schemas of types the API does not
//! define itself (the request body, shared model and job types), written
//! here as `…Doc` mirrors. Response bodies the handlers define (`Accepted`,
//! `Job`, `ModelList`, `ErrorBody`, readiness) derive their schemas in place.
//!
//! Drift is caught by tests: the unit tests below check that the document has
//! exactly the routes of [`routes::TABLE`] (which the router is built from),
//! and `e2e/tests/openapi.rs` checks every documented route against the
//! running server and real responses against their schemas.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::error::{ApiError, Body as ErrorBody};
use crate::routes::datasets::{DatasetList, DatasetView};
use crate::routes::health::Ready;
use crate::routes::jobs::JobView;
use crate::routes::models::ModelList;
use crate::routes::versions::{PromoteRequest, Promoted, UploadAccepted, VersionList};
use crate::submit::AcceptedBody as Accepted;

/// `GET /openapi.json`
pub async fn serve() -> Result<Response, ApiError> {
    static JSON: OnceLock<Result<String, String>> = OnceLock::new();
    let json = JSON.get_or_init(|| ApiDoc::openapi().to_json().map_err(|e| e.to_string()));
    match json {
        Ok(json) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response())
        }
        Err(e) => Err(ApiError::Internal(anyhow::anyhow!(
            "cannot render the OpenAPI document: {e}"
        ))),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "onnx-queue",
        description = "Queue-backed asynchronous ONNX inference: submit a job (202 + job id), then poll or long-poll it.\n\nEvery error is `{\"error\": {\"code\", \"message\"}}` with a stable `code`.\n\nWhen the API runs with `--api-keys-file`, every `/v1` route needs `Authorization: Bearer <key>` (or `X-API-Key`); a key belongs to a tenant, which sees only its own models and jobs.\n\nA request body that stalls (`--body-timeout-ms`) or arrives slower than `--min-body-bytes-per-sec` is answered 408 `request_timeout` and the connection is closed. While the connection table is full (`--max-connections`), a few extra connections are served one request each: health, readiness and metrics answer, anything else is 503 `too_many_connections`.\n\nEvery `/v1` request is admitted first: a slot of the process's request pool (or, for a `?wait` poll, of its long-poll pool; full: 503 `overloaded`), a slot of the tenant's share of that pool (full: 429 `tenant_concurrency_limit`), and, when the tenant has rate limits (`--tenants-file`), a token of its bucket and of the bucket of the model the route names (empty: 429 `rate_limited` with `Retry-After`). Answers drawn from a bucket carry the IETF `RateLimit-Policy` (`tenant;q=<burst>;w=<seconds to refill>` or `model;…`) and `RateLimit` (`<policy>;r=<requests left>;t=<seconds>`) headers. Two credentials (two `Authorization` headers, or one of each kind) are 400 `ambiguous_credentials`. Error messages quote at most 200 characters of what the client sent, and name models as the tenant knows them."
    ),
    paths(
        submit_job,
        get_job,
        cancel_job,
        list_models,
        get_model,
        upload_version,
        list_versions,
        promote_version,
        rollback_version,
        delete_version,
        retrain_model,
        put_dataset,
        get_dataset,
        list_datasets,
        delete_dataset,
        healthz,
        readyz,
        metrics,
        openapi_json
    ),
    tags(
        (name = "jobs", description = "Submitting, reading and canceling inference jobs"),
        (name = "models", description = "Model signatures published by workers"),
        (name = "registry", description = "Model versions: upload, validation, promotion and rollback"),
        (name = "training", description = "Datasets and retrain jobs"),
        (name = "operations", description = "Health, readiness, metrics and this document")
    )
)]
pub struct ApiDoc;

// ------------------------------------------------------------- operations
//
// Description-only functions: `utoipa::path` needs a function to hang the
// operation on; the handlers themselves live in `crate::routes`.

#[utoipa::path(
    post,
    path = "/v1/models/{model}/predict",
    tag = "jobs",
    summary = "Submit a job",
    description = "Validates the request against the model's published signature and queues it. One Redis round trip; the 202 is given only once the job's record and stream entry are written.",
    params(
        ("model" = String, Path, description = "A model some worker serves (see `GET /v1/models`)"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 256 bytes. A repeat with the same key and the same body bytes, for the same model, within the API's `--result-ttl-secs`, answers 202 with the original job (`Idempotent-Replayed: true`) and creates nothing; the same key with a different body is 422 `idempotency_key_reused`."),
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`). A valid one makes the job part of the caller's trace; an invalid or repeated one is ignored and a new trace is started. The job's `trace_id` is returned by `GET /v1/jobs/{id}`."),
    ),
    request_body(content = PredictRequestDoc, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued (or, for a repeated `Idempotency-Key`, the earlier job in its current status)", body = Accepted<'static>,
            headers(
                ("Location" = String, description = "The job's status URL, `/v1/jobs/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is an earlier job of the same `Idempotency-Key`"),
            )),
        (status = 400, description = "`malformed_json`, `non_finite_input`, `invalid_idempotency_key` or `ambiguous_credentials`", body = ErrorBody<'static>),
        (status = 404, description = "`model_not_found`: no worker serves that model", body = ErrorBody<'static>),
        (status = 413, description = "`payload_too_large`: the body is over `--max-body-bytes`", body = ErrorBody<'static>),
        (status = 415, description = "`unsupported_media_type`: the content type is not JSON", body = ErrorBody<'static>),
        (status = 422, description = "`invalid_input` (the message names what was expected) or `idempotency_key_reused`", body = ErrorBody<'static>),
        (status = 429, description = "`queue_full`: the model's queue holds `--max-queue-depth` unfinished jobs; `tenant_queue_full`: the tenant's unfinished jobs (or their payload bytes) are at its quota; `rate_limited` or `tenant_concurrency_limit` (see the admission rules above)", body = ErrorBody<'static>,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 401, description = "`unauthorized`: API keys are configured (`--api-keys-file`) and the request carries none or an unknown one (`Authorization: Bearer <key>` or `X-API-Key`)", body = ErrorBody<'static>,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
#[allow(dead_code)]
fn submit_job() {}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    summary = "Read a job, optionally long-polling until it is terminal",
    params(
        ("id" = uuid::Uuid, Path, description = "The job id from the 202"),
        ("wait" = Option<f64>, Query, minimum = 0, description = "Seconds to wait for the job to become terminal (capped at `--max-wait-secs`); answers as soon as it is"),
    ),
    responses(
        (status = 200, description = "The job", body = JobView<'static>),
        (status = 400, description = "`invalid_job_id` or `invalid_query`", body = ErrorBody<'static>),
        (status = 404, description = "`job_not_found`: unknown or expired", body = ErrorBody<'static>),
        (status = 401, description = "`unauthorized`: API keys are configured (`--api-keys-file`) and the request carries none or an unknown one (`Authorization: Bearer <key>` or `X-API-Key`)", body = ErrorBody<'static>,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
#[allow(dead_code)]
fn get_job() {}

#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    summary = "Cancel a job",
    description = "A queued job is canceled at once (200) and never runs. A running one is marked (202): its worker sees the mark when it renews the job's lease (every third of `--lease-ms`) and stops it, a training between two epochs, an inference by terminating the run, and the job ends `canceled`; poll it. A job that finishes before its worker looks ends as it ended.",
    params(("id" = uuid::Uuid, Path, description = "The job id from the 202")),
    responses(
        (status = 200, description = "Canceled: the job, with `status` `canceled`", body = JobView<'static>),
        (status = 202, description = "Running: the cancel is recorded (`cancel_requested_at`); the job, still `running`", body = JobView<'static>),
        (status = 400, description = "`invalid_job_id`", body = ErrorBody<'static>),
        (status = 404, description = "`job_not_found`: unknown or expired", body = ErrorBody<'static>),
        (status = 409, description = "`job_not_cancelable`: already terminal", body = ErrorBody<'static>),
        (status = 401, description = "`unauthorized`: API keys are configured (`--api-keys-file`) and the request carries none or an unknown one (`Authorization: Bearer <key>` or `X-API-Key`)", body = ErrorBody<'static>,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
#[allow(dead_code)]
fn cancel_job() {}

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    summary = "Every model some worker has published",
    responses(
        (status = 200, description = "The published model signatures", body = ModelList),
        (status = 401, description = "`unauthorized`: API keys are configured (`--api-keys-file`) and the request carries none or an unknown one (`Authorization: Bearer <key>` or `X-API-Key`)", body = ErrorBody<'static>,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
#[allow(dead_code)]
fn list_models() {}

#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "models",
    summary = "One model's published signature",
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The model's signature", body = ModelDoc),
        (status = 404, description = "`model_not_found`", body = ErrorBody<'static>),
        (status = 401, description = "`unauthorized`: API keys are configured (`--api-keys-file`) and the request carries none or an unknown one (`Authorization: Bearer <key>` or `X-API-Key`)", body = ErrorBody<'static>,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
#[allow(dead_code)]
fn get_model() {}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: the process is up",
    responses((status = 200, description = "Always, while the process runs", body = HealthDoc))
)]
#[allow(dead_code)]
fn healthz() {}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: Redis answers; how many workers heartbeat",
    responses(
        (status = 200, description = "Ready, with the number of workers that heartbeat (missing workers do not make the API unready). The per-model detail (`models`) is served on the operator listener (`--ops-listen`) only: model names are tenants' data", body = Ready),
        (status = 503, description = "`redis_unavailable`", body = ErrorBody<'static>,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
#[allow(dead_code)]
fn readyz() {}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text exposition format. On the public listener every series of a tenant's model is left out; the operator listener (`--ops-listen`) serves them all", body = String, content_type = "text/plain; version=0.0.4"))
)]
#[allow(dead_code)]
fn metrics() {}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object, content_type = "application/json"))
)]
#[allow(dead_code)]
fn openapi_json() {}

#[utoipa::path(
    post,
    path = "/v1/models/{model}/versions",
    tag = "registry",
    summary = "Upload a model version",
    description = "Stores the ONNX file as a new version with status `validating` and queues a `validate` job: a worker loads it in ONNX Runtime and marks it `ready` (with its signature) or `invalid`. Poll the job on `status_url`; a failed validation has error code `invalid_model`. An unknown model name creates the model; it serves once a version is promoted.",
    params(("model" = String, Path, description = "Model name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The ONNX file, at most `--max-model-bytes`"),
    responses(
        (status = 202, description = "Stored; validation queued", body = UploadAccepted,
            headers(("Location" = String, description = "The validate job's status URL"))),
        (status = 404, description = "`model_not_found`: the name is not a valid model name", body = ErrorBody<'static>),
        (status = 413, description = "`payload_too_large`: over `--max-model-bytes`", body = ErrorBody<'static>),
        (status = 415, description = "`unsupported_media_type`: the body must be `application/octet-stream`", body = ErrorBody<'static>),
        (status = 403, description = "`quota_exceeded`: the model has as many versions, or the tenant as many models, as its quota allows (`--tenants-file`); delete a version first", body = ErrorBody<'static>),
        (status = 422, description = "`invalid_input`: an empty file", body = ErrorBody<'static>),
        (status = 401, description = "`unauthorized`", body = ErrorBody<'static>),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>),
    )
)]
#[allow(dead_code)]
fn upload_version() {}

#[utoipa::path(
    get,
    path = "/v1/models/{model}/versions",
    tag = "registry",
    summary = "List a model's versions",
    description = "Newest first (at most 50), and which one is current; also for an uploaded model not promoted yet.",
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The versions", body = VersionList),
        (status = 404, description = "`model_not_found`: no version of that model", body = ErrorBody<'static>),
        (status = 401, description = "`unauthorized`", body = ErrorBody<'static>),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>),
    )
)]
#[allow(dead_code)]
fn list_versions() {}

#[utoipa::path(
    post,
    path = "/v1/models/{model}/promote",
    tag = "registry",
    summary = "Make a version current",
    description = "Only a `ready` version can become current. Every worker loads it off the hot path and swaps it in atomically within about a second; jobs already running finish on the version they started with. The replaced version is remembered for rollback.",
    params(("model" = String, Path, description = "Model name")),
    request_body(content = PromoteRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The new current version", body = Promoted),
        (status = 400, description = "`malformed_json`", body = ErrorBody<'static>),
        (status = 404, description = "`version_not_found` or `model_not_found`", body = ErrorBody<'static>),
        (status = 409, description = "`version_not_ready`: the version is `validating` or `invalid`", body = ErrorBody<'static>),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody<'static>),
        (status = 422, description = "`invalid_input`: the body is not `{\"version\": n}`", body = ErrorBody<'static>),
        (status = 401, description = "`unauthorized`", body = ErrorBody<'static>),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>),
    )
)]
#[allow(dead_code)]
fn promote_version() {}

#[utoipa::path(
    post,
    path = "/v1/models/{model}/rollback",
    tag = "registry",
    summary = "Go back to the previous current version",
    description = "Pops the most recent earlier current version that is still `ready`; a body, if any, is ignored.",
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The restored current version", body = Promoted),
        (status = 404, description = "`model_not_found`", body = ErrorBody<'static>),
        (status = 409, description = "`no_previous_version`", body = ErrorBody<'static>),
        (status = 401, description = "`unauthorized`", body = ErrorBody<'static>),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>),
    )
)]
#[allow(dead_code)]
fn rollback_version() {}

#[utoipa::path(
    delete,
    path = "/v1/models/{model}/versions/{version}",
    tag = "registry",
    summary = "Delete a version that is not current",
    description = "Removes the version, its signature and its entries in the rollback history. Its ONNX bytes are deleted too unless another version (of any model) holds the same bytes. The current version cannot be deleted: promote another one first.",
    params(
        ("model" = String, Path, description = "Model name"),
        ("version" = u32, Path, description = "Version number"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`version_not_found` (or `model_not_found` for an invalid model name)", body = ErrorBody<'static>),
        (status = 409, description = "`version_is_current`", body = ErrorBody<'static>),
        (status = 401, description = "`unauthorized`", body = ErrorBody<'static>),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>),
    )
)]
#[allow(dead_code)]
fn delete_version() {}

#[utoipa::path(
    post,
    path = "/v1/models/{model}/retrain",
    tag = "training",
    summary = "Retrain a model (a background job)",
    description = "Queues a `retrain` job on the training stream. A worker trains (built-in logistic/ridge regression, or the worker's `--external-trainer`), loads the new ONNX model in ONNX Runtime, scores it and the current version (if it has the same signature) on the same holdout rows, registers it as a `ready` version (source `retrain`) and promotes it by the `promote` policy. Poll the job: `progress` while it runs, `result` (`RetrainResult`) when it ends. An unknown model name creates the model.",
    params(
        ("model" = String, Path, description = "Model name (need not exist yet)"),
        ("Idempotency-Key" = Option<String>, Header, description = "As for predict: a repeat with the same key and body answers with the earlier job"),
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context, as for predict"),
    ),
    request_body(content = RetrainRequestDoc, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued", body = Accepted<'static>,
            headers(("Location" = String, description = "The job's status URL"))),
        (status = 400, description = "`malformed_json` or `invalid_idempotency_key`", body = ErrorBody<'static>),
        (status = 404, description = "`dataset_not_found` or `model_not_found` (an invalid model name)", body = ErrorBody<'static>),
        (status = 413, description = "`payload_too_large`: over `--max-body-bytes`", body = ErrorBody<'static>),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody<'static>),
        (status = 422, description = "`invalid_input` (both or neither of `dataset`/`data`, an unknown or out-of-range parameter, a target column the dataset lacks), `invalid_dataset` (inline rows that do not parse), `training_budget_exceeded` (epochs × rows × features over `--max-train-work`) or `idempotency_key_reused`", body = ErrorBody<'static>),
        (status = 429, description = "`queue_full`: the training queue holds `--max-queue-depth` unfinished jobs; `tenant_queue_full`, `rate_limited` or `tenant_concurrency_limit`", body = ErrorBody<'static>),
        (status = 401, description = "`unauthorized`", body = ErrorBody<'static>),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>),
    )
)]
#[allow(dead_code)]
fn retrain_model() {}

#[utoipa::path(
    put,
    path = "/v1/datasets/{name}",
    tag = "training",
    summary = "Upload (or replace) a dataset",
    description = "CSV with a header row; every column must hold a finite number in every row (any column may become the target). Parsed before it is stored, in Redis, per tenant. A retrain job reads the dataset when it starts.",
    params(("name" = String, Path, description = "Dataset name (`[A-Za-z0-9_.-]`)")),
    request_body(content = String, content_type = "text/csv", description = "The CSV file, at most `--max-dataset-bytes`"),
    responses(
        (status = 201, description = "Stored", body = DatasetView,
            headers(("Location" = String, description = "`/v1/datasets/{name}`"))),
        (status = 200, description = "Replaced an existing dataset", body = DatasetView),
        (status = 404, description = "`dataset_not_found`: the name is not a valid dataset name", body = ErrorBody<'static>),
        (status = 413, description = "`payload_too_large`: over `--max-dataset-bytes`", body = ErrorBody<'static>),
        (status = 415, description = "`unsupported_media_type`: the body must be `text/csv`", body = ErrorBody<'static>),
        (status = 403, description = "`quota_exceeded`: the tenant's datasets, or their bytes, would go past its quota (`--tenants-file`)", body = ErrorBody<'static>),
        (status = 422, description = "`invalid_dataset`: the message names the line and column at fault, or the limit (10,000 columns, lines of 1 MiB) the file is over", body = ErrorBody<'static>),
        (status = 401, description = "`unauthorized`", body = ErrorBody<'static>),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>),
    )
)]
#[allow(dead_code)]
fn put_dataset() {}

#[utoipa::path(
    get,
    path = "/v1/datasets/{name}",
    tag = "training",
    summary = "A dataset's metadata",
    params(("name" = String, Path, description = "Dataset name")),
    responses(
        (status = 200, description = "The dataset", body = DatasetView),
        (status = 404, description = "`dataset_not_found`", body = ErrorBody<'static>),
        (status = 401, description = "`unauthorized`", body = ErrorBody<'static>),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>),
    )
)]
#[allow(dead_code)]
fn get_dataset() {}

#[utoipa::path(
    get,
    path = "/v1/datasets",
    tag = "training",
    summary = "The caller's datasets",
    responses(
        (status = 200, description = "Sorted by name", body = DatasetList),
        (status = 401, description = "`unauthorized`", body = ErrorBody<'static>),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>),
    )
)]
#[allow(dead_code)]
fn list_datasets() {}

#[utoipa::path(
    delete,
    path = "/v1/datasets/{name}",
    tag = "training",
    summary = "Delete a dataset",
    description = "Retrain jobs that already read it are not affected; queued ones naming it fail `dataset_not_found`.",
    params(("name" = String, Path, description = "Dataset name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`dataset_not_found`", body = ErrorBody<'static>),
        (status = 401, description = "`unauthorized`", body = ErrorBody<'static>),
        (status = 500, description = "`internal`", body = ErrorBody<'static>),
        (status = 503, description = "`overloaded`, `redis_unavailable` or `not_replicated`", body = ErrorBody<'static>),
    )
)]
#[allow(dead_code)]
fn delete_dataset() {}

/// `POST /v1/models/{model}/retrain` body: exactly one of `dataset` or
/// `data`. Unknown fields are refused.
#[derive(Serialize, ToSchema)]
#[schema(as = RetrainRequest)]
pub struct RetrainRequestDoc {
    /// A stored dataset's name (`PUT /v1/datasets/{name}`).
    pub dataset: Option<String>,
    /// Inline rows: one number per column, in the order of `columns`.
    pub data: Option<InlineRowsDoc>,
    pub params: Option<TrainParamsDoc>,
    /// Default `if_not_worse`.
    pub promote: Option<PromotePolicyDoc>,
    /// Default `builtin`.
    pub trainer: Option<TrainerKindDoc>,
}

/// Training rows sent inline.
#[derive(Serialize, ToSchema)]
#[schema(as = InlineRows)]
pub struct InlineRowsDoc {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<f64>>,
}

/// Training parameters; every field is optional (defaults in brackets),
/// unknown fields are refused.
#[derive(Serialize, ToSchema)]
#[schema(as = TrainParams)]
pub struct TrainParamsDoc {
    /// Column to predict ["target"].
    pub target_column: Option<String>,
    /// ["classification"]: logistic regression over class indices 0..k.
    pub task: Option<TaskDoc>,
    /// 1..=100000 [100].
    pub epochs: Option<u32>,
    /// (0, 10] [0.1].
    pub learning_rate: Option<f64>,
    /// L2 penalty on standardised weights, [0, 1000] [0.001].
    pub l2: Option<f64>,
    /// [0.05, 0.5] [0.2].
    pub holdout_fraction: Option<f64>,
    /// Seeds the split and mini-batch order [0].
    pub seed: Option<u64>,
    /// >= 1 [32].
    pub batch_size: Option<u32>,
}

/// What the model predicts.
#[derive(Serialize, ToSchema)]
#[schema(as = Task)]
#[serde(rename_all = "snake_case")]
pub enum TaskDoc {
    Classification,
    Regression,
}

/// When a retrained version becomes current.
#[derive(Serialize, ToSchema)]
#[schema(as = PromotePolicy)]
#[serde(rename_all = "snake_case")]
pub enum PromotePolicyDoc {
    IfNotWorse,
    Always,
    Never,
}

/// Which program trains.
#[derive(Serialize, ToSchema)]
#[schema(as = TrainerKind)]
#[serde(rename_all = "snake_case")]
pub enum TrainerKindDoc {
    Builtin,
    External,
}

/// A running retrain job's progress.
#[derive(Serialize, ToSchema)]
#[schema(as = Progress)]
pub struct ProgressDoc {
    pub attempt: u32,
    /// `loading_data`, `training`, `evaluating` or `registering`.
    pub phase: String,
    pub epoch: Option<u32>,
    pub epochs: Option<u32>,
    /// Mean training loss after `epoch`.
    pub train_loss: Option<f64>,
    pub updated_at_ms: i64,
}

/// A version's holdout scores.
#[derive(Serialize, ToSchema)]
#[schema(as = Scored)]
pub struct ScoredDoc {
    pub version: u32,
    /// `{"task": "classification", "accuracy", "log_loss", "rows"}` or
    /// `{"task": "regression", "rmse", "r2", "rows"}`.
    #[schema(value_type = Object)]
    pub metrics: (),
}

/// The data a retrain job trained on.
#[derive(Serialize, ToSchema)]
#[schema(as = DatasetUsed)]
pub struct DatasetUsedDoc {
    /// `null` for inline rows.
    pub name: Option<String>,
    pub sha256: String,
    pub rows: u64,
    pub train_rows: u64,
    pub holdout_rows: u64,
}

/// A succeeded retrain job's result.
#[derive(Serialize, ToSchema)]
#[schema(as = RetrainResult)]
pub struct RetrainResultDoc {
    /// The version registered.
    pub version: u32,
    pub sha256: String,
    /// `promoted`, `kept_current` or `registered_only`.
    pub decision: String,
    /// The decision in words, with both scores.
    pub reason: String,
    pub promote: PromotePolicyDoc,
    pub candidate: ScoredDoc,
    /// The current version scored on the same rows; `null` when none or
    /// not comparable.
    pub baseline: Option<ScoredDoc>,
    pub current_version: Option<u32>,
    pub trainer: TrainerKindDoc,
    pub dataset: DatasetUsedDoc,
    #[schema(value_type = Object)]
    pub params: (),
    pub training_ms: f64,
    pub epochs: Option<u32>,
    pub final_train_loss: Option<f64>,
    /// Largest difference between ONNX Runtime and the built-in trainer.
    pub onnx_max_abs_diff: Option<f64>,
}

/// A succeeded job's result: predictions, a validated version, or a
/// retrain's outcome.
#[derive(Serialize, ToSchema)]
#[schema(as = AnyJobResult)]
#[serde(untagged)]
pub enum AnyJobResultDoc {
    Predict(JobResultDoc),
    Retrain(RetrainResultDoc),
    Validate(ValidateResultDoc),
}

/// A succeeded `validate` job's result (an upload found loadable).
#[derive(Serialize, ToSchema)]
#[schema(as = ValidateResult)]
pub struct ValidateResultDoc {
    pub model_version: u32,
    /// Always `ready`.
    pub status: String,
    pub sha256: String,
    pub inputs: Vec<TensorSpecDoc>,
    pub outputs: Vec<TensorSpecDoc>,
}

/// One model version in the registry.
#[derive(Serialize, ToSchema)]
#[schema(as = ModelVersion)]
pub struct VersionDoc {
    /// 1, 2, 3… per model.
    pub version: u32,
    /// SHA-256 of the ONNX bytes (hex).
    pub sha256: String,
    pub size: u64,
    pub created_at_ms: i64,
    /// `file`, `upload` or `retrain`.
    pub source: String,
    /// `validating`, `ready`, `invalid` or `quarantined` (a worker died
    /// loading it; never loaded or promoted again).
    pub status: String,
    /// Why validation failed, or why the version was quarantined.
    pub error: Option<String>,
    /// The stable code of `error`: `invalid_model`, `model_external_data`,
    /// `model_tensor_too_large`, `model_too_complex`,
    /// `model_validation_timeout`, `model_validation_memory`,
    /// `model_validation_crashed` or `model_load_crashed`.
    pub error_code: Option<String>,
    pub inputs: Vec<TensorSpecDoc>,
    pub outputs: Vec<TensorSpecDoc>,
    /// Training metrics of a retrained version.
    pub metrics: Option<JsonObject>,
    pub note: Option<String>,
    /// The job that validated or produced it.
    pub job_id: Option<uuid::Uuid>,
}

/// Free-form JSON object.
#[derive(Serialize, ToSchema)]
pub struct JsonObject {}

// --------------------------------------------------------- schema mirrors

/// A job's status.
#[derive(Serialize, ToSchema)]
#[schema(as = JobStatus)]
#[serde(rename_all = "snake_case")]
pub enum JobStatusDoc {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

/// What a job asks for.
#[derive(Serialize, ToSchema)]
#[schema(as = JobKind)]
#[serde(rename_all = "snake_case")]
pub enum JobKindDoc {
    Predict,
    Validate,
    Retrain,
}

/// Tensor element types, named as in the Open Inference Protocol.
#[derive(Serialize, ToSchema)]
#[schema(as = DataType)]
pub enum DataTypeDoc {
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "INT64")]
    Int64,
    #[serde(rename = "BOOL")]
    Bool,
}

/// `POST /v1/models/{model}/predict` body: exactly one of `features` (for a
/// model with a single 2-D FP32 input `[N, n]`: `n` numbers, one row) or
/// Open Inference Protocol `inputs`. Unknown fields are refused.
#[derive(Serialize, ToSchema)]
#[schema(as = PredictRequest)]
pub struct PredictRequestDoc {
    /// One row of the model's single FP32 input.
    pub features: Option<Vec<f32>>,
    /// Every input of the model, by name.
    pub inputs: Option<Vec<InputTensorDoc>>,
    /// Seconds from now (`> 0`, at most 604800) or an RFC 3339 timestamp at
    /// most 7 days ahead: a job not started by then fails with
    /// `deadline_exceeded` instead of running late.
    #[schema(value_type = Option<DeadlineDoc>)]
    pub deadline: Option<()>,
    /// Run on this registry version (see `GET /v1/models/{model}/versions`)
    /// instead of the current one; it must exist (404 `version_not_found`)
    /// and be `ready` (409 `version_not_ready`). The inputs are checked
    /// against that version's signature.
    pub model_version: Option<u32>,
    /// Accepted (KServe clients send it) and ignored.
    pub id: Option<String>,
    /// Accepted (KServe clients send it) and ignored.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<()>,
}

/// A deadline: seconds from now, or an RFC 3339 timestamp.
#[derive(Serialize, ToSchema)]
#[schema(as = Deadline)]
#[serde(untagged)]
pub enum DeadlineDoc {
    Seconds(f64),
    #[schema(format = DateTime)]
    At(String),
}

/// One Open Inference Protocol input tensor.
#[derive(Serialize, ToSchema)]
#[schema(as = InputTensor)]
pub struct InputTensorDoc {
    pub name: String,
    /// Row-major shape; the first dimension is the batch.
    pub shape: Vec<i64>,
    pub datatype: DataTypeDoc,
    /// The values, flat, in row-major order (numbers, or booleans for BOOL).
    #[schema(value_type = Vec<Value>)]
    pub data: Vec<()>,
    /// Accepted and ignored.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<()>,
}

/// One output tensor of a result (Open Inference Protocol form).
#[derive(Serialize, ToSchema)]
#[schema(as = OutputTensor)]
pub struct OutputTensorDoc {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: DataTypeDoc,
    /// The values, flat, in row-major order.
    #[schema(value_type = Vec<Value>)]
    pub data: Vec<()>,
}

/// A succeeded job's result.
#[derive(Serialize, ToSchema)]
#[schema(as = JobResult)]
pub struct JobResultDoc {
    pub outputs: Vec<OutputTensorDoc>,
    /// Present when the first output holds exactly one number.
    pub prediction: Option<f64>,
}

/// Why a job failed: a stable code and a sentence.
#[derive(Serialize, ToSchema)]
#[schema(as = JobError)]
pub struct JobErrorDoc {
    /// E.g. `invalid_input`, `inference_error`, `non_finite_output`,
    /// `deadline_exceeded`, `attempts_exhausted`.
    pub code: String,
    pub message: String,
}

/// A declared input or output of a model. `-1` is a dynamic dimension.
#[derive(Serialize, ToSchema)]
#[schema(as = TensorSpec)]
pub struct TensorSpecDoc {
    pub name: String,
    pub datatype: DataTypeDoc,
    pub shape: Vec<i64>,
}

/// A served model's signature, as a worker published it.
#[derive(Serialize, ToSchema)]
#[schema(as = Model)]
pub struct ModelDoc {
    pub name: String,
    /// The current registry version number, as text.
    pub version: String,
    pub inputs: Vec<TensorSpecDoc>,
    pub outputs: Vec<TensorSpecDoc>,
    /// When a worker last published it (Unix ms).
    pub updated_at_ms: i64,
    /// The registry's current version (the one `version` names).
    #[schema(required = true)]
    pub current_version: Option<u32>,
    /// Newest first, at most 10 (all: `GET /v1/models/{model}/versions`).
    pub versions: Vec<VersionDoc>,
}

/// `GET /healthz` body.
#[derive(Serialize, ToSchema)]
#[schema(as = Health)]
pub struct HealthDoc {
    /// Always `ok`.
    pub status: String,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::http::Method;

    use super::*;
    use crate::routes;

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
        let served: BTreeSet<(String, String)> = routes::TABLE
            .iter()
            .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
            .collect();
        assert_eq!(served.len(), routes::TABLE.len(), "a route is listed twice");
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
        let labels: BTreeSet<&str> = crate::paths::ALL.into_iter().collect();
        let paths: BTreeSet<&str> = routes::TABLE.iter().map(|r| r.path).collect();
        assert_eq!(labels, paths);
    }
}
