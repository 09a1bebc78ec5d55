//! `GET /v1/models` and `GET /v1/models/{model}`: the signatures workers have
//! published, i.e. what predict requests are validated against. A tenant sees
//! its own models only, under their public names (see [`crate::auth`]).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use shared::model::ModelInfo;
use shared::queue::ops;

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::extract::PathParam;
use crate::metrics::{redis_failed, redis_op};
use crate::models_cache::ModelCache;
use crate::paths;
use crate::queue::Queue;
use crate::text::clip;

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ModelList {
    models: Vec<ModelView>,
}

/// Versions shown per model by these routes (all of them:
/// `GET /v1/models/{model}/versions`).
const VERSIONS_SHOWN: usize = 10;

/// A served model's signature, as a worker published it, with its registry
/// versions.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Model)]
pub(crate) struct ModelView {
    #[serde(flatten)]
    info: ModelInfo,
    /// The registry's current version.
    #[schema(required = true)]
    current_version: Option<u32>,
    /// Newest first, at most 10 (all: `GET /v1/models/{model}/versions`).
    versions: Vec<shared::queue::registry::Version>,
}

async fn view(queue: &Queue, internal: &str, info: ModelInfo) -> Result<ModelView, ApiError> {
    let (current_version, versions) =
        crate::routes::versions::read_versions(queue, internal, VERSIONS_SHOWN).await?;
    Ok(ModelView {
        info,
        current_version,
        versions,
    })
}

#[utoipa::path(
    get,
    path = paths::MODELS,
    tag = "models",
    summary = "Every model some worker has published",
    responses(
        (status = 200, description = "The published model signatures", body = ModelList),
    )
)]
pub(crate) async fn list(
    State(queue): State<Queue>,
    Extension(tenant): Extension<Tenant>,
) -> Result<Response, ApiError> {
    let mut conn = queue.conn();
    let found = ops::list_models(&mut conn, queue.keys())
        .await
        .map_err(redis_failed(redis_op::LIST_MODELS))?;
    let mut models = Vec::with_capacity(found.len());
    for m in found {
        let internal = m.name.clone();
        if let Some(info) = public(&tenant, m) {
            models.push(view(&queue, &internal, info).await?);
        }
    }
    Ok(Json(ModelList { models }).into_response())
}

#[utoipa::path(
    get,
    path = paths::MODEL,
    tag = "models",
    summary = "One model's published signature",
    params(("model" = String, Path, description = "Model name", example = "mlp128")),
    responses(
        (status = 200, description = "The model's signature", body = ModelView),
        (status = 404, description = "`model_not_found`", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn get_one(
    State(queue): State<Queue>,
    State(models): State<Arc<ModelCache>>,
    Extension(tenant): Extension<Tenant>,
    PathParam(model): PathParam,
) -> Result<Response, ApiError> {
    let internal = tenant
        .qualify(&model)
        .ok_or_else(|| ApiError::ModelNotFound(clip(&model)))?;
    match models
        .get(&internal)
        .await
        .map_err(redis_failed(redis_op::GET_MODEL))?
        .and_then(|info| public(&tenant, (*info).clone()))
    {
        Some(info) => Ok(Json(view(&queue, &internal, info).await?).into_response()),
        None => Err(ApiError::ModelNotFound(model)),
    }
}

/// The model as the tenant names it, if it is the tenant's.
fn public(tenant: &Tenant, mut info: ModelInfo) -> Option<ModelInfo> {
    info.name = tenant.public_name(&info.name)?.to_owned();
    Some(info)
}
