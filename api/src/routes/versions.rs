//! The model lifecycle over HTTP: upload a version, list versions, promote
//! one, roll back. The registry itself ([`shared::queue::registry`]) holds
//! the rules; this module maps them to status codes.
//!
//! * `POST /v1/models/{model}/versions` (body: the ONNX file,
//!   `application/octet-stream`, up to `--max-model-bytes`): stores the bytes
//!   and a `validating` version, and queues a `validate` job on the control
//!   stream; 202 with the job to poll. The API has no ONNX Runtime: a worker
//!   loads the bytes and settles the version `ready` or `invalid`.
//! * `GET /v1/models/{model}/versions`: versions, newest first, and which is
//!   current (also for an uploaded model not promoted yet).
//! * `POST /v1/models/{model}/promote {"version": n}`: 200, 404
//!   `version_not_found`, 409 `version_not_ready`.
//! * `POST /v1/models/{model}/rollback`: 200, 409 `no_previous_version`.
//! * `DELETE /v1/models/{model}/versions/{version}`: 204 for a version that
//!   is not current (its bytes go too when no other version holds them),
//!   409 `version_is_current`, 404 `version_not_found`.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shared::metric_names::redis_op;
use shared::queue::registry::{
    self, Deletion, Promotion, RegisterMode, Registration, Source, Version, VersionStatus,
};
use uuid::Uuid;

use crate::auth::Tenant;
use crate::config::RequestLimits;
use crate::error::ApiError;
use crate::extract::{self, JsonBody, PathParam};
use crate::metrics::redis_failed;
use crate::paths;
use crate::queue::Queue;
use crate::submit::{Submission, Work};
use crate::tenants::Policies;
use crate::text::clip;

/// Versions shown by the listing routes, newest first.
pub(crate) const MAX_LISTED: usize = 50;

/// The 202 of an upload.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UploadAccepted {
    /// The `validate` job: poll it on `status_url`.
    job_id: Uuid,
    model: String,
    /// The new version's number (status `validating` until the job ends).
    version: u32,
    status_url: String,
}

/// A model's versions and its current one.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct VersionList {
    model: String,
    #[schema(required = true)]
    current_version: Option<u32>,
    versions: Vec<Version>,
}

/// `POST /v1/models/{model}/promote` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PromoteRequest {
    /// A `ready` version of the model.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "crate::whole::one")]
    version: u32,
}

/// The answer to a promote or rollback.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Promoted {
    model: String,
    current_version: u32,
    /// The version it replaced.
    #[schema(required = true)]
    previous_version: Option<u32>,
}

fn model_name(tenant: &Tenant, public: &str) -> Result<String, ApiError> {
    tenant
        .qualify(public)
        .ok_or_else(|| ApiError::ModelNotFound(clip(public)))
}

