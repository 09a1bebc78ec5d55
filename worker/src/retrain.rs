//! One `retrain` job, from its data to a registered (and maybe promoted)
//! model version. The loop that takes these jobs off the training stream
//! is [`crate::training`]; this module is what a job does:
//!
//! 1. **Data**: the named dataset (read from Redis now, so a dataset
//!    replaced while the job waited is the one trained on; its hash goes in
//!    the result) or the inline rows; parsed with the job's target column.
//! 2. **Train**: the built-in trainer ([`trainer::train`], logistic or ridge
//!    regression) on a blocking thread, or the configured external command
//!    on the training split only ([`trainer::run_external_cancellable`]),
//!    its output logged in the job's span.
//! 3. **Evaluate**: the new ONNX bytes are loaded in ONNX Runtime (the
//!    same check an upload gets) and scored on the holdout rows; the
//!    built-in trainer's own predictions must match ONNX Runtime's. The
//!    current version, if its signature is the same, is scored on the same
//!    rows.
//! 4. **Register** the version (`ready`, source `retrain`, with its scores)
//!    and **promote** it if the policy says so.
//!
//! Progress goes to a [`Reporter`]; the training loop writes it to the job
//! record. A shutdown stops the trainer between epochs (or kills the
//! external program) and abandons the attempt: the job's lease expires and
//! another worker runs it again.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2, Axis};
use shared::metric_names::{WORKER_RETRAIN_DECISIONS, WORKER_TRAINING};
use shared::model::TENANT_SEPARATOR;
use shared::queue::registry::{self, Promotion, RegisterMode, Source, Version, VersionStatus};
use shared::queue::wire::{JobEnvelope, PromotePolicy, RetrainSpec, TrainerKind, TrainingData};
use shared::queue::{Keys, datasets};
use shared::redis_conn::Pool;
use shared::retrain::{DatasetUsed, Decision, Phase, Progress, RetrainResult, Scored};
use shared::tensor::{DataType, Tensor, TensorData, TensorSpec};
use tokio::sync::watch;
use tracing::Span;
use trainer::{Dataset, Metrics, Predictions, Split, Task, TrainError, TrainParams};

use crate::backend::{Backend, RunControl};
use crate::error::JobFailure;
use crate::models::{ModelStore, sha256_hex};
use crate::watchdog::CancelFlag;

/// Largest accepted difference between ONNX Runtime's outputs and the
/// built-in trainer's predictions, relative to the value (absolute below 1).
pub const EXPORT_TOLERANCE: f64 = 1e-5;

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

/// The data a job trains on, parsed.
struct Data {
    dataset: Arc<Dataset>,
    name: Option<String>,
    sha256: String,
}

/// A trained model, before evaluation.
struct Candidate {
    onnx: Vec<u8>,
    split: Split,
    /// The built-in trainer's model, to check the export against.
    builtin: Option<trainer::LinearModel>,
    training: Duration,
    epochs: Option<u32>,
    final_loss: Option<f64>,
}

/// The truth of the holdout rows.
enum Truth {
    Labels(Vec<usize>),
    Targets(Vec<f64>),
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
    let params: TrainParams = serde_json::from_str(&spec.params_json)
        .map_err(|e| JobFailure::InvalidPayload(format!("retrain parameters: {e}")))?;
    params
        .validate()
        .map_err(|e| JobFailure::InvalidPayload(e.to_string()))?;
    let data = load_data(env, spec, &params).await?;
    params
        .check_work(
            data.dataset.n_rows(),
            data.dataset.n_features(),
            env.config.max_work,
        )
        .map_err(|e| JobFailure::TrainingBudget(e.to_string()))?;
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

    // The clock of --max-train-secs starts with the training itself.
    let deadline = Instant::now() + env.config.max_train;
    let candidate = match spec.trainer {
        TrainerKind::Builtin => train_builtin(env, &data, &params, deadline).await?,
        TrainerKind::External => {
            train_external(env, job, attempt, &data, &params, deadline).await?
        }
    };
    metrics::histogram!(WORKER_TRAINING, "trainer" => spec.trainer.as_str())
        .record(candidate.training.as_secs_f64());

    env.reporter.phase(Phase::Evaluating);
    let evaluated = evaluate(env, &job.model, &data, &params, candidate).await?;

