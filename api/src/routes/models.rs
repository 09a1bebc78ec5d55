//! `GET /v1/models` and `GET /v1/models/{model}`: the signatures workers have
//! published, i.e. what predict requests are validated against. A tenant sees
//! its own models only, under their public names (see [`crate::auth`]).

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
use crate::state::AppState;
use crate::text::clip;

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ModelList {
    #[schema(value_type = Vec<crate::openapi::ModelDoc>)]
    models: Vec<ModelView>,
}

/// Versions shown per model by these routes (all of them:
/// `GET /v1/models/{model}/versions`).
const VERSIONS_SHOWN: usize = 10;

/// A model's signature with its registry versions.
#[derive(Serialize)]
pub(crate) struct ModelView {
    #[serde(flatten)]
    info: ModelInfo,
    current_version: Option<u32>,
    versions: Vec<shared::queue::registry::Version>,
}

async fn view(state: &AppState, internal: &str, info: ModelInfo) -> Result<ModelView, ApiError> {
    let (current_version, versions) =
        crate::routes::versions::read_versions(state, internal, VERSIONS_SHOWN).await?;
    Ok(ModelView {
        info,
        current_version,
        versions,
    })
}

pub async fn list(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
) -> Result<Response, ApiError> {
    let mut conn = state.conn();
    let found = ops::list_models(&mut conn, state.keys())
        .await
        .map_err(redis_failed(redis_op::LIST_MODELS))?;
    let mut models = Vec::with_capacity(found.len());
    for m in found {
        let internal = m.name.clone();
        if let Some(info) = public(&tenant, m) {
            models.push(view(&state, &internal, info).await?);
        }
    }
    Ok(Json(ModelList { models }).into_response())
}

pub async fn get_one(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    PathParam(model): PathParam,
) -> Result<Response, ApiError> {
    let internal = tenant
        .qualify(&model)
        .ok_or_else(|| ApiError::ModelNotFound(clip(&model)))?;
    match state
        .models()
        .get(&internal)
        .await
        .map_err(redis_failed(redis_op::GET_MODEL))?
        .and_then(|info| public(&tenant, (*info).clone()))
    {
        Some(info) => Ok(Json(view(&state, &internal, info).await?).into_response()),
        None => Err(ApiError::ModelNotFound(model)),
    }
}

/// The model as the tenant names it, if it is the tenant's.
fn public(tenant: &Tenant, mut info: ModelInfo) -> Option<ModelInfo> {
    info.name = tenant.public_name(&info.name)?.to_owned();
    Some(info)
}
