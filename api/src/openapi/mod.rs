//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API, generated
//! by `utoipa` from the code at start-up.
//!
//! Nothing here is written twice. Each operation is the `#[utoipa::path]` on
//! its handler (in [`crate::routes`]), with the path from [`crate::paths`].
//! Request and response bodies derive their schemas from their own types,
//! shared ones included (`shared` and `trainer` derive behind their `openapi`
//! feature); what a derive cannot say is written with [`crate::schema`]. The
//! answers the layers in front of every handler may give (401, 429, 503, 500,
//! 408, 413) are [`responses::Common`], referenced from each operation.
//!
//! Drift is caught by tests: the unit tests of [`crate::app`] check that the
//! document has exactly the routes of [`crate::app::TABLE`] (which the router
//! is built from), and `e2e/tests/openapi.rs` checks every documented route
//! against the running server, real responses against their schemas, and
//! sends every example in the document.

pub(crate) mod responses;

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use self::responses::Common;
use crate::error::ApiError;
use crate::paths;
use crate::routes::{
    batch, datasets, health, job_events, jobs, metrics, models, predict, retrain, search, versions,
    webhooks, ws,
};

/// The document, rendered once.
#[utoipa::path(
    get,
    path = paths::OPENAPI,
    tag = "operations",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object, content_type = "application/json"))
)]
pub(crate) async fn serve() -> Result<Response, ApiError> {
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
        predict::predict,
        batch::predict_batch,
        search::list_jobs,
        jobs::get_job,
        jobs::cancel,
        jobs::cancel_by_delete,
        job_events::job_events,
        ws::session,
        models::list,
        models::get_one,
        versions::upload,
        versions::list,
        versions::promote,
        versions::rollback,
        versions::delete,
        retrain::retrain,
        datasets::put,
        datasets::get_one,
        datasets::list,
        datasets::delete,
        webhooks::get_secret,
        webhooks::rotate_secret,
        health::healthz,
        health::readyz,
        metrics::render,
        serve
    ),
    components(schemas(crate::error::ErrorCode)),
    modifiers(&Common),
    tags(
        (name = "jobs", description = "Submitting, reading and canceling inference jobs"),
        (name = "models", description = "Model signatures published by workers"),
        (name = "registry", description = "Model versions: upload, validation, promotion and rollback"),
        (name = "training", description = "Datasets and retrain jobs"),
        (name = "webhooks", description = "The secret webhook calls are signed with"),
        (name = "operations", description = "Health, readiness, metrics and this document")
    )
)]
pub(crate) struct ApiDoc;