    env.reporter.phase(Phase::Registering);
    register_and_decide(env, job, spec, &data, &params, evaluated).await
}

fn unavailable(e: impl std::fmt::Display) -> JobFailure {
    JobFailure::RegistryUnavailable(e.to_string())
}

/// A tenant-qualified name as its tenant knows it.
fn public_name(internal: &str) -> &str {
    internal
        .split_once(TENANT_SEPARATOR)
        .map_or(internal, |(_, n)| n)
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

async fn load_data(
    env: &Env<'_>,
    spec: &RetrainSpec,
    params: &TrainParams,
) -> Result<Data, JobFailure> {
    let (bytes, name) = match &spec.data {
        TrainingData::Dataset(internal) => {
            let public = public_name(internal).to_owned();
            let mut conn = env.pool.get().await.map_err(unavailable)?;
            match datasets::get(&mut conn, env.keys, internal).await {
                Ok(Some((csv, _))) => (csv, Some(public)),
                Ok(None) => return Err(JobFailure::DatasetNotFound(public)),
                Err(e) => return Err(unavailable(e)),
            }
        }
        TrainingData::InlineCsv(text) => (text.clone().into_bytes(), None),
    };
    let target = params.target_column.clone();
    let (sha256, parsed) = blocking(&env.span, move || {
        (sha256_hex(&bytes), Dataset::from_csv(&bytes, &target))
    })
    .await?;
    let dataset = parsed.map_err(|e| JobFailure::InvalidDataset(e.to_string()))?;
    Ok(Data {
        dataset: Arc::new(dataset),
        name,
        sha256,
    })
}

/// Maps a trainer error to the job's failure: the data's fault, or the
/// training's.
fn train_failure(e: TrainError) -> JobFailure {
    match e {
        TrainError::Diverged { .. } | TrainError::Eval(_) | TrainError::Stopped { .. } => {
            JobFailure::TrainingFailed(e.to_string())
        }
        TrainError::Param(_)
        | TrainError::TargetMismatch { .. }
        | TrainError::TooFewRows { .. }
        | TrainError::InvalidLabel { .. }
        | TrainError::SingleClass { .. } => JobFailure::InvalidDataset(e.to_string()),
    }
}

async fn train_builtin(
    env: &Env<'_>,
    data: &Data,
    params: &TrainParams,
    deadline: Instant,
) -> Result<Candidate, Stopped> {
    let dataset = Arc::clone(&data.dataset);
    let params = params.clone();
    let reporter = Arc::clone(&env.reporter);
    let stop = Arc::clone(&env.stop);
    let trained = blocking(&env.span, move || {
        let trained = trainer::train(&dataset, &params, |p| {
            reporter.epoch(p.epoch, p.epochs, Some(p.train_loss));
            if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        let onnx = trained.to_onnx();
        Ok::<_, TrainError>((trained, onnx))
    })
    .await?;
    let (trained, onnx) = match trained {
        Ok(t) => t,
        Err(TrainError::Stopped { .. }) => return Err(env.stopped()),
        Err(e) => return Err(train_failure(e).into()),
    };
    let final_loss = trained.losses.last().copied();
    tracing::info!(
        epochs = trained.losses.len(),
        final_train_loss = final_loss,
        training_ms = trained.elapsed.as_secs_f64() * 1e3,
        holdout = %trained.metrics,
        "retrain: built-in trainer finished"
    );
    Ok(Candidate {
        onnx,
        split: trained.split,
        epochs: u32::try_from(trained.losses.len()).ok(),
        final_loss,
        training: trained.elapsed,
        builtin: Some(trained.model),
    })
}

/// A fresh private directory for one attempt of an external trainer,
/// removed when dropped: created the way `mkdtemp` does (a random name,
/// mode 0700, failing rather than reusing anything already there), so a
/// path planted in a shared `--train-dir` (a symlink, a directory of
/// someone else's) is never followed. The files in it are created new.
struct WorkDir(tempfile::TempDir);

impl WorkDir {
    fn create(
        parent: &std::path::Path,
        job: &JobEnvelope,
        attempt: u32,
    ) -> std::io::Result<WorkDir> {
        use std::os::unix::fs::PermissionsExt;
        tempfile::Builder::new()
            .prefix(&format!("onnxq-train-{}-{attempt}-", job.id))
            // mkdir with 0700: tempfile's default follows the umask.
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .map(WorkDir)
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// Writes a new file in the directory (never an existing one).
    fn write_new(&self, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        use std::io::Write;
        let path = self.path().join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?
            .write_all(bytes)?;
        Ok(path)
    }

    fn remove(self) {
        let path = self.path().to_owned();
        if let Err(error) = self.0.close() {
            tracing::warn!(dir = %path.display(), %error, "cannot remove the training directory");
        }
    }
}

async fn train_external(
    env: &Env<'_>,
    job: &JobEnvelope,
    attempt: u32,
    data: &Data,
    params: &TrainParams,
    deadline: Instant,
) -> Result<Candidate, Stopped> {
    let command = env
        .config
        .external
        .clone()
        .ok_or(JobFailure::ExternalTrainerNotConfigured)?;
    let split = Split::new(data.dataset.n_rows(), params.holdout_fraction, params.seed)
        .map_err(train_failure)?;
    if params.task == Task::Classification {
        split.holdout_labels(&data.dataset).map_err(train_failure)?;
    }
    let params_json = serde_json::to_vec(params)
        .map_err(|e| JobFailure::TrainingFailed(format!("encoding the parameters: {e}")))?;
    let dataset = Arc::clone(&data.dataset);
    let train_idx = split.train_idx.clone();
    let reporter = Arc::clone(&env.reporter);
    let stop = Arc::clone(&env.stop);
    let left = deadline.saturating_duration_since(Instant::now());
    // Whichever limit binds: the trainer's own timeout or what is left of
    // --max-train-secs.
    let (timeout, train_limit_binds) = if left < env.config.external_timeout {
        (left, true)
    } else {
        (env.config.external_timeout, false)
    };
    let parent = env.config.work_dir.clone();
    let job_for_dir = job.clone();
    let ran = blocking(&env.span, move || {
        let io = |what: &str, e: std::io::Error| {
            JobFailure::TrainingFailed(format!("{what} the training directory: {e}"))
        };
        let dir = WorkDir::create(&parent, &job_for_dir, attempt).map_err(|e| io("creating", e))?;
        // Training rows only: the holdout rows stay unseen, so the scores
        // mean the same for both trainers.
        let csv = dir
            .write_new("train.csv", &dataset.to_csv(&train_idx))
            .map_err(|e| io("writing into", e))?;
        let json = dir
            .write_new("params.json", &params_json)
            .map_err(|e| io("writing into", e))?;
        let out = dir.path().join("model.onnx");
        tracing::info!(command = ?command, rows = train_idx.len(), "retrain: starting the external trainer");
        let ran = trainer::run_external_cancellable(
            &command,
            &csv,
            &json,
            &out,
            timeout,
            &stop,
            |stream, line| {
                tracing::info!(stream = stream.as_str(), line, "external trainer output");
                if stream == trainer::Stream::Stdout
                    && let Some((k, n, loss)) = trainer::parse_progress(line)
                {
                    reporter.epoch(k, n, loss);
                }
            },
        );
        dir.remove();
        Ok::<_, JobFailure>(ran)
    })
    .await??;
    let out = match ran {
        Ok(out) => out,
        Err(trainer::ExternalError::Canceled) => return Err(env.stopped()),
        Err(trainer::ExternalError::Timeout { .. }) if train_limit_binds => {
            return Err(env.timed_out().into());
        }
        Err(e) => {
            tracing::warn!(error = %e, "retrain: the external trainer failed");
            return Err(JobFailure::ExternalTrainer(e.to_string()).into());
        }
    };
    tracing::info!(
        training_ms = out.elapsed.as_secs_f64() * 1e3,
        size = out.onnx.len(),
        "retrain: external trainer finished"
    );
    Ok(Candidate {
        onnx: out.onnx,
        split,
        builtin: None,
        training: out.elapsed,
        epochs: None,
        final_loss: None,
    })
}

/// A candidate loaded and scored, with the current version's score.
struct Evaluated {
    candidate: Candidate,
    sha256: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    metrics: Metrics,
    onnx_max_abs_diff: Option<f64>,
    /// The version current at evaluation time.
    current: Option<u32>,
    baseline: Result<Metrics, String>,
}

async fn evaluate(
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
        let mut conn = env.pool.get().await.map_err(unavailable)?;
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

fn metrics_json(m: &Metrics) -> serde_json::Value {
    serde_json::to_value(m).unwrap_or_default()
}

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
    let mut conn = env.pool.get().await.map_err(unavailable)?;

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

    let candidate_text = ev.metrics.to_string();
    let (decision, reason) = match spec.promote {
        PromotePolicy::Never => (
            Decision::RegisteredOnly,
            format!("promote is \"never\"; new version {version}: {candidate_text}"),
        ),
        PromotePolicy::Always => (
            Decision::Promoted,
            format!("promote is \"always\"; new version {version}: {candidate_text}"),
        ),
        PromotePolicy::IfNotWorse => match (ev.current, &ev.baseline) {
            (None, _) => (
                Decision::Promoted,
                format!(
                    "the model had no current version; new version {version}: {candidate_text}"
                ),
            ),
            (Some(n), Ok(b)) => match ev.metrics.not_worse_than(b) {
                Ok(true) => (
                    Decision::Promoted,
                    format!(
                        "new version {version} ({candidate_text}) is not worse than current version {n} ({b})"
                    ),
                ),
                Ok(false) => (
                    Decision::KeptCurrent,
                    format!(
                        "new version {version} ({candidate_text}) is worse than current version {n} ({b})"
                    ),
                ),
                Err(e) => (
                    Decision::KeptCurrent,
                    format!(
                        "new version {version} cannot be compared with current version {n}: {e}"
                    ),
                ),
            },
            (Some(n), Err(why)) => (
                Decision::KeptCurrent,
                format!(
                    "new version {version} ({candidate_text}) was not compared with current version {n}: {why}; promote it explicitly if wanted"
                ),
            ),
        },
    };
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
    let decision_label = match decision {
        Decision::Promoted => "promoted",
        Decision::KeptCurrent => "kept_current",
        Decision::RegisteredOnly => "registered_only",
    };
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

/// Splits `--external-trainer` into argv.
pub fn split_command(command: &str) -> Option<Vec<String>> {
    let argv: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    (!argv.is_empty()).then_some(argv)
}

/// Where external trainers work by default.
pub fn default_work_dir() -> PathBuf {
    std::env::temp_dir()
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

    #[test]
    fn a_work_dir_is_private_fresh_and_never_follows_what_is_planted() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().expect("parent");
        let job = JobEnvelope {
            id: shared::Keys::new("x").new_job_id(0),
            model: "m".into(),
            submitted_at_ms: 0,
            deadline_ms: None,
            traceparent: None,
            spec: shared::queue::wire::JobSpec::Validate { version: 1 },
        };
        // The old predictable name, planted as a symlink to elsewhere.
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        let planted = parent.path().join(format!("onnxq-train-{}-1", job.id));
        std::os::unix::fs::symlink(elsewhere.path(), &planted).expect("symlink");
        let a = WorkDir::create(parent.path(), &job, 1).expect("create");
        let b = WorkDir::create(parent.path(), &job, 1).expect("create again");
        assert_ne!(a.path(), b.path());
        assert_ne!(a.path(), planted.as_path());
        let mode = std::fs::metadata(a.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // Inside, a name that exists (here a symlink) is never written through.
        std::os::unix::fs::symlink(elsewhere.path().join("x"), a.path().join("train.csv"))
            .expect("symlink");
        assert!(a.write_new("train.csv", b"1").is_err());
        assert!(!elsewhere.path().join("x").exists());
        let p = a.write_new("params.json", b"{}").expect("new file");
        assert_eq!(std::fs::read(p).expect("read"), b"{}");
        let path = a.path().to_owned();
        a.remove();
        assert!(!path.exists());
    }

    #[test]
    fn tenant_prefix_is_not_shown() {
        assert_eq!(public_name("acme~bc"), "bc");
        assert_eq!(public_name("bc"), "bc");
    }

    #[test]
    fn external_command_is_split_on_whitespace() {
        assert_eq!(
            split_command(" python3  scripts/t.py --x 1 "),
            Some(vec![
                "python3".to_owned(),
                "scripts/t.py".into(),
                "--x".into(),
                "1".into()
            ])
        );
        assert_eq!(split_command("   "), None);
    }
}
