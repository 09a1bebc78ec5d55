//! Training core of retrain jobs: fits a linear model on tabular data and
//! exports it as an ONNX model with the same signature conventions as the
//! demo models, so a worker can serve it like any other model.
//!
//! ```text
//! Dataset::from_csv / from_rows ─▶ train(&dataset, &params, on_epoch) ─▶ Trained
//!                                     │ Split (seeded)                    ├─ metrics (holdout)
//!                                     │ standardise, mini-batch GD         ├─ model.predict
//!                                     ▼                                   └─ to_onnx() bytes
//! ```
//!
//! * [`dataset`]: CSV / inline rows → numeric features + target, typed errors.
//! * [`params`]: [`TrainParams`] (serde, defaults, validation).
//! * [`train()`]: logistic (binary or softmax) or ridge regression by
//!   mini-batch gradient descent; a per-epoch callback that can stop it.
//! * [`TrainError`]: why a run or its split stopped; class labels are
//!   checked by one rule for training and scoring alike.
//! * [`split`], [`metrics`]: the seeded holdout split and scoring of any
//!   model's outputs on it (so the deployed model is scored on the same rows),
//!   plus the "not worse" rule.
//! * [`onnx`]: hand-encoded ONNX export (no protobuf dependency).
//! * [`external`]: run a team's own training program under a timeout.
//!
//! Everything is synchronous and CPU-bound: call it from a blocking thread.

pub mod dataset;
mod error;
pub mod external;
mod labels;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod params;
mod proto;
mod rng;
pub mod split;
pub mod train;

pub use dataset::{Dataset, DatasetError, InlineRows, Location};
pub use error::TrainError;
pub use external::{
    ExternalError, ExternalOutput, Stream, parse_progress, run_external, run_external_cancellable,
};
pub use metrics::{EvalError, Metrics, evaluate_classification, evaluate_regression};
pub use model::{LinearModel, Predictions};
pub use params::{OverBudget, ParamError, Task, TrainParams};
pub use split::Split;
pub use train::{Progress, Trained, train};
