//! Training parameters: what a retrain request may set, their defaults, and
//! the rules that reject unusable values before any work starts.

use serde::{Deserialize, Serialize};

/// What the model predicts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Logistic regression over class indices `0..k` (sigmoid for two
    /// classes, softmax for more).
    Classification,
    /// Ridge (L2-regularised least squares) linear regression.
    Regression,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Classification => "classification",
            Task::Regression => "regression",
        }
    }
}

/// Parameters of one training run. Every field has a default, so `{}` in
/// JSON is a valid request (`deny_unknown_fields` catches typos).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainParams {
    /// Name of the target column. Default `"target"`.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, pattern = r"\S"))]
    pub target_column: String,
    /// Default `classification`.
    pub task: Task,
    /// Passes over the training split, 1..=100000. Default 100.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100000))]
    pub epochs: u32,
    /// Step size of gradient descent, in (0, 10]. Default 0.1.
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0, maximum = 10))]
    pub learning_rate: f64,
    /// Strength of the L2 penalty `l2/2 · ‖W‖²` on the weights of the
    /// standardised features (the bias is not penalised), in [0, 1000].
    /// Default 0.001.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1000))]
    pub l2: f64,
    /// Share of the rows held out for evaluation, in [0.05, 0.5]. Default 0.2.
    #[cfg_attr(feature = "openapi", schema(minimum = 0.05, maximum = 0.5))]
    pub holdout_fraction: f64,
    /// Seeds the holdout split and the mini-batch order. Default 0.
    pub seed: u64,
    /// Rows per gradient step, >= 1 (capped at the training split's size).
    /// Default 32.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub batch_size: usize,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            target_column: "target".to_owned(),
            task: Task::Classification,
            epochs: 100,
            learning_rate: 0.1,
            l2: 1e-3,
            holdout_fraction: 0.2,
            seed: 0,
            batch_size: 32,
        }
    }
}

/// Training asked for more work than a deployment allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "epochs x rows x features is {work}, over this deployment's limit of {max}: train on fewer rows or for fewer epochs"
)]
pub struct OverBudget {
    pub work: u64,
    pub max: u64,
}

/// A parameter outside its allowed range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid parameter {param}: {value} (expected {expected})")]
pub struct ParamError {
    pub param: &'static str,
    pub value: String,
    pub expected: &'static str,
}

pub(crate) const MAX_EPOCHS: u32 = 100_000;

impl TrainParams {
    /// The work of training on `rows` rows of `features` features: epochs
    /// × rows × features, the multiply-adds of the forward pass per class.
    /// On one core of the machines this was measured on (2026), a unit
    /// costs the built-in trainer 9 to 13 ns, so 10^10 units is about two
    /// minutes. Saturates rather than overflowing.
    pub fn work(&self, rows: usize, features: usize) -> u64 {
        u64::from(self.epochs)
            .saturating_mul(rows as u64)
            .saturating_mul(features.max(1) as u64)
    }

    /// Refuses training whose [`TrainParams::work`] is over `max`.
    pub fn check_work(&self, rows: usize, features: usize, max: u64) -> Result<u64, OverBudget> {
        let work = self.work(rows, features);
        if work > max {
            return Err(OverBudget { work, max });
        }
        Ok(work)
    }

    /// Checks every parameter; the first one out of range is reported.
    pub fn validate(&self) -> Result<(), ParamError> {
        let bad = |param, value: String, expected| {
            Err(ParamError {
                param,
                value,
                expected,
            })
        };
        if self.target_column.trim().is_empty() {
            return bad(
                "target_column",
                format!("{:?}", self.target_column),
                "a column name",
            );
        }
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return bad("epochs", self.epochs.to_string(), "1..=100000");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 10.0) {
            return bad(
                "learning_rate",
                self.learning_rate.to_string(),
                "a number in (0, 10]",
            );
        }
        if !(0.0..=1000.0).contains(&self.l2) {
            return bad("l2", self.l2.to_string(), "a number in [0, 1000]");
        }
        if !(0.05..=0.5).contains(&self.holdout_fraction) {
            return bad(
                "holdout_fraction",
                self.holdout_fraction.to_string(),
                "a number in [0.05, 0.5]",
            );
        }
        if self.batch_size == 0 {
            return bad("batch_size", "0".to_owned(), "at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_json_fills_them_in() {
        let p: TrainParams = serde_json::from_str("{}").unwrap();
        assert_eq!(p, TrainParams::default());
        p.validate().unwrap();
        let p: TrainParams =
            serde_json::from_str(r#"{"task": "regression", "epochs": 5, "seed": 9}"#).unwrap();
        assert_eq!(p.task, Task::Regression);
        assert_eq!((p.epochs, p.seed, p.batch_size), (5, 9, 32));
        assert!(serde_json::from_str::<TrainParams>(r#"{"epoch": 5}"#).is_err());
        assert!(serde_json::from_str::<TrainParams>(r#"{"task": "ranking"}"#).is_err());
    }

    #[test]
    fn out_of_range_values_are_rejected_by_name() {
        type Change = fn(&mut TrainParams);
        let cases: [(&str, Change); 12] = [
            ("target_column", |p| p.target_column = " ".into()),
            ("epochs", |p| p.epochs = 0),
            ("epochs", |p| p.epochs = MAX_EPOCHS + 1),
            ("learning_rate", |p| p.learning_rate = 0.0),
            ("learning_rate", |p| p.learning_rate = f64::NAN),
            ("learning_rate", |p| p.learning_rate = 11.0),
            ("l2", |p| p.l2 = -1e-9),
            ("l2", |p| p.l2 = f64::INFINITY),
            ("holdout_fraction", |p| p.holdout_fraction = 0.0),
            ("holdout_fraction", |p| p.holdout_fraction = 0.9),
            ("holdout_fraction", |p| p.holdout_fraction = f64::NAN),
            ("batch_size", |p| p.batch_size = 0),
        ];
        for (param, change) in cases {
            let mut p = TrainParams::default();
            change(&mut p);
            let err = p.validate().unwrap_err();
            assert_eq!(err.param, param, "{err}");
            assert!(err.to_string().contains(param), "{err}");
        }
    }
}
