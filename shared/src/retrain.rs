//! The contract of a `retrain` job as clients see it: the `progress` a
//! worker writes while it runs and the `result` it ends with. The request
//! that starts one travels as [`crate::queue::wire::RetrainSpec`]; the
//! worker's `retrain` module produces both types below and the API serves
//! them verbatim on `GET /v1/jobs/{id}`.

use serde::{Deserialize, Serialize};

use crate::queue::wire::{PromotePolicy, TrainerKind};

/// What a running retrain job is doing.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading and parsing the dataset.
    LoadingData,
    /// Fitting: `epoch` of `epochs` and the training loss are set (for an
    /// external trainer, when it prints `epoch K/N [loss X]` lines).
    Training,
    /// Loading the new model in ONNX Runtime and scoring it and the current
    /// version on the holdout rows.
    Evaluating,
    /// Storing the version and applying the promotion policy.
    Registering,
}

/// The `progress` field of a running retrain job.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The attempt this progress belongs to (a job taken over after a
    /// worker died starts again at a higher attempt).
    pub attempt: u32,
    pub phase: Phase,
    /// 1-based epoch just finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// Mean training loss after `epoch` (log-loss, or mean squared error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    pub updated_at_ms: i64,
}

/// What the job did with the new version.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The new version is now current.
    Promoted,
    /// The new version scored worse than the current one (or could not be
    /// compared with it): registered, not promoted.
    KeptCurrent,
    /// `"promote": "never"`: registered, not promoted.
    RegisteredOnly,
}

/// A version's scores on the holdout rows.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub version: u32,
    /// `{"task": "classification", "accuracy", "log_loss", "rows"}` or
    /// `{"task": "regression", "rmse", "r2", "rows"}`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metrics: serde_json::Value,
}

/// The data a retrain job trained on.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetUsed {
    /// The dataset's name, or `None` for inline rows.
    pub name: Option<String>,
    /// SHA-256 of the CSV bytes read.
    pub sha256: String,
    pub rows: usize,
    pub train_rows: usize,
    pub holdout_rows: usize,
}

/// The `result` of a succeeded retrain job.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainResult {
    /// The version the job registered (status `ready`, source `retrain`).
    pub version: u32,
    pub sha256: String,
    pub decision: Decision,
    /// The decision in words, with both scores when there was a comparison.
    pub reason: String,
    pub promote: PromotePolicy,
    /// The new version's holdout scores, computed by ONNX Runtime on the
    /// exported model (the bytes that will serve).
    pub candidate: Scored,
    /// The version current when the job evaluated, scored on the same rows;
    /// `None` when there was none or it could not be compared.
    pub baseline: Option<Scored>,
    /// The current version when the job ended.
    pub current_version: Option<u32>,
    pub trainer: TrainerKind,
    pub dataset: DatasetUsed,
    /// The training parameters, defaults filled in.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: serde_json::Value,
    /// Fitting (built-in) or the external program's run time.
    pub training_ms: f64,
    /// Epochs run and the last training loss (built-in trainer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_train_loss: Option<f64>,
    /// Largest difference between ONNX Runtime's outputs for the exported
    /// model and the built-in trainer's own predictions on the holdout rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_max_abs_diff: Option<f64>,
}
