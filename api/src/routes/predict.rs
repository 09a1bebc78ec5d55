//! `POST /v1/models/{model}/predict`: validate a request against the model's
//! signature and queue it as a job.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::job::JobKind;
use shared::model::{ModelInfo, valid_model_name};
use shared::queue::ops;
use shared::queue::wire::JobEnvelope;
use shared::tensor::Tensor;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{self, JsonBody, PathParam};
use crate::metrics::JOBS_SUBMITTED;
use crate::routes::clip;
use crate::state::AppState;
use crate::validate::{self, PredictRequest};

/// Bodies up to this size are parsed on the async executor; larger ones (up
/// to `--max-body-bytes`) take tens of milliseconds and go to the blocking
/// pool so they cannot stall other requests.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

#[derive(Serialize)]
struct Accepted<'a> {
    job_id: Uuid,
    status: &'static str,
    status_url: &'a str,
}

pub async fn predict(
    State(state): State<AppState>,
    PathParam(model): PathParam,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    if !valid_model_name(&model) {
        return Err(ApiError::ModelNotFound(clip(&model)));
    }
    let Some(info) = state.models().get(&model).await? else {
        return Err(ApiError::ModelNotFound(model));
    };
    let inputs = if body.len() <= INLINE_PARSE_BYTES {
        decode(&body, &info)?
    } else {
        tokio::task::spawn_blocking(move || decode(&body, &info))
            .await
            .map_err(|e| ApiError::Internal(e.into()))??
    };
    let job = JobEnvelope {
        id: Uuid::now_v7(),
        kind: JobKind::Predict,
        model,
        inputs,
        submitted_at_ms: shared::time::now_ms(),
        deadline_ms: None,
    };
    let span = tracing::info_span!("submit", job_id = %job.id, model = %job.model);
    async {
        let mut conn = state.conn().await?;
        ops::submit(&mut conn, state.keys(), &job).await?;
        tracing::info!("job queued");
        Ok::<(), ApiError>(())
    }
    .instrument(span)
    .await?;

    let JobEnvelope { id, model, .. } = job;
    metrics::counter!(JOBS_SUBMITTED, "model" => model).increment(1);
    let status_url = format!("/v1/jobs/{id}");
    let body = axum::Json(Accepted {
        job_id: id,
        status: "queued",
        status_url: &status_url,
    })
    .into_response();
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, status_url)], body).into_response())
}

fn decode(body: &[u8], info: &ModelInfo) -> Result<Vec<Tensor>, ApiError> {
    let req: PredictRequest = extract::parse(body)?;
    validate::to_tensors(req, info)
}
