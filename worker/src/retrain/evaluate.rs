//! Scoring a retrain job's candidate on the holdout rows: the new ONNX
//! bytes are loaded in ONNX Runtime (the same check an upload gets) and
//! run on the rows the trainer never saw; the built-in trainer's own
//! predictions must match ONNX Runtime's. The current version, if its
//! signature is the same, is scored on the same rows, so the promote
//! decision (`super::decide`) compares like with like.

use std::sync::Arc;

use ndarray::{Array2, ArrayView2, Axis};
use shared::digest::sha256_hex;
use shared::queue::registry;
use shared::tensor::{DataType, Tensor, TensorData, TensorSpec};
use trainer::{Metrics, Predictions, Task, TrainParams};

use super::data::Data;
use super::train::{Candidate, train_failure};
use super::{Env, Stopped, blocking, unavailable};
use crate::backend::{Backend, RunControl};
use crate::error::JobFailure;
use crate::watchdog::CancelFlag;

/// Largest accepted difference between ONNX Runtime's outputs and the
/// built-in trainer's predictions, relative to the value (absolute below 1).
pub const EXPORT_TOLERANCE: f64 = 1e-5;

/// The truth of the holdout rows.
enum Truth {
    Labels(Vec<usize>),
    Targets(Vec<f64>),
}

/// A candidate loaded and scored, with the current version's score.
pub(super) struct Evaluated {
    pub(super) candidate: Candidate,
    pub(super) sha256: String,
    pub(super) inputs: Vec<TensorSpec>,
    pub(super) outputs: Vec<TensorSpec>,
    pub(super) metrics: Metrics,
    pub(super) onnx_max_abs_diff: Option<f64>,
    /// The version current at evaluation time.
    pub(super) current: Option<u32>,
    /// Its scores on the same rows, or why it has none.
    pub(super) baseline: Result<Metrics, String>,
}

