//! The training loop: standardise on the training split, fit by mini-batch
//! gradient descent, report every epoch, evaluate on the holdout split.
//!
//! All three models are generalised linear models with a canonical link, so
//! they share one gradient, `Xᵀ(link(XW + b) − Y) / m + l2·W`:
//! * binary classification: sigmoid link, log-loss (logistic regression);
//! * k > 2 classes: softmax link over k columns, cross-entropy;
//! * regression: identity link, half squared error on a standardised target
//!   (ridge regression; the target's scale is folded back afterwards).
//!
//! Weights start at zero and the problems are convex, so the seed only
//! changes the holdout rows and the mini-batch order.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::dataset::Dataset;
use crate::labels::class_labels;
use crate::metrics::{Metrics, evaluate_classification, evaluate_regression};
use crate::model::{LinearModel, Link, Predictions, sigmoid};
use crate::onnx;
use crate::params::{Task, TrainParams};
use crate::rng::SplitMix64;
use crate::split::Split;

pub use crate::error::TrainError;
pub use crate::labels::MAX_CLASSES;

const BATCH_STREAM: u64 = 0xBA7C_4000_0000_0002;

/// Reported after every epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// 1-based.
    pub epoch: u32,
    pub epochs: u32,
    /// Mean loss over the training split after this epoch, without the L2
    /// term: log-loss (classification) or mean squared error in target units
    /// (regression).
    pub train_loss: f64,
}

/// The outcome of [`train`].
#[derive(Debug, Clone)]
pub struct Trained {
    pub model: LinearModel,
    pub params: TrainParams,
    pub split: Split,
    /// Scores on the holdout split.
    pub metrics: Metrics,
    /// [`Progress::train_loss`] of every epoch.
    pub losses: Vec<f64>,
    /// Wall time of fitting and evaluation.
    pub elapsed: Duration,
}

impl Trained {
    /// The model as ONNX bytes, with producer name `onnx-queue trainer`, a
    /// doc string summarising the run, and metadata props `onnxq.task`,
    /// `onnxq.target`, `onnxq.features`, `onnxq.params`, `onnxq.metrics`
    /// (JSON). Contains nothing time-dependent: the same data, parameters and
    /// seed give the same bytes.
    pub fn to_onnx(&self) -> Vec<u8> {
        let m = &self.model;
        let kind = match m.link {
            Link::Sigmoid => "Logistic regression (2 classes)".to_owned(),
            Link::Softmax => format!("Softmax regression ({} classes)", m.n_outputs()),
            Link::Identity => "Ridge regression".to_owned(),
        };
        let params = serde_json::to_string(&self.params).unwrap_or_default();
        let metrics = serde_json::to_string(&self.metrics).unwrap_or_default();
        let features = serde_json::to_string(&m.feature_names).unwrap_or_default();
        let doc = format!(
            "{kind} of {target:?} on {d} standardised features, trained by onnx-queue trainer \
             on {train} rows; holdout: {metrics_text}. Parameters: {params}",
            target = m.target_name,
            d = m.feature_names.len(),
            train = self.split.train_idx.len(),
            metrics_text = self.metrics,
        );
        onnx::export(
            m,
            &format!("onnxq_{}", self.params.task.as_str()),
            &doc,
            &[
                ("onnxq.task", self.params.task.as_str().to_owned()),
                ("onnxq.target", m.target_name.clone()),
                ("onnxq.features", features),
                ("onnxq.params", params),
                ("onnxq.metrics", metrics),
            ],
        )
    }
}

/// Per-column mean and standard deviation (population); a constant column
/// gets scale 1 so it standardises to 0 instead of dividing by zero.
fn standardization(x: ArrayView2<f64>) -> (Array1<f64>, Array1<f64>) {
    let n = x.nrows() as f64;
    let mean = x.sum_axis(Axis(0)) / n;
    let var = (&x - &mean).mapv(|v| v * v).sum_axis(Axis(0)) / n;
    let scale = var.mapv(|v| {
        let s = v.sqrt();
        if s > 1e-12 { s } else { 1.0 }
    });
    (mean, scale)
}

