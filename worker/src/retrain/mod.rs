//! One `retrain` job, from its data to a registered (and maybe promoted)
//! model version. The loop that takes these jobs off the training stream
//! is [`crate::training`]; this module is what a job does, one submodule
//! per step:
//!
//! 1. `data`: the parameters and the rows (a stored dataset read now, or
//!    the inline rows), checked again.
//! 2. `train`: the built-in trainer or the configured external command.
//! 3. `evaluate`: the candidate loaded in ONNX Runtime and scored on the
//!    holdout rows, beside the current version on the same rows.
//! 4. `decide`: the promote policy applied to those scores (a pure
//!    function); here the version is **registered** (`ready`, source
//!    `retrain`, with its scores) and **promoted** if so decided.
//!
//! Progress goes to a [`Reporter`]; the training loop writes it to the job
//! record. A shutdown stops the trainer between epochs (or kills the
//! external program) and abandons the attempt: the job's lease expires and
//! another worker runs it again.

mod data;
mod decide;
mod evaluate;
mod train;

pub use evaluate::EXPORT_TOLERANCE;
pub use train::{default_work_dir, split_command};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shared::metric_names::WORKER_RETRAIN_DECISIONS;
use shared::queue::Keys;
use shared::queue::registry::{self, Promotion, RegisterMode, Source, Version, VersionStatus};
use shared::queue::wire::{JobEnvelope, RetrainSpec};
use shared::redis_conn::Pool;
use shared::retrain::{DatasetUsed, Decision, Phase, Progress, RetrainResult, Scored};
use tokio::sync::watch;
use tracing::Span;
use trainer::{Metrics, TrainParams};

use crate::error::JobFailure;
use crate::models::ModelStore;
use crate::watchdog::CancelFlag;

use data::Data;
use evaluate::Evaluated;

/// How this worker trains.
#[derive(Debug, Clone)]
pub struct TrainerConfig {
    /// `--external-trainer`, split on whitespace.
    pub external: Option<Vec<String>>,
    pub external_timeout: Duration,
    /// Parent of the per-attempt directories of external trainers.
    pub work_dir: PathBuf,
    /// `--max-train-secs`: the whole training step of a job, either trainer.
    pub max_train: Duration,
    /// `--max-train-work`: epochs × rows × features a job may ask for.
    pub max_work: u64,
}

/// Why an attempt produced no result.
#[derive(Debug)]
pub enum Stopped {
    Failed(JobFailure),
    /// The worker is shutting down: the attempt is abandoned unfinished.
    Interrupted,
}

impl From<JobFailure> for Stopped {
    fn from(f: JobFailure) -> Stopped {
        Stopped::Failed(f)
    }
}

/// Publishes a job's [`Progress`]; the latest value wins (a slow writer
/// skips intermediate epochs, never falls behind).
pub struct Reporter {
    attempt: u32,
    tx: watch::Sender<Option<Progress>>,
}

impl Reporter {
    pub fn new(attempt: u32) -> (Reporter, watch::Receiver<Option<Progress>>) {
        let (tx, rx) = watch::channel(None);
        (Reporter { attempt, tx }, rx)
    }

    fn send(&self, phase: Phase, epoch: Option<(u32, u32, Option<f64>)>) {
        let _ = self.tx.send(Some(Progress {
            attempt: self.attempt,
            phase,
            epoch: epoch.map(|e| e.0),
            epochs: epoch.map(|e| e.1),
            train_loss: epoch.and_then(|e| e.2),
            updated_at_ms: shared::time::now_ms(),
        }));
    }

    pub fn phase(&self, phase: Phase) {
        self.send(phase, None);
    }

    pub fn epoch(&self, epoch: u32, epochs: u32, loss: Option<f64>) {
        self.send(Phase::Training, Some((epoch, epochs, loss)));
    }
}

/// What a retrain job needs from its worker.
pub struct Env<'a> {
    pub store: &'a Arc<ModelStore>,
    pub pool: &'a Pool,
    pub keys: &'a Keys,
    pub config: &'a TrainerConfig,
    pub reporter: Arc<Reporter>,
    /// Stops the trainer (between epochs; an external one is killed): set
    /// when a client cancels the job, and on shutdown.
    pub stop: CancelFlag,
    /// Set on shutdown, before `stop`: the attempt is then abandoned, not
    /// ended.
    pub shutdown: Arc<AtomicBool>,
    /// The job's span, entered on the blocking threads too.
    pub span: Span,
}

impl Env<'_> {
    /// Why the trainer stopped early: shutdown, a client's cancel, or
    /// else its time ran out.
    fn stopped(&self) -> Stopped {
        if self.shutdown.load(Ordering::Acquire) {
            Stopped::Interrupted
        } else if self.stop.load(Ordering::Acquire) {
            Stopped::Failed(JobFailure::Canceled)
        } else {
            Stopped::Failed(self.timed_out())
        }
    }

    fn timed_out(&self) -> JobFailure {
        JobFailure::TrainingTimeout {
            limit_secs: self.config.max_train.as_secs(),
        }
    }
}

/// Runs retrain job `job`, which asks for `spec`; the result is the job's
/// `result`.
pub async fn run(
    env: &Env<'_>,
    job: &JobEnvelope,
    spec: &RetrainSpec,
    attempt: u32,
) -> Result<RetrainResult, Stopped> {
    env.reporter.phase(Phase::LoadingData);
    let (params, data) = data::load(env, spec).await?;
    tracing::info!(
        attempt,
        dataset = data.name.as_deref().unwrap_or("inline"),
        sha256 = %data.sha256,
        rows = data.dataset.n_rows(),
        features = data.dataset.n_features(),
        trainer = spec.trainer.as_str(),
        task = params.task.as_str(),
        "retrain: data loaded"
    );

    let candidate = train::train(env, spec.trainer, job.id, attempt, &data, &params).await?;

    env.reporter.phase(Phase::Evaluating);
    let evaluated = evaluate::evaluate(env, &job.model, &data, &params, candidate).await?;

    env.reporter.phase(Phase::Registering);
    register_and_decide(env, job, spec, &data, &params, evaluated).await
}

