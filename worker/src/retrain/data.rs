//! A retrain job's rows: its parameters checked, the named dataset read
//! from Redis when the job starts (so a dataset replaced while the job
//! waited is the one trained on; its hash goes in the result) or the inline
//! rows taken as sent, parsed with the target column, and the work they
//! make checked against `--max-train-work`.

use std::sync::Arc;

use shared::digest::sha256_hex;
use shared::model::public_name;
use shared::queue::datasets;
use shared::queue::wire::{RetrainSpec, TrainingData};
use trainer::{Dataset, TrainParams};

use super::{Env, blocking, unavailable};
use crate::error::JobFailure;

/// The data a job trains on, parsed.
pub(super) struct Data {
    pub(super) dataset: Arc<Dataset>,
    /// The dataset's name as its tenant knows it; `None` for inline rows.
    pub(super) name: Option<String>,
    pub(super) sha256: String,
}

/// The job's parameters and rows, checked again: the API checked them at
/// submit, but a dataset can change while the job waits.
pub(super) async fn load(
    env: &Env<'_>,
    spec: &RetrainSpec,
) -> Result<(TrainParams, Data), JobFailure> {
    let params: TrainParams = serde_json::from_str(&spec.params_json)
        .map_err(|e| JobFailure::InvalidPayload(format!("retrain parameters: {e}")))?;
    params
        .validate()
        .map_err(|e| JobFailure::InvalidPayload(e.to_string()))?;
    let data = read(env, spec, &params).await?;
    params
        .check_work(
            data.dataset.n_rows(),
            data.dataset.n_features(),
            env.config.max_work,
        )
        .map_err(|e| JobFailure::TrainingBudget(e.to_string()))?;
    Ok((params, data))
}

async fn read(env: &Env<'_>, spec: &RetrainSpec, params: &TrainParams) -> Result<Data, JobFailure> {
    let (bytes, name) = match &spec.data {
        TrainingData::Dataset(internal) => {
            let public = public_name(internal).to_owned();
            let mut conn = env.pool.get();
            match datasets::get(&mut conn, env.keys, internal).await {
                Ok(Some((csv, _))) => (csv, Some(public)),
                Ok(None) => return Err(JobFailure::DatasetNotFound(public)),
                Err(e) => return Err(unavailable(e)),
            }
        }
        TrainingData::InlineCsv(text) => (text.clone().into_bytes(), None),
    };
    let target = params.target_column.clone();
    let (sha256, parsed) = blocking(&env.span, move || {
        (sha256_hex(&bytes), Dataset::from_csv(&bytes, &target))
    })
    .await?;
    let dataset = parsed.map_err(|e| JobFailure::InvalidDataset(e.to_string()))?;
    Ok(Data {
        dataset: Arc::new(dataset),
        name,
        sha256,
    })
}