/// The fitting problem as flat row-major buffers: plain slice loops stay
/// fast in unoptimised (test) builds, where generic ndarray code is not.
struct Problem {
    link: Link,
    /// `n × d` standardised features.
    x: Vec<f64>,
    /// `n × k` targets in fitted units.
    y: Vec<f64>,
    d: usize,
    k: usize,
}

impl Problem {
    fn row(&self, i: usize) -> (&[f64], &[f64]) {
        (
            &self.x[i * self.d..(i + 1) * self.d],
            &self.y[i * self.k..(i + 1) * self.k],
        )
    }

    /// `z = x · W + b` for one row (`W` is `d × k`, row-major).
    fn affine(&self, x: &[f64], w: &[f64], b: &[f64], z: &mut [f64]) {
        z.copy_from_slice(b);
        for (j, &xj) in x.iter().enumerate() {
            let wj = &w[j * self.k..(j + 1) * self.k];
            for c in 0..self.k {
                z[c] += xj * wj[c];
            }
        }
    }

    /// Loss of one row given `z` before the link.
    fn loss(&self, z: &[f64], y: &[f64]) -> f64 {
        match self.link {
            // log(1 + e^z) − y·z, without overflow.
            Link::Sigmoid => z[0].max(0.0) + (-z[0].abs()).exp().ln_1p() - y[0] * z[0],
            Link::Softmax => {
                let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                lse - z.iter().zip(y).map(|(z, y)| z * y).sum::<f64>()
            }
            Link::Identity => (z[0] - y[0]).powi(2),
        }
    }

    fn apply_link(&self, z: &mut [f64]) {
        match self.link {
            Link::Sigmoid => z[0] = sigmoid(z[0]),
            Link::Softmax => {
                let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                let mut sum = 0.0;
                for v in z.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                for v in z.iter_mut() {
                    *v /= sum;
                }
            }
            Link::Identity => {}
        }
    }

    /// One gradient step on `rows`.
    fn step(&self, rows: &[usize], w: &mut [f64], b: &mut [f64], lr: f64, l2: f64) {
        let k = self.k;
        let mut grad_w = vec![0.0; w.len()];
        let mut grad_b = vec![0.0; k];
        let mut z = vec![0.0; k];
        for &i in rows {
            let (x, y) = self.row(i);
            self.affine(x, w, b, &mut z);
            self.apply_link(&mut z);
            for c in 0..k {
                z[c] -= y[c]; // now the residual
                grad_b[c] += z[c];
            }
            for (j, &xj) in x.iter().enumerate() {
                let g = &mut grad_w[j * k..(j + 1) * k];
                for c in 0..k {
                    g[c] += xj * z[c];
                }
            }
        }
        let m = rows.len() as f64;
        for (wi, gi) in w.iter_mut().zip(&grad_w) {
            *wi -= lr * (gi / m + l2 * *wi);
        }
        for (bi, gi) in b.iter_mut().zip(&grad_b) {
            *bi -= lr * gi / m;
        }
    }

    fn mean_loss(&self, w: &[f64], b: &[f64]) -> f64 {
        let n = self.y.len() / self.k;
        let mut z = vec![0.0; self.k];
        let mut total = 0.0;
        for i in 0..n {
            let (x, y) = self.row(i);
            self.affine(x, w, b, &mut z);
            total += self.loss(&z, y);
        }
        total / n as f64
    }
}