/// Loads the candidate as an upload is validated and scores it on the
/// holdout rows, then scores the current version on the same rows if its
/// signature is the candidate's.
pub(super) async fn evaluate(
    env: &Env<'_>,
    model: &str,
    data: &Data,
    params: &TrainParams,
    candidate: Candidate,
) -> Result<Evaluated, Stopped> {
    let x = candidate.split.holdout_features(&data.dataset);
    let truth = match params.task {
        Task::Classification => Truth::Labels(
            candidate
                .split
                .holdout_labels(&data.dataset)
                .map_err(train_failure)?,
        ),
        Task::Regression => Truth::Targets(candidate.split.holdout_targets(&data.dataset)),
    };
    let x = Arc::new(x);
    let truth = Arc::new(truth);

    // The candidate: loaded like an upload is validated, then scored.
    let store = Arc::clone(env.store);
    let name = model.to_owned();
    let (x1, truth1, dataset) = (
        Arc::clone(&x),
        Arc::clone(&truth),
        Arc::clone(&data.dataset),
    );
    let holdout_idx = candidate.split.holdout_idx.clone();
    let onnx = candidate.onnx.clone();
    let builtin = candidate.builtin.clone();
    let task = params.task;
    let stop1 = Arc::clone(&env.stop);
    let scored = blocking(&env.span, move || {
        let sha256 = sha256_hex(&onnx);
        // An external trainer's output is untrusted: validated in a child
        // process before this process loads it.
        if builtin.is_none() {
            store.validate_untrusted(&onnx)?;
        }
        let loaded = store.load_unserved(&name, &onnx)?;
        let (metrics, output) = score(&loaded, &x1, task, &truth1, &stop1)?;
        let diff = match &builtin {
            Some(m) => {
                let features = dataset.features().select(Axis(0), &holdout_idx);
                Some(export_difference(m, features.view(), output.view())?)
            }
            None => None,
        };
        store.cache_put(&sha256, &onnx);
        let info = loaded.info();
        Ok::<_, JobFailure>((
            sha256,
            info.inputs.clone(),
            info.outputs.clone(),
            metrics,
            diff,
        ))
    })
    .await??;
    let (sha256, inputs, outputs, metrics, onnx_max_abs_diff) = scored;

    // The current version, on the same rows, if it takes the same inputs
    // and gives the same outputs (else the scores would not be comparable,
    // and promoting would change what clients send and get).
    let current = {
        let mut conn = env.pool.get();
        match registry::current(&mut conn, env.keys, model).await {
            Ok(Some(n)) => registry::version(&mut conn, env.keys, model, n)
                .await
                .map_err(unavailable)?
                .map(|v| (n, v)),
            Ok(None) => None,
            Err(e) => return Err(unavailable(e).into()),
        }
    };
    let baseline = match &current {
        None => Err("the model has no current version".to_owned()),
        Some((n, v))
            if !same_signature(&v.inputs, &inputs) || !same_signature(&v.outputs, &outputs) =>
        {
            Err(format!(
                "current version {n} has a different signature (inputs {}, outputs {}; new: inputs {}, outputs {})",
                describe(&v.inputs),
                describe(&v.outputs),
                describe(&inputs),
                describe(&outputs)
            ))
        }
        Some((n, _)) => {
            let snapshot = env.store.snapshot();
            match env
                .store
                .resolve(env.pool, model, Some(*n), &snapshot)
                .await
            {
                Ok(Some(loaded)) => {
                    let (x2, truth2) = (Arc::clone(&x), Arc::clone(&truth));
                    let stop2 = Arc::clone(&env.stop);
                    blocking(&env.span, move || {
                        score(loaded.as_ref(), &x2, task, &truth2, &stop2)
                    })
                    .await?
                    .map(|(m, _)| m)
                    .map_err(|e| format!("current version {n} could not be scored: {e}"))
                }
                Ok(None) => Err(format!("current version {n} is not loaded")),
                Err(crate::models::LoadError::Queue(e)) => return Err(unavailable(e).into()),
                Err(e) => Err(format!("current version {n} could not be loaded: {e}")),
            }
        }
    };
    match &baseline {
        Ok(b) => {
            tracing::info!(candidate = %metrics, baseline = %b, current = current.as_ref().map(|c| c.0), "retrain: scored on the holdout rows")
        }
        Err(why) => {
            tracing::info!(candidate = %metrics, baseline = %why, "retrain: scored on the holdout rows")
        }
    }
    Ok(Evaluated {
        candidate,
        sha256,
        inputs,
        outputs,
        metrics,
        onnx_max_abs_diff,
        current: current.map(|c| c.0),
        baseline,
    })
}

/// Signatures compared by name, whatever the order of the outputs.
fn same_signature(a: &[TensorSpec], b: &[TensorSpec]) -> bool {
    fn sorted(s: &[TensorSpec]) -> Vec<&TensorSpec> {
        let mut v: Vec<&TensorSpec> = s.iter().collect();
        v.sort_by(|x, y| x.name.cmp(&y.name));
        v
    }
    sorted(a) == sorted(b)
}

