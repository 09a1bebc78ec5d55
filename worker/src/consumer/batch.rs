//! What a prediction slot does with a batch it read or took over: start the
//! jobs, run the inference jobs on a blocking thread (stacked across jobs
//! of one model version by [`crate::execute::run_many`], split back per job)
//! while the batch's `validate` jobs run beside them on the executor (they
//! need Redis, and their CPU work runs in a child process), then write every
//! attempt's end. Leases are renewed until then.

use std::sync::Arc;
use std::time::Instant;

use shared::metric_names::WORKER_BATCH_SIZE;
use shared::queue::consume::Delivery;
use shared::queue::wire::{JobEnvelope, JobSpec};
use shared::telemetry::spans;
use shared::tensor::Tensor;

use super::Context;
use super::attempt::{Attempted, Runnable, child_spans, finish_all, renew_leases, start_all};
use super::read::Batches;
use crate::error::JobFailure;
use crate::execute::{self, Resolved};
use crate::models::LoadError;
use crate::watchdog::CancelFlag;

/// The prediction slots' [`Batches`]: inference and `validate` jobs.
pub struct Predictions;

impl Batches for Predictions {
    async fn run(&self, ctx: &Context, batch: Vec<Delivery>) {
        process(ctx, batch).await
    }
}

async fn process(ctx: &Context, batch: Vec<Delivery>) {
    metrics::histogram!(WORKER_BATCH_SIZE).record(batch.len() as f64);
    let started = Instant::now();
    let runnable = start_all(ctx, batch).await;
    if runnable.is_empty() {
        return;
    }

    // Renew the leases while the batch runs, so a long job is not taken over
    // from a live worker; stop as soon as the batch is done.
    let renewer = tokio::spawn(renew_leases(ctx, &runnable));
    // Control jobs need Redis and run beside the batch's inference; every
    // other entry goes to inference, where those that are no prediction
    // fail in place (see `prediction`).
    let mut validations = Vec::new();
    let mut predictions = Vec::with_capacity(runnable.len());
    for r in runnable {
        match r.delivery.job.as_ref().map(|j| &j.spec) {
            Ok(JobSpec::Validate { version }) => {
                let version = *version;
                validations.push((r, version));
            }
            Ok(JobSpec::Predict { .. } | JobSpec::Retrain(_)) | Err(_) => predictions.push(r),
        }
    }
    let resolved = resolve_all(ctx, &predictions).await;
    let max_rows = ctx.max_batch_rows;
    let inference =
        tokio::task::spawn_blocking(move || execute_all(resolved, predictions, max_rows));
    let mut validated = Vec::with_capacity(validations.len());
    for (r, version) in validations {
        let outcome = match &r.delivery.job {
            Ok(job) => {
                let _entered = r.span.enter();
                crate::models::validate_job(&ctx.models, &ctx.pool, job, version).await
            }
            Err(e) => (String::new(), Err(JobFailure::InvalidPayload(e.clone()))),
        };
        validated.push((r, outcome));
    }
    let executed = match inference.await {
        Ok(mut e) => {
            e.extend(validated);
            e
        }
        Err(error) => {
            renewer.abort();
            tracing::error!(%error, "inference thread panicked; jobs stay pending until reclaimed");
            return;
        }
    };

    finish_all(ctx, &executed, started).await;
    renewer.abort();
}

/// What inference needs of a prediction.
struct Prediction<'a> {
    model: &'a str,
    inputs: &'a [Tensor],
    pinned: Option<u32>,
}

/// The prediction an entry asks for, or why it fails instead: its payload
/// did not decode, or it is a job of another kind (a retrain job belongs on
/// the training stream).
fn prediction(r: &Runnable) -> Result<Prediction<'_>, JobFailure> {
    match &r.delivery.job {
        Ok(JobEnvelope {
            model,
            spec:
                JobSpec::Predict {
                    inputs,
                    pinned_version,
                },
            ..
        }) => Ok(Prediction {
            model,
            inputs,
            pinned: *pinned_version,
        }),
        Ok(job) => Err(JobFailure::InvalidPayload(format!(
            "a {} job cannot run on a prediction stream",
            job.kind().as_str()
        ))),
        Err(e) => Err(JobFailure::InvalidPayload(e.clone())),
    }
}

/// The version each prediction runs on, from one snapshot of the served
/// set (so a swap mid-batch cannot split it), or its pinned version.
async fn resolve_all(ctx: &Context, runnable: &[Runnable]) -> Vec<Resolved> {
    let snapshot = ctx.models.snapshot();
    let mut out = Vec::with_capacity(runnable.len());
    for job in runnable.iter().filter_map(|r| prediction(r).ok()) {
        let resolved = ctx
            .models
            .resolve(&ctx.pool, job.model, job.pinned, &snapshot)
            .await;
        out.push(match resolved {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(JobFailure::ModelUnavailable(job.model.to_owned())),
            // Redis trouble is worth a retry; a bad pin is not.
            Err(LoadError::Queue(e)) => Err(JobFailure::ModelUnavailable(format!(
                "{} (registry unavailable: {e})",
                job.model
            ))),
            Err(e) => Err(JobFailure::VersionUnavailable(format!(
                "version {} of model {}: {e}",
                job.pinned.unwrap_or_default(),
                job.model
            ))),
        });
    }
    out
}