/// Trains a model on `dataset` (its target must be `params.target_column`).
/// `on_epoch` sees every epoch's [`Progress`]; returning
/// `ControlFlow::Break(())` stops training with [`TrainError::Stopped`].
/// CPU-bound: call it from a blocking thread.
pub fn train(
    dataset: &Dataset,
    params: &TrainParams,
    mut on_epoch: impl FnMut(Progress) -> ControlFlow<()>,
) -> Result<Trained, TrainError> {
    let started = Instant::now();
    params.validate()?;
    if dataset.target_name() != params.target_column {
        return Err(TrainError::TargetMismatch {
            params: params.target_column.clone(),
            dataset: dataset.target_name().to_owned(),
        });
    }
    let split = Split::new(dataset.n_rows(), params.holdout_fraction, params.seed)?;
    let x = dataset.features().select(Axis(0), &split.train_idx);
    let target = dataset.target();
    let n = split.train_idx.len();

    // Targets as an n × outputs matrix in the fitted units.
    let (link, y, y_shift, y_scale) = match params.task {
        Task::Classification => {
            let (labels, k) = class_labels(target)?;
            // Split::new guarantees two rows or more, so labels[0] exists.
            if labels.iter().all(|&l| l == labels[0]) {
                return Err(TrainError::SingleClass { label: labels[0] });
            }
            if k == 2 {
                let y = Array2::from_shape_fn((n, 1), |(i, _)| labels[split.train_idx[i]] as f64);
                (Link::Sigmoid, y, 0.0, 1.0)
            } else {
                let y = Array2::from_shape_fn((n, k), |(i, c)| {
                    f64::from(u8::from(labels[split.train_idx[i]] == c))
                });
                (Link::Softmax, y, 0.0, 1.0)
            }
        }
        Task::Regression => {
            let t = Array1::from_iter(split.train_idx.iter().map(|&i| target[i]));
            let (mean, scale) = standardization(t.view().insert_axis(Axis(1)));
            let y = ((t - mean[0]) / scale[0]).insert_axis(Axis(1));
            (Link::Identity, y, mean[0], scale[0])
        }
    };

    let (mean, scale) = standardization(x.view());
    let d = x.ncols();
    let xs = (x - &mean) / &scale;
    let problem = Problem {
        link,
        d,
        k: y.ncols(),
        x: xs.iter().copied().collect(),
        y: y.iter().copied().collect(),
    };
    drop(xs);
    let mut w = vec![0.0; problem.d * problem.k];
    let mut b = vec![0.0; problem.k];
    let batch = params.batch_size.min(n);
    let mut rng = SplitMix64::new(params.seed ^ BATCH_STREAM);
    let mut order: Vec<usize> = (0..n).collect();
    let mut losses = Vec::with_capacity(params.epochs as usize);
    // Mean squared error back in target units for reporting.
    let loss_unit = match link {
        Link::Identity => y_scale * y_scale,
        Link::Sigmoid | Link::Softmax => 1.0,
    };

    for epoch in 1..=params.epochs {
        rng.shuffle(&mut order);
        for rows in order.chunks(batch) {
            problem.step(rows, &mut w, &mut b, params.learning_rate, params.l2);
        }
        let train_loss = problem.mean_loss(&w, &b) * loss_unit;
        if !train_loss.is_finite() {
            return Err(TrainError::Diverged { epoch });
        }
        losses.push(train_loss);
        let progress = Progress {
            epoch,
            epochs: params.epochs,
            train_loss,
        };
        if on_epoch(progress).is_break() {
            return Err(TrainError::Stopped { epoch });
        }
    }

    let mut w = Array2::from_shape_vec((problem.d, problem.k), w)
        .expect("the weight buffer holds d × k values");
    let mut b = Array1::from_vec(b);
    if link == Link::Identity {
        w *= y_scale;
        b = b * y_scale + y_shift;
    }
    let model = LinearModel {
        link,
        feature_names: dataset.feature_names().to_vec(),
        target_name: dataset.target_name().to_owned(),
        mean,
        scale,
        weights: w,
        bias: b,
    };

    // Scored through the same f32 path as any deployed model.
    let holdout = dataset.features().select(Axis(0), &split.holdout_idx);
    let metrics = match model.predict(holdout.view())? {
        Predictions::Classification { probabilities, .. } => evaluate_classification(
            probabilities.mapv(|p| p as f32).view(),
            &split.holdout_labels(dataset)?,
        )?,
        Predictions::Regression(values) => evaluate_regression(
            values.mapv(|p| p as f32).view(),
            &split.holdout_targets(dataset),
        )?,
    };

    Ok(Trained {
        model,
        params: params.clone(),
        split,
        metrics,
        losses,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamError;

    fn dataset(columns: &[&str], rows: Vec<Vec<f64>>) -> Dataset {
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        Dataset::from_rows(&columns, &rows, "y").unwrap()
    }

    fn params(task: Task) -> TrainParams {
        TrainParams {
            target_column: "y".into(),
            task,
            ..TrainParams::default()
        }
    }

    fn continue_(_: Progress) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    #[test]
    fn labels_must_be_class_indices() {
        for bad in [-1.0, 0.5, 1000.0] {
            let ds = dataset(
                &["a", "y"],
                vec![vec![0.0, 0.0], vec![1.0, 1.0], vec![2.0, bad]],
            );
            assert_eq!(
                train(&ds, &params(Task::Classification), continue_).unwrap_err(),
                TrainError::InvalidLabel { row: 2, value: bad }
            );
        }
        let ds = dataset(&["a", "y"], vec![vec![0.0, 1.0], vec![1.0, 1.0]]);
        assert_eq!(
            train(&ds, &params(Task::Classification), continue_).unwrap_err(),
            TrainError::SingleClass { label: 1 }
        );
        // The same targets are fine for regression.
        let ds = dataset(
            &["a", "y"],
            (0..10)
                .map(|i| vec![f64::from(i), 0.5 * f64::from(i)])
                .collect(),
        );
        train(&ds, &params(Task::Regression), continue_).unwrap();
    }

    #[test]
    fn parameters_and_target_are_checked_first() {
        let ds = dataset(&["a", "y"], vec![vec![0.0, 0.0], vec![1.0, 1.0]]);
        let mut p = params(Task::Classification);
        p.epochs = 0;
        assert!(matches!(
            train(&ds, &p, continue_),
            Err(TrainError::Param(ParamError {
                param: "epochs",
                ..
            }))
        ));
        let p = TrainParams::default();
        assert_eq!(
            train(&ds, &p, continue_).unwrap_err(),
            TrainError::TargetMismatch {
                params: "target".into(),
                dataset: "y".into()
            }
        );
        let one = dataset(&["a", "y"], vec![vec![0.0, 0.0]]);
        assert_eq!(
            train(&one, &params(Task::Classification), continue_).unwrap_err(),
            TrainError::TooFewRows { rows: 1 }
        );
    }

    #[test]
    fn multiclass_separable_blobs() {
        // Three well separated clusters around (0,0), (5,0), (0,5).
        let mut rng = SplitMix64::new(3);
        let mut noise = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        let rows: Vec<Vec<f64>> = (0..150)
            .map(|i| {
                let c = i % 3;
                let (cx, cy) = [(0.0, 0.0), (5.0, 0.0), (0.0, 5.0)][c];
                vec![cx + noise(), cy + noise(), c as f64]
            })
            .collect();
        let ds = dataset(&["a", "b", "y"], rows);
        let trained = train(&ds, &params(Task::Classification), continue_).unwrap();
        assert_eq!(trained.model.link, Link::Softmax);
        assert_eq!(trained.model.n_outputs(), 3);
        let Metrics::Classification { accuracy, .. } = trained.metrics else {
            panic!()
        };
        assert_eq!(accuracy, 1.0, "{}", trained.metrics);
    }

    #[test]
    fn too_large_learning_rate_diverges_with_a_typed_error() {
        let ds = dataset(
            &["a", "y"],
            (0..50)
                .map(|i| vec![f64::from(i), 1e6 * f64::from(i)])
                .collect(),
        );
        let mut p = params(Task::Regression);
        p.learning_rate = 10.0;
        p.l2 = 1000.0;
        assert!(matches!(
            train(&ds, &p, continue_),
            Err(TrainError::Diverged { .. })
        ));
    }

    #[test]
    fn constant_feature_does_not_break_standardisation() {
        let ds = dataset(
            &["a", "c", "y"],
            (0..40)
                .map(|i| vec![f64::from(i), 3.0, 2.0 * f64::from(i) + 1.0])
                .collect(),
        );
        let trained = train(&ds, &params(Task::Regression), continue_).unwrap();
        assert_eq!(trained.model.scale[1], 1.0);
        let Metrics::Regression { r2, .. } = trained.metrics else {
            panic!()
        };
        assert!(r2 > 0.999, "{}", trained.metrics);
    }
}