fn describe(specs: &[TensorSpec]) -> String {
    let parts: Vec<String> = specs
        .iter()
        .map(|s| format!("{} {:?}{:?}", s.name, s.datatype, s.shape))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Runs a model on the holdout features and scores its output: class
/// probabilities (`probabilities`, or the only 2-D FP32 output) or
/// predictions (`prediction`, or the only FP32 output). Returns the scores
/// and the output scored, `rows × columns`.
///
/// A run stopped by `stop` or by the run time limit fails with that
/// failure; anything else wrong is `incompatible_model`.
fn score(
    model: &dyn Backend,
    x: &Array2<f32>,
    task: Task,
    truth: &Truth,
    stop: &CancelFlag,
) -> Result<(Metrics, Array2<f32>), JobFailure> {
    let bad = JobFailure::IncompatibleModel;
    let info = model.info();
    let [input] = info.inputs.as_slice() else {
        return Err(bad(format!(
            "it has {} inputs; one FP32 [rows, {}] input is needed",
            info.inputs.len(),
            x.ncols()
        )));
    };
    let fits = input.datatype == DataType::Fp32
        && input.shape.len() == 2
        && (input.shape[1] < 0 || input.shape[1] as usize == x.ncols());
    if !fits {
        return Err(bad(format!(
            "input {} is {:?}{:?}; FP32 [rows, {}] is needed",
            input.name,
            input.datatype,
            input.shape,
            x.ncols()
        )));
    }
    let (rows, cols) = x.dim();
    let tensor = Tensor {
        name: input.name.clone(),
        shape: vec![rows as i64, cols as i64],
        data: TensorData::Fp32(x.iter().copied().collect()),
    };
    let ctl = RunControl {
        cancels: std::slice::from_ref(stop),
        jobs: rows.max(1),
    };
    let outputs = model.run(&[tensor], &ctl).map_err(|e| match e {
        JobFailure::Canceled | JobFailure::InferenceTimeout { .. } => e,
        other => bad(other.to_string()),
    })?;
    let fp32 = |t: &&Tensor| matches!(t.data, TensorData::Fp32(_));
    let wanted = match task {
        Task::Classification => "probabilities",
        Task::Regression => "prediction",
    };
    let candidates: Vec<&Tensor> = outputs
        .iter()
        .filter(fp32)
        .filter(|t| task == Task::Regression || t.shape.len() == 2)
        .collect();
    let out = match candidates.iter().find(|t| t.name == wanted) {
        Some(t) => *t,
        None => match candidates.as_slice() {
            [only] => *only,
            _ => {
                return Err(bad(format!(
                    "no output named {wanted:?} and not exactly one FP32 output to use instead"
                )));
            }
        },
    };
    let TensorData::Fp32(values) = &out.data else {
        return Err(bad(format!("output {} is not FP32", out.name)));
    };
    let width = values.len().checked_div(rows).unwrap_or(0);
    if width == 0 || width * rows != values.len() {
        return Err(bad(format!(
            "output {} has {} values for {rows} rows",
            out.name,
            values.len()
        )));
    }
    let out =
        Array2::from_shape_vec((rows, width), values.clone()).map_err(|e| bad(e.to_string()))?;
    let metrics = match truth {
        Truth::Labels(labels) => trainer::evaluate_classification(out.view(), labels),
        Truth::Targets(targets) => {
            if width != 1 {
                return Err(bad(format!(
                    "the prediction has {width} columns; one is needed"
                )));
            }
            trainer::evaluate_regression(out.column(0), targets)
        }
    }
    .map_err(|e| bad(e.to_string()))?;
    Ok((metrics, out))
}

/// The largest difference between ONNX Runtime's output and the trainer's
/// own prediction; fails beyond [`EXPORT_TOLERANCE`].
fn export_difference(
    model: &trainer::LinearModel,
    features: ArrayView2<f64>,
    onnx: ArrayView2<f32>,
) -> Result<f64, JobFailure> {
    let predicted = model
        .predict(features)
        .map_err(|e| JobFailure::ExportMismatch(e.to_string()))?;
    let expected: Array2<f64> = match predicted {
        Predictions::Classification { probabilities, .. } => probabilities,
        Predictions::Regression(values) => values.insert_axis(Axis(1)),
    };
    if expected.dim() != onnx.dim() {
        return Err(JobFailure::ExportMismatch(format!(
            "ONNX Runtime gave {:?} values, the trainer {:?}",
            onnx.dim(),
            expected.dim()
        )));
    }
    let mut max = 0.0f64;
    for (&e, &o) in expected.iter().zip(onnx.iter()) {
        let diff = (e - f64::from(o)).abs();
        if diff > EXPORT_TOLERANCE * e.abs().max(1.0) {
            return Err(JobFailure::ExportMismatch(format!(
                "ONNX Runtime computed {o}, the trainer {e}"
            )));
        }
        max = max.max(diff);
    }
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn signatures_compare_by_name_not_order() {
        let a = [
            spec("label", DataType::Int64, &[-1]),
            spec("probabilities", DataType::Fp32, &[-1, 2]),
        ];
        let b = [a[1].clone(), a[0].clone()];
        assert!(same_signature(&a, &b));
        let c = [
            a[0].clone(),
            spec("probabilities", DataType::Fp32, &[-1, 3]),
        ];
        assert!(!same_signature(&a, &c));
        assert!(!same_signature(&a, &a[..1]));
    }
}
