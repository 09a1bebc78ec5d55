//! Scoring predictions on the holdout split, and the "not worse" rule that
//! decides whether a retrained model may replace the deployed one.
//!
//! The functions take `f32` model outputs, so the trainer's own predictions
//! and a deployed ONNX model's outputs go through the same arithmetic.
//!
//! **Not worse** ([`Metrics::not_worse_than`]), on the same holdout rows:
//! * classification: higher accuracy, or the same accuracy and a log-loss no
//!   higher than the baseline's (plus a relative tolerance of 1e-6, so
//!   float noise between ONNX Runtime and the trainer does not decide);
//! * regression: RMSE no higher than the baseline's (same tolerance). R² is
//!   a decreasing function of RMSE on a fixed holdout, so it agrees.

use ndarray::{ArrayView1, ArrayView2};
use serde::Serialize;

/// Relative slack of the "not worse" comparison of log-loss and RMSE.
pub const NOT_WORSE_TOLERANCE: f64 = 1e-6;

/// Probabilities are clipped to `[EPS, 1 - EPS]` for log-loss (as
/// scikit-learn does), so one confident mistake costs ~34.5, not infinity.
const EPS: f64 = 1e-15;

/// Holdout scores of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Metrics {
    Classification {
        /// Share of rows whose most probable class is the true one.
        accuracy: f64,
        /// Mean negative log-probability of the true class.
        log_loss: f64,
        rows: usize,
    },
    Regression {
        /// Root mean squared error, in target units.
        rmse: f64,
        /// Coefficient of determination, 1 − SS_res / SS_tot.
        r2: f64,
        rows: usize,
    },
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Metrics::Classification {
                accuracy,
                log_loss,
                rows,
            } => write!(
                f,
                "accuracy {accuracy:.4}, log-loss {log_loss:.4} on {rows} holdout rows"
            ),
            Metrics::Regression { rmse, r2, rows } => {
                write!(f, "RMSE {rmse:.6}, R² {r2:.4} on {rows} holdout rows")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("{predictions} predictions for {targets} holdout rows")]
    RowCount { predictions: usize, targets: usize },
    #[error("nothing to evaluate: no rows")]
    NoRows,
    #[error("row {row}: label {label} but the model outputs {columns} class probabilities")]
    LabelOutOfRange {
        row: usize,
        label: usize,
        columns: usize,
    },
    #[error("row {row}: the model output is not a finite number")]
    NonFinite { row: usize },
    #[error("input has {found} feature columns, the model expects {expected}")]
    FeatureCount { expected: usize, found: usize },
    #[error("cannot compare {candidate} metrics with {baseline} metrics")]
    NotComparable {
        candidate: &'static str,
        baseline: &'static str,
    },
    #[error("metrics on {candidate} rows cannot be compared with metrics on {baseline} rows")]
    DifferentRows { candidate: usize, baseline: usize },
}

/// Accuracy and log-loss of class probabilities (`rows × classes`, as a
/// model's `probabilities` output) against class indices. The predicted class
/// of a row is its most probable column (the first one on ties), whatever a
/// model's own `label` output says.
pub fn evaluate_classification(
    probabilities: ArrayView2<f32>,
    labels: &[usize],
) -> Result<Metrics, EvalError> {
    check_rows(probabilities.nrows(), labels.len())?;
    let columns = probabilities.ncols();
    let mut correct = 0usize;
    let mut loss = 0.0;
    for (row, (p, &label)) in probabilities.outer_iter().zip(labels).enumerate() {
        if label >= columns {
            return Err(EvalError::LabelOutOfRange {
                row,
                label,
                columns,
            });
        }
        if p.iter().any(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite { row });
        }
        if argmax(p) == label {
            correct += 1;
        }
        loss -= f64::from(p[label]).clamp(EPS, 1.0 - EPS).ln();
    }
    let n = labels.len() as f64;
    Ok(Metrics::Classification {
        accuracy: correct as f64 / n,
        log_loss: loss / n,
        rows: labels.len(),
    })
}

/// RMSE and R² of predictions against target values.
pub fn evaluate_regression(
    predictions: ArrayView1<f32>,
    targets: &[f64],
) -> Result<Metrics, EvalError> {
    check_rows(predictions.len(), targets.len())?;
    if let Some(row) = predictions.iter().position(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite { row });
    }
    let n = targets.len() as f64;
    let mean = targets.iter().sum::<f64>() / n;
    let ss_res: f64 = predictions
        .iter()
        .zip(targets)
        .map(|(&p, &t)| (f64::from(p) - t).powi(2))
        .sum();
    let ss_tot: f64 = targets.iter().map(|t| (t - mean).powi(2)).sum();
    // A constant target has no variance to explain: R² is 1 for a perfect
    // fit and 0 otherwise (scikit-learn's convention).
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else if ss_res == 0.0 {
        1.0
    } else {
        0.0
    };
    Ok(Metrics::Regression {
        rmse: (ss_res / n).sqrt(),
        r2,
        rows: targets.len(),
    })
}

fn check_rows(predictions: usize, targets: usize) -> Result<(), EvalError> {
    if predictions != targets {
        return Err(EvalError::RowCount {
            predictions,
            targets,
        });
    }
    if targets == 0 {
        return Err(EvalError::NoRows);
    }
    Ok(())
}

pub(crate) fn argmax(p: ArrayView1<f32>) -> usize {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > p[best] {
            best = i;
        }
    }
    best
}

fn within(candidate: f64, baseline: f64) -> bool {
    candidate <= baseline + NOT_WORSE_TOLERANCE * baseline.abs().max(f64::MIN_POSITIVE)
}

