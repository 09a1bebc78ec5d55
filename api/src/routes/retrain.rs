//! `POST /v1/models/{model}/retrain`: queue a `retrain` job. Everything the
//! API can check is checked here, so a request that could never train is a
//! 4xx now rather than a failed job later: the parameters (ranges, unknown
//! keys), the dataset's existence and its columns, or inline rows parsed in
//! full. The job travels on the training stream; a worker's training slot
//! runs it (`worker::retrain`) and reports progress and the outcome on
//! `GET /v1/jobs/{id}`.
//!
//! The model need not exist: retraining an unknown name creates its first
//! version (promoted, since there is nothing to compare it with).

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use shared::digest::sha256_hex;
use shared::model::valid_model_name;
use shared::queue::datasets;
use shared::queue::wire::{PromotePolicy, RetrainSpec, TrainerKind, TrainingData};
use trainer::{InlineRows, TrainParams};

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::extract::{self, JsonBody, PathParam};
use crate::metrics::{redis_failed, redis_op};
use crate::routes::datasets::dataset_key;
use crate::state::AppState;
use crate::submit::{Submission, Work};
use crate::text::clip;

/// `POST /v1/models/{model}/retrain` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrainRequest {
    dataset: Option<String>,
    data: Option<InlineRows>,
    #[serde(default)]
    params: Option<serde_json::Value>,
    #[serde(default)]
    promote: PromotePolicy,
    #[serde(default)]
    trainer: TrainerKind,
}

/// Columns listed in an error message, at most.
const COLUMNS_SHOWN: usize = 12;

pub async fn retrain(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    PathParam(public): PathParam,
    headers: HeaderMap,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    if !valid_model_name(&public) {
        return Err(ApiError::ModelNotFound(clip(&public)));
    }
    let submission = Submission::begin(state.keys(), &tenant, &public, &headers)?;
    let JsonBody(body) = body?;
    let req: RetrainRequest = extract::parse(&body)?;
    let params: TrainParams = match req.params {
        Some(v) => serde_json::from_value(v).map_err(|e| {
            ApiError::InvalidInput(format!("invalid params: {}", clip(&e.to_string())))
        })?,
        None => TrainParams::default(),
    };
    params
        .validate()
        .map_err(|e| ApiError::InvalidInput(e.to_string()))?;

    let (data, source) = match (req.dataset, req.data) {
        (Some(public_ds), None) => {
            let name = dataset_key(&tenant, &public_ds)?;
            let mut conn = state.conn();
            let meta = datasets::meta(&mut conn, state.keys(), &name)
                .await
                .map_err(redis_failed(redis_op::DATASETS))?
                .ok_or_else(|| ApiError::DatasetNotFound(public_ds.clone()))?;
            if !meta.columns.contains(&params.target_column) {
                let mut shown: Vec<String> = meta
                    .columns
                    .iter()
                    .take(COLUMNS_SHOWN)
                    .map(|c| format!("{c:?}"))
                    .collect();
                if meta.columns.len() > COLUMNS_SHOWN {
                    shown.push(format!("... {} more", meta.columns.len() - COLUMNS_SHOWN));
                }
                return Err(ApiError::InvalidInput(format!(
                    "target_column {:?} is not a column of dataset {public_ds:?} (columns: {})",
                    params.target_column,
                    shown.join(", ")
                )));
            }
            let features = meta.columns.len().saturating_sub(1);
            params
                .check_work(meta.rows as usize, features, state.max_train_work())
                .map_err(|e| ApiError::TrainingBudget(e.to_string()))?;
            (TrainingData::Dataset(name), public_ds)
        }
        (None, Some(rows)) => {
            let (check, max_work) = (params.clone(), state.max_train_work());
            let csv = tokio::task::spawn_blocking(move || {
                let ds = rows
                    .into_dataset(&check.target_column)
                    .map_err(|e| ApiError::InvalidDataset(e.to_string()))?;
                check
                    .check_work(ds.n_rows(), ds.n_features(), max_work)
                    .map_err(|e| ApiError::TrainingBudget(e.to_string()))?;
                let all: Vec<usize> = (0..ds.n_rows()).collect();
                String::from_utf8(ds.to_csv(&all))
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("inline rows as CSV: {e}")))
            })
            .await
            .map_err(|e| ApiError::Internal(e.into()))??;
            (TrainingData::InlineCsv(csv), "inline".to_owned())
        }
        _ => {
            return Err(ApiError::InvalidInput(
                "give exactly one of \"dataset\" (a stored dataset's name) or \"data\" ({\"columns\": [...], \"rows\": [[...]]})".into(),
            ));
        }
    };

    let params_json = serde_json::to_string(&params)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("encoding params: {e}")))?;
    let body_hash = submission.wants_body_hash().then(|| sha256_hex(&body));
    let span = submission.span().clone();
    let trace_id = submission.trace_id();
    let spec = RetrainSpec {
        data,
        params_json,
        promote: req.promote,
        trainer: req.trainer,
        quota: Some(state.policies().of(tenant.name()).registry_limits()),
    };
    let accepted = submission
        .enqueue(&state, &tenant, Work::Retrain(spec), body_hash)
        .await?;
    if !accepted.replayed {
        span.in_scope(|| {
            tracing::info!(
                trace_id,
                dataset = source,
                trainer = req.trainer.as_str(),
                promote = req.promote.as_str(),
                "retrain job queued"
            )
        });
    }
    Ok(accepted.into_response())
}
