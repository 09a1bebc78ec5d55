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
use crate::error::ApiError;
use crate::extract::{self, JsonBody, PathParam};
use crate::metrics::redis_failed;
use crate::state::AppState;
use crate::submit::{Submission, Work};
use crate::text::clip;

/// Versions shown by the listing routes, newest first.
pub const MAX_LISTED: usize = 50;

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
    #[schema(value_type = Vec<crate::openapi::VersionDoc>)]
    versions: Vec<Version>,
}

/// `POST /v1/models/{model}/promote` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PromoteRequest {
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

pub async fn upload(
    State(state): State<AppState>,
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
    let submission = Submission::begin(state.keys(), &tenant, &public, &headers)?;
    let limit = state.max_model_bytes();
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))?;
    if bytes.is_empty() {
        return Err(ApiError::InvalidInput("the model file is empty".into()));
    }
    let sha256 = shared::digest::sha256_hex(&bytes);
    let mut v = Version::new(&bytes, &sha256, Source::Upload, VersionStatus::Validating);
    v.job_id = Some(submission.id());
    let quota = state
        .policies()
        .of(tenant.name())
        .registry_quota(state.keys(), tenant.name());
    let registered = {
        let mut conn = state.conn();
        let registration = registry::register(
            &mut conn,
            state.keys(),
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
            &state,
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

pub async fn list(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    PathParam(public): PathParam,
) -> Result<Response, ApiError> {
    let model = model_name(&tenant, &public)?;
    let (current_version, versions) = read_versions(&state, &model, MAX_LISTED).await?;
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
    state: &AppState,
    model: &str,
    limit: usize,
) -> Result<(Option<u32>, Vec<Version>), ApiError> {
    let mut conn = state.conn();
    let keys = state.keys();
    let current = registry::current(&mut conn, keys, model)
        .await
        .map_err(redis_failed(redis_op::REGISTRY))?;
    let versions = registry::versions(&mut conn, keys, model, limit)
        .await
        .map_err(redis_failed(redis_op::REGISTRY))?;
    Ok((current, versions))
}

pub async fn promote(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    PathParam(public): PathParam,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let model = model_name(&tenant, &public)?;
    let JsonBody(body) = body?;
    let req: PromoteRequest = extract::parse(&body)?;
    let mut conn = state.conn();
    let done = registry::promote(&mut conn, state.keys(), &model, req.version)
        .await
        .map_err(redis_failed(redis_op::REGISTRY))?;
    answer(public, req.version, done)
}

pub async fn rollback(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    PathParam(public): PathParam,
) -> Result<Response, ApiError> {
    let model = model_name(&tenant, &public)?;
    let mut conn = state.conn();
    let done = registry::rollback(&mut conn, state.keys(), &model)
        .await
        .map_err(redis_failed(redis_op::REGISTRY))?;
    answer(public, 0, done)
}

pub async fn delete(
    State(state): State<AppState>,
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
    let tenant_models = state.keys().tenant_models(tenant.name());
    let mut conn = state.conn();
    let done = registry::delete_version(
        &mut conn,
        state.keys(),
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
