//! Executing predictions: each job's input tensors → model → result JSON
//! or a [`JobFailure`] per job. Synchronous and CPU-bound; the consumer calls it
//! on a blocking thread.
//!
//! # Dynamic batching
//!
//! [`run_many`] stacks the jobs of one read that target the same model into
//! one ONNX Runtime run when the model's every input has a dynamic first
//! (batch) dimension and the jobs agree on the other dimensions, then splits
//! the outputs back by each job's rows. Like Triton's dynamic batcher it
//! assumes that such a model computes each row independently. A job's result
//! is bit-identical alone or stacked (tested). Anything that cannot be
//! stacked, or a stacked run that fails, runs job by job, so one bad job never
//! fails its neighbours.

use serde::Serialize;
use shared::tensor::{OipTensor, Tensor, TensorData};

use std::sync::Arc;

use crate::backend::{Backend, RunControl};
use crate::error::JobFailure;
use crate::watchdog::{self, CancelFlag};

/// A successful run: the model version it ran on and the result as the JSON
/// text stored in the job record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Success {
    pub model_version: String,
    pub result_json: String,
}

/// Runs an already checked job alone (not at all if it was canceled).
fn run_checked(
    model: &dyn Backend,
    inputs: &[Tensor],
    cancel: &CancelFlag,
) -> Result<Success, JobFailure> {
    if cancel.load(std::sync::atomic::Ordering::Acquire) {
        return Err(JobFailure::Canceled);
    }
    let ctl = RunControl {
        cancels: std::slice::from_ref(cancel),
        jobs: 1,
    };
    success(model, model.run(inputs, &ctl)?)
}

/// Outputs to a success, unless they hold a NaN or infinity.
fn success(model: &dyn Backend, outputs: Vec<Tensor>) -> Result<Success, JobFailure> {
    for t in &outputs {
        if let Some(index) = t.data.first_non_finite() {
            return Err(JobFailure::NonFiniteOutput {
                output: t.name.clone(),
                index,
            });
        }
    }
    Ok(Success {
        model_version: model.info().version.clone(),
        result_json: result_json(&outputs, watchdog::limits().max_result_bytes)?,
    })
}

/// One job's result.
pub(crate) type JobResult = Result<Success, JobFailure>;

/// What one job of a [`run_many`] call gets, and how many jobs shared its
/// ONNX Runtime run.
pub(crate) struct Ran {
    pub result: JobResult,
    pub batch_rows: usize,
}

/// The model each job of a [`run_many`] call runs on, resolved before the
/// call (current or pinned version), or why it has none.
pub(crate) type Resolved = Result<Arc<dyn Backend>, JobFailure>;

