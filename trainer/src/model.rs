//! A trained linear model: feature standardisation followed by one affine
//! map, plus the link that turns its output into probabilities or values.
//! The ONNX export (`crate::onnx`) computes exactly the same graph.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::metrics::EvalError;
use crate::params::Task;

/// How the affine output becomes a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// One logit column; probabilities `[1 - σ(z), σ(z)]`.
    Sigmoid,
    /// One logit column per class.
    Softmax,
    /// The output is the prediction.
    Identity,
}

/// `y = link(((x - mean) / scale) · weights + bias)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearModel {
    pub(crate) link: Link,
    pub(crate) feature_names: Vec<String>,
    pub(crate) target_name: String,
    pub(crate) mean: Array1<f64>,
    pub(crate) scale: Array1<f64>,
    /// `features × outputs`.
    pub(crate) weights: Array2<f64>,
    pub(crate) bias: Array1<f64>,
}

/// What [`LinearModel::predict`] returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Predictions {
    Classification {
        /// Most probable class per row (the first one on ties).
        labels: Array1<i64>,
        /// `rows × classes`.
        probabilities: Array2<f64>,
    },
    Regression(Array1<f64>),
}

impl LinearModel {
    pub fn task(&self) -> Task {
        match self.link {
            Link::Sigmoid | Link::Softmax => Task::Classification,
            Link::Identity => Task::Regression,
        }
    }

    /// Number of classes (classification) or 1 (regression): the width of
    /// the `probabilities` or `prediction` output.
    pub fn n_outputs(&self) -> usize {
        match self.link {
            Link::Sigmoid => 2,
            Link::Softmax | Link::Identity => self.bias.len(),
        }
    }

    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    pub fn target_name(&self) -> &str {
        &self.target_name
    }

    /// The affine output before the link, `rows × weights columns`.
    pub(crate) fn decision(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let standardized = (&x - &self.mean) / &self.scale;
        standardized.dot(&self.weights) + &self.bias
    }

    /// Predicts every row of `x` (`rows × features`, in the training
    /// column order), in `f64`.
    pub fn predict(&self, x: ArrayView2<f64>) -> Result<Predictions, EvalError> {
        if x.ncols() != self.mean.len() {
            return Err(EvalError::FeatureCount {
                expected: self.mean.len(),
                found: x.ncols(),
            });
        }
        let z = self.decision(x);
        let probabilities = match self.link {
            Link::Identity => return Ok(Predictions::Regression(z.column(0).to_owned())),
            Link::Sigmoid => {
                let mut p = Array2::zeros((z.nrows(), 2));
                for (mut row, &zi) in p.outer_iter_mut().zip(z.column(0)) {
                    let p1 = sigmoid(zi);
                    row[0] = 1.0 - p1;
                    row[1] = p1;
                }
                p
            }
            Link::Softmax => softmax_rows(z),
        };
        let labels = probabilities
            .outer_iter()
            .map(|p| {
                let mut best = 0;
                for (i, &v) in p.iter().enumerate() {
                    if v > p[best] {
                        best = i;
                    }
                }
                best as i64
            })
            .collect();
        Ok(Predictions::Classification {
            labels,
            probabilities,
        })
    }
}

pub(crate) fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

pub(crate) fn softmax_rows(mut z: Array2<f64>) -> Array2<f64> {
    for mut row in z.axis_iter_mut(Axis(0)) {
        let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row /= sum;
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn model(link: Link, weights: Array2<f64>, bias: Array1<f64>) -> LinearModel {
        LinearModel {
            link,
            feature_names: vec!["a".into(), "b".into()],
            target_name: "y".into(),
            mean: array![1.0, -1.0],
            scale: array![2.0, 0.5],
            weights,
            bias,
        }
    }

    #[test]
    fn standardises_then_applies_the_link() {
        let x = array![[3.0, -1.0], [1.0, 0.0]];
        // standardised: [[1, 0], [0, 2]]
        let m = model(Link::Identity, array![[2.0], [-1.0]], array![0.5]);
        assert_eq!(
            m.predict(x.view()).unwrap(),
            Predictions::Regression(array![2.5, -1.5])
        );
        let m = model(Link::Sigmoid, array![[2.0], [-1.0]], array![0.5]);
        let Predictions::Classification {
            labels,
            probabilities,
        } = m.predict(x.view()).unwrap()
        else {
            panic!()
        };
        assert_eq!(labels, array![1, 0]);
        assert!((probabilities[[0, 1]] - sigmoid(2.5)).abs() < 1e-15);
        assert!((probabilities[[1, 0]] - (1.0 - sigmoid(-1.5))).abs() < 1e-15);
        let m = model(
            Link::Softmax,
            array![[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
            array![0.0, 0.5, 0.0],
        );
        let Predictions::Classification {
            labels,
            probabilities,
        } = m.predict(x.view()).unwrap()
        else {
            panic!()
        };
        assert_eq!(labels, array![0, 2]);
        for row in probabilities.outer_iter() {
            assert!((row.sum() - 1.0).abs() < 1e-12);
        }
        assert_eq!(
            m.predict(array![[1.0]].view()),
            Err(EvalError::FeatureCount {
                expected: 2,
                found: 1
            })
        );
    }

    #[test]
    fn softmax_is_stable_for_large_logits() {
        let p = softmax_rows(array![[1000.0, 1001.0, -1000.0]]);
        assert!(p.iter().all(|v| v.is_finite()));
        assert!((p[[0, 1]] - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-12);
    }
}