#[utoipa::path(
    post,
    path = paths::VERSIONS,
    tag = "registry",
    summary = "Upload a model version",
    description = "Stores the ONNX file as a new version with status `validating` and queues a `validate` job: a worker loads it in ONNX Runtime and marks it `ready` (with its signature) or `invalid`. Poll the job on `status_url`; a failed validation has error code `invalid_model`. An unknown model name creates the model; it serves once a version is promoted.",
    params(("model" = String, Path, description = "Model name", example = "mlp128")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The ONNX file, at most `--max-model-bytes`"),
    responses(
        (status = 202, description = "Stored; validation queued", body = UploadAccepted,
            headers(("Location" = String, description = "The validate job's status URL"))),
        (status = 404, description = "`model_not_found`: the name is not a valid model name", body = crate::error::Body<'static>),
        (status = 413, description = "`payload_too_large`: over `--max-model-bytes`", body = crate::error::Body<'static>),
        (status = 415, description = "`unsupported_media_type`: the body must be `application/octet-stream`", body = crate::error::Body<'static>),
        (status = 403, description = "`quota_exceeded`: the model has as many versions, or the tenant as many models, as its quota allows (`--tenants-file`); delete a version first", body = crate::error::Body<'static>),
        (status = 422, description = "`invalid_input`: an empty file", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn upload(
    State(queue): State<Queue>,
    State(policies): State<Arc<Policies>>,
    State(limits): State<RequestLimits>,
    Extension(tenant): Extension<Tenant>,
    PathParam(public): PathParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let model = model_name(&tenant, &public)?;
    let octets = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/octet-stream"));
    if !octets {
        return Err(ApiError::UnsupportedMediaType);
    }
    let submission = Submission::begin(queue.keys(), &tenant, &public, &headers)?;
    let limit = limits.max_model_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))?;
    if bytes.is_empty() {
        return Err(ApiError::InvalidInput("the model file is empty".into()));
    }
    let sha256 = shared::digest::sha256_hex(&bytes);
    let mut v = Version::new(&bytes, &sha256, Source::Upload, VersionStatus::Validating);
    v.job_id = Some(submission.id());
    let quota = policies
        .of(tenant.name())
        .registry_quota(queue.keys(), tenant.name());
    let registered = {
        let mut conn = queue.conn();
        let registration = registry::register(
            &mut conn,
            queue.keys(),
            &model,
            &bytes,
            &v,
            RegisterMode::Add,
            Some(&quota),
        )
        .await
        .map_err(redis_failed(redis_op::REGISTRY))?;
        match registration {
            Registration::Registered(r) => r,
            Registration::QuotaExceeded(q) => return Err(ApiError::registry_quota(q)),
        }
    };
    let span = submission.span().clone();
    // No Idempotency-Key here: the version is registered before the job
    // is queued, so a replay would leave a second version behind.
    let accepted = submission
        .enqueue(
            &queue,
            &policies,
            &tenant,
            Work::Validate {
                version: registered.version,
            },
            None,
        )
        .await?;
    span.in_scope(|| {
        tracing::info!(
            version = registered.version,
            size = bytes.len(),
            "model version uploaded"
        )
    });
    let body = UploadAccepted {
        job_id: accepted.id,
        model: public,
        version: registered.version,
        status_url: accepted.status_url(),
    };
    Ok(accepted.respond(Json(body)))
}

#[utoipa::path(
    get,
    path = paths::VERSIONS,
    tag = "registry",
    summary = "List a model's versions",
    description = "Newest first (at most 50), and which one is current; also for an uploaded model not promoted yet.",
    params(("model" = String, Path, description = "Model name", example = "mlp128")),
    responses(
        (status = 200, description = "The versions", body = VersionList),
        (status = 404, description = "`model_not_found`: no version of that model", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn list(
    State(queue): State<Queue>,
    Extension(tenant): Extension<Tenant>,
    PathParam(public): PathParam,
) -> Result<Response, ApiError> {
    let model = model_name(&tenant, &public)?;
    let (current_version, versions) = read_versions(&queue, &model, MAX_LISTED).await?;
    if versions.is_empty() {
        return Err(ApiError::ModelNotFound(public));
    }
    Ok(Json(VersionList {
        model: public,
        current_version,
        versions,
    })
    .into_response())
}

/// A model's current version and its versions, newest first.
pub(crate) async fn read_versions(
    queue: &Queue,
    model: &str,
    limit: usize,
) -> Result<(Option<u32>, Vec<Version>), ApiError> {
    let mut conn = queue.conn();
    let keys = queue.keys();
    let current = registry::current(&mut conn, keys, model)
        .await
        .map_err(redis_failed(redis_op::REGISTRY))?;
    let versions = registry::versions(&mut conn, keys, model, limit)
        .await
        .map_err(redis_failed(redis_op::REGISTRY))?;
    Ok((current, versions))
}

#[utoipa::path(
    post,
    path = paths::PROMOTE,
    tag = "registry",
    summary = "Make a version current",
    description = "Only a `ready` version can become current. Every worker loads it off the hot path and swaps it in atomically within about a second; jobs already running finish on the version they started with. The replaced version is remembered for rollback.",
    params(("model" = String, Path, description = "Model name", example = "mlp128")),
    request_body(content = PromoteRequest, content_type = "application/json", example = json!({"version": 1})),
    responses(
        (status = 200, description = "The new current version", body = Promoted),
        (status = 400, description = "`malformed_json`", body = crate::error::Body<'static>),
        (status = 404, description = "`version_not_found` or `model_not_found`", body = crate::error::Body<'static>),
        (status = 409, description = "`version_not_ready`: the version is `validating` or `invalid`", body = crate::error::Body<'static>),
        (status = 415, description = "`unsupported_media_type`", body = crate::error::Body<'static>),
        (status = 422, description = "`invalid_input`: the body is not `{\"version\": n}`", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn promote(
    State(queue): State<Queue>,
    Extension(tenant): Extension<Tenant>,
    PathParam(public): PathParam,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let model = model_name(&tenant, &public)?;
    let JsonBody(body) = body?;
    let req: PromoteRequest = extract::parse(&body)?;
    let mut conn = queue.conn();
    let done = registry::promote(&mut conn, queue.keys(), &model, req.version)
        .await
        .map_err(redis_failed(redis_op::REGISTRY))?;
    answer(public, req.version, done)
}

#[utoipa::path(
    post,
    path = paths::ROLLBACK,
    tag = "registry",
    summary = "Go back to the previous current version",
    description = "Pops the most recent earlier current version that is still `ready`; a body, if any, is ignored.",
    params(("model" = String, Path, description = "Model name", example = "mlp128")),
    responses(
        (status = 200, description = "The restored current version", body = Promoted),
        (status = 404, description = "`model_not_found`", body = crate::error::Body<'static>),
        (status = 409, description = "`no_previous_version`", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn rollback(
    State(queue): State<Queue>,
    Extension(tenant): Extension<Tenant>,
    PathParam(public): PathParam,
) -> Result<Response, ApiError> {
    let model = model_name(&tenant, &public)?;
    let mut conn = queue.conn();
    let done = registry::rollback(&mut conn, queue.keys(), &model)
        .await
        .map_err(redis_failed(redis_op::REGISTRY))?;
    answer(public, 0, done)
}

#[utoipa::path(
    delete,
    path = paths::VERSION,
    tag = "registry",
    summary = "Delete a version that is not current",
    description = "Removes the version, its signature and its entries in the rollback history. Its ONNX bytes are deleted too unless another version (of any model) holds the same bytes. The current version cannot be deleted: promote another one first.",
    params(
        ("model" = String, Path, description = "Model name", example = "mlp128"),
        ("version" = u32, Path, description = "Version number", minimum = 1, example = 1),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`version_not_found` (or `model_not_found` for an invalid model name)", body = crate::error::Body<'static>),
        (status = 409, description = "`version_is_current`", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn delete(
    State(queue): State<Queue>,
    Extension(tenant): Extension<Tenant>,
    axum::extract::Path((public, version)): axum::extract::Path<(String, String)>,
) -> Result<Response, ApiError> {
    let model = model_name(&tenant, &public)?;
    // Anything but a version number names no version: the same 404.
    let Ok(number) = version.parse::<u32>() else {
        return Err(ApiError::VersionNotFound {
            model: public,
            version: 0,
        });
    };
    let tenant_models = queue.keys().tenant_models(tenant.name());
    let mut conn = queue.conn();
    let done = registry::delete_version(
        &mut conn,
        queue.keys(),
        &model,
        number,
        Some(&tenant_models),
    )
    .await
    .map_err(redis_failed(redis_op::REGISTRY))?;
    match done {
        Deletion::Deleted { blob_deleted } => {
            tracing::info!(
                model,
                version = number,
                blob_deleted,
                "model version deleted"
            );
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Deletion::UnknownVersion => Err(ApiError::VersionNotFound {
            model: public,
            version: number,
        }),
        Deletion::IsCurrent => Err(ApiError::VersionIsCurrent(number)),
    }
}

fn answer(model: String, asked: u32, done: Promotion) -> Result<Response, ApiError> {
    match done {
        Promotion::Done { from, to } => {
            tracing::info!(model, from, to, "current model version changed");
            Ok(Json(Promoted {
                model,
                current_version: to,
                previous_version: from,
            })
            .into_response())
        }
        Promotion::UnknownVersion => Err(ApiError::VersionNotFound {
            model,
            version: asked,
        }),
        Promotion::NotReady(status) => Err(ApiError::VersionNotReady {
            version: asked,
            status: status.as_str(),
        }),
        Promotion::NothingToRollBack => Err(ApiError::NoPreviousVersion(model)),
    }
}
