//! What can stop a training run or its holdout split: bad parameters, data
//! that cannot be trained on, a run that diverged or was stopped, and a
//! scoring failure. Each message says what to change.

use crate::labels::{MAX_CLASSES, NotAClass};
use crate::metrics::EvalError;
use crate::params::ParamError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error("the dataset's target is {dataset:?} but the parameters name {params:?}")]
    TargetMismatch { params: String, dataset: String },
    #[error("{rows} rows: at least 2 are needed (one to train on, one to evaluate)")]
    TooFewRows { rows: usize },
    #[error(
        "data row {row} (0-based): target {value} is not a class index (an integer in 0..{MAX_CLASSES}); use task \"regression\" for a numeric target"
    )]
    InvalidLabel { row: usize, value: f64 },
    #[error("classification needs at least two classes; every target is {label}")]
    SingleClass { label: usize },
    #[error("training diverged at epoch {epoch} (loss is not finite): lower the learning_rate")]
    Diverged { epoch: u32 },
    #[error("training stopped by the caller after epoch {epoch}")]
    Stopped { epoch: u32 },
    #[error(transparent)]
    Eval(#[from] EvalError),
}

impl From<NotAClass> for TrainError {
    fn from(e: NotAClass) -> TrainError {
        TrainError::InvalidLabel {
            row: e.row,
            value: e.value,
        }
    }
}