/// Runs a read's jobs on the current (blocking) thread, stacked per model
/// where possible ([`execute::run_many`]), then logs and times each job in its
/// own span. `resolved` holds one entry per prediction, in order. Returns
/// each job with the model version it ran on and its result JSON or failure.
fn execute_all(
    resolved: Vec<Resolved>,
    runnable: Vec<Runnable>,
    max_rows: usize,
) -> Vec<(Runnable, Attempted)> {
    let started = Instant::now();
    let predictions: Vec<Result<Prediction<'_>, JobFailure>> =
        runnable.iter().map(prediction).collect();
    let inputs: Vec<&[Tensor]> = predictions
        .iter()
        .filter_map(|p| p.as_ref().ok().map(|p| p.inputs))
        .collect();
    let cancels: Vec<CancelFlag> = runnable
        .iter()
        .zip(&predictions)
        .filter(|(_, p)| p.is_ok())
        .map(|(r, _)| Arc::clone(&r.cancel))
        .collect();
    let inference = child_spans(spans::INFERENCE, runnable.iter().map(|r| &r.span));
    let mut ran = execute::run_many(&resolved, &inputs, &cancels, max_rows).into_iter();
    let mut versions = resolved.iter().map(|r| match r {
        Ok(m) => m.info().version.clone(),
        Err(_) => String::new(),
    });
    drop(inference);
    let elapsed = started.elapsed().as_secs_f64();
    let results: Vec<_> = predictions
        .into_iter()
        .map(|p| match p {
            Ok(_) => {
                let version = versions.next().unwrap_or_default();
                ran.next()
                    .map(|x| (x.result, x.batch_rows, version))
                    .unwrap_or_else(|| {
                        (
                            Err(JobFailure::Inference("job was not run".to_owned())),
                            0,
                            String::new(),
                        )
                    })
            }
            Err(failure) => (Err(failure), 0, String::new()),
        })
        .collect();
    runnable
        .into_iter()
        .zip(results)
        .map(|(r, (result, batch_rows, version))| {
            let entered = r.span.enter();
            let elapsed_ms = elapsed * 1e3;
            let outcome = match result {
                Ok(s) => {
                    tracing::debug!(elapsed_ms, batch_rows, "inference done");
                    (s.model_version, Ok(s.result_json))
                }
                Err(failure) => {
                    tracing::warn!(code = failure.code(), error = %failure, elapsed_ms, transient = failure.is_transient(), "attempt failed");
                    (version, Err(failure))
                }
            };
            drop(entered);
            (r, outcome)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use shared::model::ModelInfo;
    use shared::tensor::{DataType, TensorData, TensorSpec};
    use tracing::Span;
    use uuid::Uuid;

    use crate::backend::{Backend, RunControl};

    /// `y = x` over a `[-1, 2]` FP32 input, remembering the rows of each run.
    struct Echo {
        info: ModelInfo,
        runs: Mutex<Vec<i64>>,
    }

    impl Backend for Echo {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn run(&self, inputs: &[Tensor], _: &RunControl<'_>) -> Result<Vec<Tensor>, JobFailure> {
            let x = &inputs[0];
            self.runs.lock().unwrap().push(x.shape[0]);
            Ok(vec![Tensor {
                name: "y".into(),
                shape: x.shape.clone(),
                data: x.data.clone(),
            }])
        }
    }

    fn echo(version: &str) -> Arc<Echo> {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 2],
        };
        Arc::new(Echo {
            info: ModelInfo {
                name: "m".into(),
                version: version.into(),
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
                updated_at_ms: 0,
            },
            runs: Mutex::new(Vec::new()),
        })
    }

    fn job(rows: &[[f32; 2]]) -> Runnable {
        let id = Uuid::now_v7();
        runnable(Ok(JobEnvelope {
            id,
            model: "m".into(),
            submitted_at_ms: 0,
            deadline_ms: None,
            traceparent: None,
            spec: JobSpec::Predict {
                inputs: vec![Tensor {
                    name: "x".into(),
                    shape: vec![rows.len() as i64, 2],
                    data: TensorData::Fp32(rows.iter().flatten().copied().collect()),
                }],
                pinned_version: None,
            },
        }))
    }

    fn runnable(job: Result<JobEnvelope, String>) -> Runnable {
        let job_id = Uuid::now_v7();
        Runnable {
            job_id,
            delivery: Delivery {
                stream: "t:stream:m".into(),
                entry_id: "1-0".into(),
                job_id: Some(job_id),
                job,
            },
            attempt: 1,
            span: Span::none(),
            cancel: CancelFlag::default(),
        }
    }

    fn data(result: &Result<String, JobFailure>) -> Vec<f64> {
        let json: serde_json::Value = serde_json::from_str(result.as_ref().unwrap()).unwrap();
        json["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    }

    #[test]
    fn jobs_of_one_version_run_stacked_and_each_gets_its_own_rows_back() {
        let model = echo("7");
        let jobs = vec![
            job(&[[1.0, 2.0]]),
            job(&[[3.0, 4.0], [5.0, 6.0]]),
            job(&[[7.0, 8.0]]),
        ];
        let ids: Vec<Uuid> = jobs.iter().map(|r| r.job_id).collect();
        let resolved: Vec<Resolved> = (0..3)
            .map(|_| Ok(model.clone() as Arc<dyn Backend>))
            .collect();
        let out = execute_all(resolved, jobs, 64);
        assert_eq!(*model.runs.lock().unwrap(), vec![4]);
        assert_eq!(out.iter().map(|(r, _)| r.job_id).collect::<Vec<_>>(), ids);
        assert!(out.iter().all(|(_, (version, _))| version == "7"));
        assert_eq!(data(&out[0].1.1), [1.0, 2.0]);
        assert_eq!(data(&out[1].1.1), [3.0, 4.0, 5.0, 6.0]);
        assert_eq!(data(&out[2].1.1), [7.0, 8.0]);
    }

    #[test]
    fn stacked_runs_are_split_at_max_rows() {
        let model = echo("7");
        let jobs: Vec<Runnable> = (0..5).map(|i| job(&[[i as f32, 0.0]])).collect();
        let resolved: Vec<Resolved> = (0..5)
            .map(|_| Ok(model.clone() as Arc<dyn Backend>))
            .collect();
        let out = execute_all(resolved, jobs, 2);
        assert_eq!(*model.runs.lock().unwrap(), vec![2, 2, 1]);
        for (i, (_, (_, result))) in out.iter().enumerate() {
            assert_eq!(data(result), [i as f64, 0.0]);
        }
    }

    #[test]
    fn versions_never_share_a_run_and_bad_jobs_fail_alone_in_place() {
        let (old, new) = (echo("1"), echo("2"));
        let jobs = vec![
            job(&[[1.0, 1.0]]),
            runnable(Err("not msgpack".into())),
            job(&[[2.0, 2.0]]),
            job(&[[f32::NAN, 3.0]]),
            job(&[[4.0, 4.0]]),
        ];
        // One entry per decoded job: the undecodable one has none.
        let resolved: Vec<Resolved> = vec![
            Ok(old.clone()),
            Err(JobFailure::ModelUnavailable("m".into())),
            Ok(new.clone()),
            Ok(new.clone()),
        ];
        let out = execute_all(resolved, jobs, 64);
        assert_eq!(*old.runs.lock().unwrap(), vec![1]);
        assert_eq!(*new.runs.lock().unwrap(), vec![2]);
        let codes: Vec<(&str, &str)> = out
            .iter()
            .map(|(_, (version, result))| {
                let code = result.as_ref().err().map_or("ok", |f| f.code());
                (version.as_str(), code)
            })
            .collect();
        assert_eq!(
            codes,
            [
                ("1", "ok"),
                ("", "invalid_payload"),
                ("", "model_unavailable"),
                ("2", "non_finite_output"),
                ("2", "ok"),
            ]
        );
        assert_eq!(data(&out[4].1.1), [4.0, 4.0]);
    }

    #[test]
    fn a_job_of_another_kind_fails_in_place_and_the_predictions_still_stack() {
        use shared::queue::wire::{PromotePolicy, RetrainSpec, TrainerKind, TrainingData};
        let model = echo("7");
        let mut retrain = job(&[[0.0, 0.0]]);
        if let Ok(env) = &mut retrain.delivery.job {
            env.spec = JobSpec::Retrain(RetrainSpec {
                data: TrainingData::InlineCsv("x,y\n1,2\n".into()),
                params_json: "{}".into(),
                promote: PromotePolicy::Never,
                trainer: TrainerKind::Builtin,
                quota: None,
            });
        }
        let jobs = vec![job(&[[1.0, 2.0]]), retrain, job(&[[3.0, 4.0]])];
        // One entry per prediction: the retrain job has none.
        let resolved: Vec<Resolved> = (0..2)
            .map(|_| Ok(model.clone() as Arc<dyn Backend>))
            .collect();
        let out = execute_all(resolved, jobs, 64);
        assert_eq!(*model.runs.lock().unwrap(), vec![2]);
        assert_eq!(data(&out[0].1.1), [1.0, 2.0]);
        let failure = out[1].1.1.as_ref().unwrap_err();
        assert_eq!(failure.code(), "invalid_payload");
        assert!(failure.to_string().contains("a retrain job"), "{failure}");
        assert_eq!(data(&out[2].1.1), [3.0, 4.0]);
    }
}