/// Runs the jobs of one read, stacking those of the same model version into
/// one ONNX Runtime run where possible (see the module docs); results come
/// back in the order of `jobs`, which holds each job's input tensors.
/// `models[i]` is the version job `i` runs on:
/// jobs are grouped by that `Arc`, i.e. by (model, version), so a batch that
/// straddles a swap or mixes pinned versions never stacks two versions.
/// `max_rows` caps the rows of one stacked run; `cancels[i]` is job `i`'s
/// cancel flag. Inputs are re-checked against the loaded version's
/// signature first: the API validated them against the published one, and
/// the version may differ.
pub(crate) fn run_many(
    models: &[Resolved],
    jobs: &[&[Tensor]],
    cancels: &[CancelFlag],
    max_rows: usize,
) -> Vec<Ran> {
    let mut out: Vec<Option<Ran>> = jobs.iter().map(|_| None).collect();
    let mut groups: Vec<(&Arc<dyn Backend>, Vec<usize>)> = Vec::new();
    for (i, resolved) in models.iter().enumerate().take(jobs.len()) {
        match resolved {
            Ok(m) => match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, m)) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((m, vec![i])),
            },
            Err(failure) => {
                out[i] = Some(Ran {
                    result: Err(failure.clone()),
                    batch_rows: 0,
                })
            }
        }
    }
    for (model, idx) in groups {
        let mut valid = Vec::with_capacity(idx.len());
        for i in idx {
            match model.info().check_inputs(jobs[i]) {
                Ok(()) => valid.push(i),
                Err(e) => {
                    out[i] = Some(Ran {
                        result: Err(JobFailure::InvalidInput(e)),
                        batch_rows: 0,
                    })
                }
            }
        }
        for chunk in chunk_by_rows(jobs, &valid, max_rows.max(1)) {
            let group: Vec<&[Tensor]> = chunk.iter().map(|&i| jobs[i]).collect();
            let flags: Vec<CancelFlag> = chunk.iter().map(|&i| Arc::clone(&cancels[i])).collect();
            let stacked = (group.len() > 1)
                .then(|| run_stacked(model.as_ref(), &group, &flags))
                .flatten();
            match stacked {
                Some((results, rows)) => {
                    for (&i, result) in chunk.iter().zip(results) {
                        out[i] = Some(Ran {
                            result,
                            batch_rows: rows,
                        });
                    }
                }
                None => {
                    for &i in &chunk {
                        out[i] = Some(Ran {
                            result: run_checked(model.as_ref(), jobs[i], &cancels[i]),
                            batch_rows: rows_of(jobs[i]).unwrap_or(1),
                        });
                    }
                }
            }
        }
    }
    out.into_iter()
        .map(|r| {
            r.unwrap_or(Ran {
                result: Err(JobFailure::Inference("job was not run".to_owned())),
                batch_rows: 0,
            })
        })
        .collect()
}

/// A job's rows: the first dimension, the same for every input.
fn rows_of(inputs: &[Tensor]) -> Option<usize> {
    let mut dims = inputs.iter().map(|t| t.shape.first().copied());
    let first = dims.next()??;
    dims.all(|d| d == Some(first))
        .then(|| usize::try_from(first).ok())
        .flatten()
}

/// Splits job indices into runs of at most `max_rows` rows (a single job
/// larger than that runs alone).
fn chunk_by_rows(jobs: &[&[Tensor]], idx: &[usize], max_rows: usize) -> Vec<Vec<usize>> {
    let mut chunks: Vec<Vec<usize>> = Vec::new();
    let mut rows = 0;
    for &i in idx {
        let r = rows_of(jobs[i]).unwrap_or(max_rows);
        match chunks.last_mut() {
            Some(c) if rows + r <= max_rows => c.push(i),
            _ => {
                chunks.push(vec![i]);
                rows = 0;
            }
        }
        rows += r;
    }
    chunks
}

/// One stacked run for checked jobs of one model; `None` when they cannot be
/// stacked or the stacked run fails (the caller then runs them one by one,
/// so a job that times out, is canceled or makes a huge output fails alone
/// and each of the others gets its own run and its own time limit).
/// Returns each job's result and the rows of the run.
fn run_stacked(
    model: &dyn Backend,
    jobs: &[&[Tensor]],
    cancels: &[CancelFlag],
) -> Option<(Vec<JobResult>, usize)> {
    let info = model.info();
    if info.inputs.iter().any(|s| s.shape.first() != Some(&-1)) {
        return None;
    }
    let rows: Vec<usize> = jobs.iter().map(|j| rows_of(j)).collect::<Option<_>>()?;
    let total: usize = rows.iter().sum();
    let mut stacked = Vec::with_capacity(info.inputs.len());
    for spec in &info.inputs {
        let parts: Vec<&Tensor> = jobs
            .iter()
            .map(|j| j.iter().find(|t| t.name == spec.name))
            .collect::<Option<_>>()?;
        let tail = &parts[0].shape[1..];
        if parts.iter().any(|t| &t.shape[1..] != tail) {
            return None;
        }
        let mut shape = vec![i64::try_from(total).ok()?];
        shape.extend_from_slice(tail);
        stacked.push(Tensor {
            name: spec.name.clone(),
            shape,
            data: TensorData::concat(parts.iter().map(|t| &t.data))?,
        });
    }
    let ctl = RunControl {
        cancels,
        jobs: jobs.len(),
    };
    let outputs = match model.run(&stacked, &ctl) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, jobs = jobs.len(), "stacked run failed; running the jobs one by one");
            return None;
        }
    };
    if outputs
        .iter()
        .any(|o| o.shape.first().and_then(|&d| usize::try_from(d).ok()) != Some(total))
    {
        return None;
    }
    let mut offset = 0;
    let mut results = Vec::with_capacity(jobs.len());
    for &r in &rows {
        let per_job = outputs
            .iter()
            .map(|o| {
                let inner = Tensor::shape_elements(&o.shape[1..]).unwrap_or(0);
                let mut shape = o.shape.clone();
                shape[0] = r as i64;
                Tensor {
                    name: o.name.clone(),
                    shape,
                    data: o.data.slice(offset * inner, (offset + r) * inner),
                }
            })
            .collect();
        results.push(success(model, per_job));
        offset += r;
    }
    Some((results, total))
}