fn unavailable(e: impl std::fmt::Display) -> JobFailure {
    JobFailure::RegistryUnavailable(e.to_string())
}

/// Runs CPU-bound work on the blocking pool, inside the job's span.
async fn blocking<T: Send + 'static>(
    span: &Span,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JobFailure> {
    let span = span.clone();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| JobFailure::TrainingFailed(format!("the training thread failed: {e}")))
}

fn metrics_json(m: &Metrics) -> serde_json::Value {
    serde_json::to_value(m).unwrap_or_default()
}

/// Registers the evaluated candidate (or finds the version an earlier
/// attempt of the job registered), applies the decision and reports it.
async fn register_and_decide(
    env: &Env<'_>,
    job: &JobEnvelope,
    spec: &RetrainSpec,
    data: &Data,
    params: &TrainParams,
    ev: Evaluated,
) -> Result<RetrainResult, Stopped> {
    let model = job.model.as_str();
    let split = &ev.candidate.split;
    let dataset = DatasetUsed {
        name: data.name.clone(),
        sha256: data.sha256.clone(),
        rows: data.dataset.n_rows(),
        train_rows: split.train_idx.len(),
        holdout_rows: split.holdout_idx.len(),
    };
    let baseline = match (&ev.baseline, ev.current) {
        (Ok(m), Some(n)) => Some(Scored {
            version: n,
            metrics: metrics_json(m),
        }),
        _ => None,
    };
    let params_json = serde_json::to_value(params).unwrap_or_default();
    let mut conn = env.pool.get();

    // A job taken over after its worker died may have registered already:
    // the same job and bytes reuse that version instead of adding another.
    let earlier = registry::versions(&mut conn, env.keys, model, 50)
        .await
        .map_err(unavailable)?
        .into_iter()
        .find(|v| v.job_id == Some(job.id) && v.sha256 == ev.sha256);
    let version = match earlier {
        Some(v) => v.version,
        None => {
            let mut v = Version::new(
                &ev.candidate.onnx,
                &ev.sha256,
                Source::Retrain,
                VersionStatus::Ready,
            );
            v.inputs = ev.inputs.clone();
            v.outputs = ev.outputs.clone();
            v.job_id = Some(job.id);
            v.note = Some(format!("retrain job {}", job.id));
            v.metrics = Some(serde_json::json!({
                "holdout": metrics_json(&ev.metrics),
                "baseline": baseline,
                "trainer": spec.trainer,
                "dataset": dataset,
                "params": params_json,
            }));
            let quota = spec.quota.map(|q| registry::Quota {
                tenant_models: env.keys.tenant_models(shared::model::tenant_of(model)),
                max_versions: q.max_versions,
                max_models: q.max_models,
            });
            let registration = registry::register(
                &mut conn,
                env.keys,
                model,
                &ev.candidate.onnx,
                &v,
                RegisterMode::Add,
                quota.as_ref(),
            )
            .await
            .map_err(unavailable)?;
            match registration {
                registry::Registration::Registered(r) => r.version,
                registry::Registration::QuotaExceeded(q) => {
                    return Err(JobFailure::QuotaExceeded(match q {
                        registry::QuotaExceeded::Versions { limit } => format!(
                            "the model has {limit} versions, its tenant's quota; delete old versions to train a new one"
                        ),
                        registry::QuotaExceeded::Models { limit } => {
                            format!("the tenant has {limit} models, its quota")
                        }
                    })
                    .into());
                }
            }
        }
    };

    let decided = decide::decide(
        spec.promote,
        ev.current.map(|version| decide::Current {
            version,
            scores: ev.baseline.as_ref().map_err(String::as_str),
        }),
        &ev.metrics,
    );
    let decision = decided.outcome();
    let reason = decided.reason(version, &ev.metrics);
    if decision == Decision::Promoted
        && registry::current(&mut conn, env.keys, model)
            .await
            .map_err(unavailable)?
            != Some(version)
    {
        match registry::promote(&mut conn, env.keys, model, version)
            .await
            .map_err(unavailable)?
        {
            Promotion::Done { from, to } => {
                tracing::info!(from, to, "retrain: new version promoted");
            }
            other => {
                return Err(JobFailure::TrainingFailed(format!(
                    "promoting version {version} was refused: {other:?}"
                ))
                .into());
            }
        }
    }
    let current_version = registry::current(&mut conn, env.keys, model)
        .await
        .map_err(unavailable)?;
    let decision_label = decide::label(decision);
    metrics::counter!(WORKER_RETRAIN_DECISIONS, "decision" => decision_label).increment(1);
    tracing::info!(
        version,
        decision = decision_label,
        reason,
        "retrain: finished"
    );
    Ok(RetrainResult {
        version,
        sha256: ev.sha256,
        decision,
        reason,
        promote: spec.promote,
        candidate: Scored {
            version,
            metrics: metrics_json(&ev.metrics),
        },
        baseline,
        current_version,
        trainer: spec.trainer,
        dataset,
        params: params_json,
        training_ms: ev.candidate.training.as_secs_f64() * 1e3,
        epochs: ev.candidate.epochs,
        final_train_loss: ev.candidate.final_loss,
        onnx_max_abs_diff: ev.onnx_max_abs_diff,
    })
}