impl Metrics {
    /// Number of holdout rows the metrics were computed on.
    pub fn rows(&self) -> usize {
        match self {
            Metrics::Classification { rows, .. } | Metrics::Regression { rows, .. } => *rows,
        }
    }

    pub fn task_name(&self) -> &'static str {
        match self {
            Metrics::Classification { .. } => "classification",
            Metrics::Regression { .. } => "regression",
        }
    }

    /// Whether `self` (a candidate) is not worse than `baseline` (the
    /// deployed model) by the rule in the module docs. Both must be of the
    /// same task and computed on the same number of rows.
    pub fn not_worse_than(&self, baseline: &Metrics) -> Result<bool, EvalError> {
        let (n, bn) = (self.rows(), baseline.rows());
        match (self, baseline) {
            _ if n != bn => Err(EvalError::DifferentRows {
                candidate: n,
                baseline: bn,
            }),
            (
                Metrics::Classification {
                    accuracy: a,
                    log_loss: l,
                    ..
                },
                Metrics::Classification {
                    accuracy: ba,
                    log_loss: bl,
                    ..
                },
            ) => Ok(a > ba || (a == ba && within(*l, *bl))),
            (Metrics::Regression { rmse, .. }, Metrics::Regression { rmse: b, .. }) => {
                Ok(within(*rmse, *b))
            }
            _ => Err(EvalError::NotComparable {
                candidate: self.task_name(),
                baseline: baseline.task_name(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn classification_scores() {
        let p = array![[0.9f32, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]];
        let Metrics::Classification {
            accuracy,
            log_loss,
            rows,
        } = evaluate_classification(p.view(), &[0, 1, 1, 0]).unwrap()
        else {
            panic!("classification expected")
        };
        assert_eq!(rows, 4);
        // Row 3 is a tie: the first column wins, which is right here.
        assert_eq!(accuracy, 0.75);
        let expected = f64::from(-(0.9f32.ln() + 0.8f32.ln() + 0.4f32.ln() + 0.5f32.ln())) / 4.0;
        assert!(
            (log_loss - expected).abs() < 1e-6,
            "{log_loss} vs {expected}"
        );

        // A zero probability for the true class is clipped, not infinite.
        let m = evaluate_classification(array![[1.0f32, 0.0]].view(), &[1]).unwrap();
        let Metrics::Classification { log_loss, .. } = m else {
            panic!()
        };
        assert!((log_loss - 34.538776).abs() < 1e-5, "{log_loss}");
    }

    #[test]
    fn classification_rejects_bad_shapes() {
        let p = array![[0.9f32, 0.1]];
        assert_eq!(
            evaluate_classification(p.view(), &[0, 1]),
            Err(EvalError::RowCount {
                predictions: 1,
                targets: 2
            })
        );
        assert_eq!(
            evaluate_classification(p.view(), &[2]),
            Err(EvalError::LabelOutOfRange {
                row: 0,
                label: 2,
                columns: 2
            })
        );
        assert_eq!(
            evaluate_classification(array![[f32::NAN, 0.1]].view(), &[0]),
            Err(EvalError::NonFinite { row: 0 })
        );
        assert_eq!(
            evaluate_classification(ndarray::Array2::<f32>::zeros((0, 2)).view(), &[]),
            Err(EvalError::NoRows)
        );
    }

    #[test]
    fn regression_scores() {
        let m = evaluate_regression(array![1.0f32, 2.0, 4.0].view(), &[1.0, 3.0, 5.0]).unwrap();
        let Metrics::Regression { rmse, r2, rows } = m else {
            panic!()
        };
        assert_eq!(rows, 3);
        assert!((rmse - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        // mean 3, SS_tot = 8, SS_res = 2
        assert!((r2 - 0.75).abs() < 1e-12);
        let m = evaluate_regression(array![2.0f32, 2.0].view(), &[2.0, 2.0]).unwrap();
        assert!(matches!(m, Metrics::Regression { r2, .. } if r2 == 1.0));
        assert_eq!(
            evaluate_regression(array![1.0f32, f32::INFINITY].view(), &[1.0, 1.0]),
            Err(EvalError::NonFinite { row: 1 })
        );
    }

    #[test]
    fn not_worse_rule() {
        let c = |accuracy, log_loss| Metrics::Classification {
            accuracy,
            log_loss,
            rows: 100,
        };
        assert!(c(0.95, 0.30).not_worse_than(&c(0.94, 0.10)).unwrap());
        assert!(c(0.95, 0.10).not_worse_than(&c(0.95, 0.10)).unwrap());
        assert!(c(0.95, 0.10 + 1e-9).not_worse_than(&c(0.95, 0.10)).unwrap());
        assert!(!c(0.95, 0.11).not_worse_than(&c(0.95, 0.10)).unwrap());
        assert!(!c(0.94, 0.01).not_worse_than(&c(0.95, 0.10)).unwrap());

        let r = |rmse| Metrics::Regression {
            rmse,
            r2: 0.0,
            rows: 100,
        };
        assert!(r(1.0).not_worse_than(&r(1.5)).unwrap());
        assert!(r(1.0).not_worse_than(&r(1.0)).unwrap());
        assert!(!r(1.01).not_worse_than(&r(1.0)).unwrap());
        assert!(r(0.0).not_worse_than(&r(0.0)).unwrap());

        assert_eq!(
            r(1.0).not_worse_than(&c(0.9, 0.1)),
            Err(EvalError::NotComparable {
                candidate: "regression",
                baseline: "classification"
            })
        );
        let other_rows = Metrics::Regression {
            rmse: 1.0,
            r2: 0.0,
            rows: 99,
        };
        assert_eq!(
            r(1.0).not_worse_than(&other_rows),
            Err(EvalError::DifferentRows {
                candidate: 100,
                baseline: 99
            })
        );
    }
}