#[derive(Serialize)]
struct ResultBody<'a> {
    outputs: Vec<OipTensor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prediction: Option<serde_json::Number>,
}

/// `{"outputs": [...], "prediction": n}`; `prediction` only when the first
/// output holds exactly one number. Encoding stops as soon as the text
/// passes `max_bytes`: the limit bounds the memory as well as the answer.
pub(crate) fn result_json(outputs: &[Tensor], max_bytes: usize) -> Result<String, JobFailure> {
    let body = ResultBody {
        outputs: outputs.iter().map(OipTensor).collect(),
        prediction: outputs.first().and_then(|t| t.data.single_number()),
    };
    let mut w = Bounded {
        buf: Vec::new(),
        max: max_bytes,
    };
    match serde_json::to_writer(&mut w, &body) {
        // serde_json writes UTF-8 only.
        Ok(()) => String::from_utf8(w.buf).map_err(|e| JobFailure::Inference(e.to_string())),
        Err(_) if w.buf.len() >= max_bytes => Err(JobFailure::ResultTooLarge(format!(
            "its JSON is over the limit of {max_bytes} bytes"
        ))),
        // Plain vectors and finite numbers (checked by the caller) always
        // serialise; anything else is an inference bug worth a retry.
        Err(e) => Err(JobFailure::Inference(format!("encoding the result: {e}"))),
    }
}

