//! `POST /v1/models/{model}/predict`: validate a request against the model's
//! signature and queue it as a job.
//!
//! Submitting is one Redis round trip ([`ops::submit`]) that also enforces
//! the per-model queue bound and the optional `Idempotency-Key`: a client
//! that lost a 202 can send the same request with the same key and gets the
//! same job back instead of a second one.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use metrics::SharedString;
use shared::digest::sha256_hex;
use shared::model::ModelInfo;
use shared::queue::registry::{self, VersionStatus};

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::extract::{self, JsonBody, PathParam};
use crate::metrics::{UNKNOWN_MODEL, count_rejection, redis_failed};
use crate::state::AppState;
use crate::submit::{Submission, Work};
use crate::text::clip;
use crate::validate::{self, PredictRequest};

/// Bodies up to this size are parsed on the async executor; larger ones (up
/// to `--max-body-bytes`) take tens of milliseconds and go to the blocking
/// pool so they cannot stall other requests.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

/// Extraction failures (content type, body size) come in as values rather
/// than early rejections, so every refused submission is counted here.
pub async fn predict(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    path: Result<PathParam, ApiError>,
    headers: HeaderMap,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let mut model_label = SharedString::const_str(UNKNOWN_MODEL);
    let res = submit(&state, &tenant, path, &headers, body, &mut model_label).await;
    if let Err(e) = &res {
        count_rejection(model_label, e);
    }
    res
}

async fn submit(
    state: &AppState,
    tenant: &Tenant,
    path: Result<PathParam, ApiError>,
    headers: &HeaderMap,
    body: Result<JsonBody, ApiError>,
    model_label: &mut SharedString,
) -> Result<Response, ApiError> {
    let PathParam(public) = path?;
    // From here on the model is named as Redis and the workers know it.
    let model = tenant
        .qualify(&public)
        .ok_or_else(|| ApiError::ModelNotFound(clip(&public)))?;
    let Some(info) = state
        .models()
        .get(&model)
        .await
        .map_err(redis_failed(shared::metric_names::redis_op::GET_MODEL))?
    else {
        return Err(ApiError::ModelNotFound(public));
    };
    *model_label = SharedString::from(model.clone());
    // The job's span starts here, so an exported trace covers validation too.
    let submission = Submission::begin(state.keys(), tenant, &public, headers)?;
    let JsonBody(body) = body?;
    let hash_body = submission.wants_body_hash();
    // One typed parse: the pin is the field serde decoded, escapes and all.
    let (req, body_hash) = off_executor_if_large(&body, move |b| {
        Ok((
            extract::parse::<PredictRequest>(b)?,
            hash_body.then(|| sha256_hex(b)),
        ))
    })
    .await?;
    let pinned = req.model_version;
    let info = match pinned {
        None => info,
        Some(v) => pinned_signature(state, &model, &public, v).await?,
    };
    let deadline = req.deadline.clone();
    let inputs = off_executor_if_large(&body, move |_| validate::to_tensors(req, &info)).await?;
    let deadline_ms = deadline
        .as_ref()
        .map(|d| validate::resolve_deadline(d, shared::time::now_ms()))
        .transpose()?;
    let work = Work::Predict {
        inputs,
        pinned,
        deadline_ms,
    };
    Ok(submission
        .enqueue(state, tenant, work, body_hash)
        .await?
        .into_response())
}

/// Runs `f` on the body here when it is small, else on the blocking pool.
async fn off_executor_if_large<T: Send + 'static>(
    body: &Bytes,
    f: impl FnOnce(&[u8]) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if body.len() <= INLINE_PARSE_BYTES {
        return f(body);
    }
    let body = body.clone();
    tokio::task::spawn_blocking(move || f(&body))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
}

/// The signature of a pinned version, which must exist and be `ready`.
async fn pinned_signature(
    state: &AppState,
    model: &str,
    public: &str,
    version: u32,
) -> Result<Arc<ModelInfo>, ApiError> {
    let mut conn = state.conn();
    let found = registry::version(&mut conn, state.keys(), model, version)
        .await
        .map_err(redis_failed(shared::metric_names::redis_op::REGISTRY))?;
    match found {
        None => Err(ApiError::VersionNotFound {
            model: public.to_owned(),
            version,
        }),
        Some(v) if v.status != VersionStatus::Ready => Err(ApiError::VersionNotReady {
            version,
            status: v.status.as_str(),
        }),
        Some(v) => Ok(Arc::new(v.info(model))),
    }
}
