//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API, generated
//! by `utoipa` at start-up.
//!
//! What it owns: the operations (one `#[utoipa::path]` per route of
//! [`crate::app::TABLE`], on the description-only functions below, so the handler
//! modules keep only their code). The schemas of types the API does not
//! define itself (the request body, shared model and job types) are the
//! `…Doc` mirrors of [`crate::schema`]. Response bodies the handlers define
//! (`Accepted`, `Job`, `ModelList`, `ErrorBody`, readiness) derive their
//! schemas in place.
//!
//! Drift is caught by tests: the unit tests of [`crate::app`] check that the
//! document has exactly the routes of [`crate::app::TABLE`] (which the router
//! is built from), and `e2e/tests/openapi.rs` checks every documented route
//! against the running server and real responses against their schemas.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use crate::error::{ApiError, Body as ErrorBody};
use crate::routes::datasets::{DatasetList, DatasetView};
use crate::routes::health::Ready;
use crate::routes::jobs::JobView;
use crate::routes::models::ModelList;
use crate::routes::versions::{PromoteRequest, Promoted, UploadAccepted, VersionList};
use crate::schema::{HealthDoc, ModelDoc, PredictRequestDoc, RetrainRequestDoc};
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