/// A writer that refuses to grow past `max` bytes.
struct Bounded {
    buf: Vec<u8>,
    max: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.max {
            self.buf
                .extend_from_slice(&data[..self.max - self.buf.len()]);
            return Err(std::io::Error::other("result over its size limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use shared::model::ModelInfo;
    use shared::tensor::{DataType, TensorData, TensorSpec};

    /// A model of one FP32 input `x` with two outputs, `sum` (`[rows, 1]`,
    /// each row's sum) and `double` (`x` times 2), remembering the rows of
    /// each run. Rows compute independently, as stacking assumes.
    struct Fake {
        info: ModelInfo,
        runs: Mutex<Vec<i64>>,
        /// A run with a -1 anywhere fails (one bad job in a stack).
        poison: bool,
        /// Every run answers one row whatever it was given (a model that
        /// reduces across the batch: its outputs cannot be split).
        collapse: bool,
    }

    fn fake(x_shape: &[i64]) -> Fake {
        let spec = |name: &str, shape: &[i64]| TensorSpec {
            name: name.into(),
            datatype: DataType::Fp32,
            shape: shape.to_vec(),
        };
        Fake {
            info: ModelInfo {
                name: "m".into(),
                version: "1".into(),
                inputs: vec![spec("x", x_shape)],
                outputs: vec![spec("sum", &[-1, 1]), spec("double", x_shape)],
                updated_at_ms: 0,
            },
            runs: Mutex::new(Vec::new()),
            poison: true,
            collapse: false,
        }
    }

    impl Backend for Fake {
        fn info(&self) -> &ModelInfo {
            &self.info
        }

        fn run(&self, inputs: &[Tensor], _: &RunControl<'_>) -> Result<Vec<Tensor>, JobFailure> {
            let x = &inputs[0];
            self.runs.lock().unwrap().push(x.shape[0]);
            let TensorData::Fp32(v) = &x.data else {
                return Err(JobFailure::Inference("not FP32".into()));
            };
            if self.poison && v.contains(&-1.0) {
                return Err(JobFailure::Inference("poisoned".into()));
            }
            let cols = usize::try_from(x.shape[1]).unwrap();
            let mut sums: Vec<f32> = v.chunks(cols).map(|r| r.iter().sum()).collect();
            let mut doubled: Vec<f32> = v.iter().map(|a| a * 2.0).collect();
            let mut rows = x.shape[0];
            if self.collapse {
                sums.truncate(1);
                doubled.truncate(cols);
                rows = 1;
            }
            Ok(vec![
                Tensor {
                    name: "sum".into(),
                    shape: vec![rows, 1],
                    data: TensorData::Fp32(sums),
                },
                Tensor {
                    name: "double".into(),
                    shape: vec![rows, x.shape[1]],
                    data: TensorData::Fp32(doubled),
                },
            ])
        }
    }

    fn x(rows: &[&[f32]]) -> Vec<Tensor> {
        vec![Tensor {
            name: "x".into(),
            shape: vec![rows.len() as i64, rows[0].len() as i64],
            data: TensorData::Fp32(rows.iter().flat_map(|r| r.iter().copied()).collect()),
        }]
    }

    /// Runs `jobs` on `model` with a row cap of 64.
    fn run(model: Fake, jobs: &[Vec<Tensor>]) -> (Vec<Ran>, Vec<i64>) {
        let model: Arc<Fake> = Arc::new(model);
        let resolved: Vec<Resolved> = jobs
            .iter()
            .map(|_| Ok(Arc::clone(&model) as Arc<dyn Backend>))
            .collect();
        let inputs: Vec<&[Tensor]> = jobs.iter().map(Vec::as_slice).collect();
        let cancels: Vec<CancelFlag> = jobs.iter().map(|_| CancelFlag::default()).collect();
        let ran = run_many(&resolved, &inputs, &cancels, 64);
        let runs = model.runs.lock().unwrap().clone();
        (ran, runs)
    }

    /// What a job alone gets: its outputs as result JSON.
    fn alone(rows: &[&[f32]]) -> String {
        let mut m = fake(&[-1, -1]);
        m.poison = false;
        let outputs = m.run(&x(rows), &RunControl::SOLO).unwrap();
        result_json(&outputs, usize::MAX).unwrap()
    }

    fn json(r: &Ran) -> &str {
        &r.result.as_ref().expect("a success").result_json
    }

    #[test]
    fn jobs_are_stacked_into_one_run_and_outputs_split_back_per_job() {
        let a: [&[f32]; 1] = [&[1.0, 2.0, 3.0]];
        let b: [&[f32]; 2] = [&[4.0, 5.0, 6.0], &[7.0, 8.0, 9.0]];
        let c: [&[f32]; 1] = [&[0.5, 0.25, 0.0]];
        let (ran, runs) = run(fake(&[-1, 3]), &[x(&a), x(&b), x(&c)]);
        assert_eq!(runs, [4]);
        assert_eq!(json(&ran[0]), alone(&a));
        assert_eq!(json(&ran[1]), alone(&b));
        assert_eq!(json(&ran[2]), alone(&c));
        assert!(ran.iter().all(|r| r.batch_rows == 4));
        assert!(
            ran.iter()
                .all(|r| r.result.as_ref().unwrap().model_version == "1")
        );
    }

    #[test]
    fn a_failed_stacked_run_is_run_again_job_by_job() {
        let good: [&[f32]; 1] = [&[1.0, 2.0]];
        let bad: [&[f32]; 1] = [&[-1.0, 2.0]];
        let (ran, runs) = run(fake(&[-1, 2]), &[x(&good), x(&bad), x(&good)]);
        // The stack, then each job on its own: only the bad one fails.
        assert_eq!(runs, [3, 1, 1, 1]);
        assert_eq!(json(&ran[0]), alone(&good));
        assert_eq!(ran[1].result, Err(JobFailure::Inference("poisoned".into())));
        assert_eq!(json(&ran[2]), alone(&good));
        assert!(ran.iter().all(|r| r.batch_rows == 1));
    }

    #[test]
    fn jobs_whose_shapes_differ_past_the_batch_dimension_are_not_stacked() {
        let two: [&[f32]; 1] = [&[1.0, 2.0]];
        let three: [&[f32]; 1] = [&[1.0, 2.0, 3.0]];
        let (ran, runs) = run(fake(&[-1, -1]), &[x(&two), x(&three), x(&two)]);
        assert_eq!(runs, [1, 1, 1]);
        assert_eq!(json(&ran[0]), alone(&two));
        assert_eq!(json(&ran[1]), alone(&three));
        assert_eq!(json(&ran[2]), alone(&two));
    }

    #[test]
    fn a_model_without_a_dynamic_batch_dimension_runs_each_job_alone() {
        let row: [&[f32]; 1] = [&[1.0, 2.0]];
        let (ran, runs) = run(fake(&[1, 2]), &[x(&row), x(&row)]);
        assert_eq!(runs, [1, 1]);
        assert!(ran.iter().all(|r| json(r) == alone(&row)));
    }

    #[test]
    fn outputs_that_do_not_keep_the_rows_are_not_split_but_run_again_alone() {
        let mut m = fake(&[-1, 2]);
        m.collapse = true;
        let a: [&[f32]; 1] = [&[1.0, 2.0]];
        let b: [&[f32]; 1] = [&[3.0, 4.0]];
        let (ran, runs) = run(m, &[x(&a), x(&b)]);
        assert_eq!(runs, [2, 1, 1]);
        assert_eq!(json(&ran[0]), alone(&a));
        assert_eq!(json(&ran[1]), alone(&b));
    }

    #[test]
    fn a_job_with_inputs_the_version_refuses_fails_alone_and_the_rest_stack() {
        let row: [&[f32]; 1] = [&[1.0, 2.0]];
        let wrong = vec![Tensor {
            name: "x".into(),
            shape: vec![1, 2],
            data: TensorData::Int64(vec![1, 2]),
        }];
        let (ran, runs) = run(fake(&[-1, 2]), &[x(&row), wrong, x(&row)]);
        assert_eq!(runs, [2]);
        assert_eq!(ran[1].result.as_ref().unwrap_err().code(), "invalid_input");
        assert_eq!(json(&ran[0]), alone(&row));
        assert_eq!(json(&ran[2]), alone(&row));
    }

    #[test]
    fn result_has_prediction_only_for_a_single_value_first_output() {
        let one = Tensor {
            name: "p".into(),
            shape: vec![1, 1],
            data: TensorData::Fp32(vec![0.25]),
        };
        let two = Tensor {
            name: "q".into(),
            shape: vec![1, 2],
            data: TensorData::Int64(vec![1, 2]),
        };
        assert_eq!(
            result_json(std::slice::from_ref(&one), 1 << 20).unwrap(),
            r#"{"outputs":[{"name":"p","shape":[1,1],"datatype":"FP32","data":[0.25]}],"prediction":0.25}"#
        );
        let json = result_json(&[two, one], 1 << 20).unwrap();
        assert!(!json.contains("prediction"), "{json}");
    }

    #[test]
    fn a_result_over_its_byte_limit_is_refused_while_encoding() {
        let big = Tensor {
            name: "y".into(),
            shape: vec![1, 100_000],
            data: TensorData::Fp32(vec![0.123_456_79; 100_000]),
        };
        let exact = result_json(std::slice::from_ref(&big), usize::MAX).unwrap();
        assert_eq!(
            result_json(std::slice::from_ref(&big), exact.len()).unwrap(),
            exact
        );
        let err = result_json(std::slice::from_ref(&big), exact.len() - 1).unwrap_err();
        assert_eq!(err.code(), "result_too_large");
    }
}
