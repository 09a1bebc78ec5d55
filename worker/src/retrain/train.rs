//! Running the trainer a job asks for, within `--max-train-secs`: the
//! built-in one ([`trainer::train`], logistic or ridge regression) on a
//! blocking thread, or the configured external command on the training
//! split only ([`trainer::run_external_cancellable`]) in a private
//! directory of its own, its output logged in the job's span. Both stop
//! when the job is canceled or the worker shuts down.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shared::metric_names::WORKER_TRAINING;
use shared::queue::wire::TrainerKind;
use trainer::{Split, Task, TrainError, TrainParams};
use uuid::Uuid;

use super::data::Data;
use super::{Env, Stopped, blocking};
use crate::error::JobFailure;

/// A trained model, before evaluation.
pub(super) struct Candidate {
    pub(super) onnx: Vec<u8>,
    pub(super) split: Split,
    /// The built-in trainer's model, to check the export against.
    pub(super) builtin: Option<trainer::LinearModel>,
    pub(super) training: Duration,
    pub(super) epochs: Option<u32>,
    pub(super) final_loss: Option<f64>,
}

/// Trains with `trainer` on `data`; the clock of `--max-train-secs` starts
/// here, with the training itself.
pub(super) async fn train(
    env: &Env<'_>,
    trainer: TrainerKind,
    job_id: Uuid,
    attempt: u32,
    data: &Data,
    params: &TrainParams,
) -> Result<Candidate, Stopped> {
    let deadline = Instant::now() + env.config.max_train;
    let candidate = match trainer {
        TrainerKind::Builtin => builtin(env, data, params, deadline).await?,
        TrainerKind::External => external(env, job_id, attempt, data, params, deadline).await?,
    };
    metrics::histogram!(WORKER_TRAINING, "trainer" => trainer.as_str())
        .record(candidate.training.as_secs_f64());
    Ok(candidate)
}

/// Maps a trainer error to the job's failure: the data's fault, or the
/// training's.
pub(super) fn train_failure(e: TrainError) -> JobFailure {
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

async fn builtin(
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
    fn create(parent: &std::path::Path, job_id: Uuid, attempt: u32) -> std::io::Result<WorkDir> {
        use std::os::unix::fs::PermissionsExt;
        tempfile::Builder::new()
            .prefix(&format!("onnxq-train-{job_id}-{attempt}-"))
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

async fn external(
    env: &Env<'_>,
    job_id: Uuid,
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
    let ran = blocking(&env.span, move || {
        let io = |what: &str, e: std::io::Error| {
            JobFailure::TrainingFailed(format!("{what} the training directory: {e}"))
        };
        let dir = WorkDir::create(&parent, job_id, attempt).map_err(|e| io("creating", e))?;
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

    #[test]
    fn a_work_dir_is_private_fresh_and_never_follows_what_is_planted() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().expect("parent");
        let job_id = shared::Keys::new("x").new_job_id(0);
        // The old predictable name, planted as a symlink to elsewhere.
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        let planted = parent.path().join(format!("onnxq-train-{job_id}-1"));
        std::os::unix::fs::symlink(elsewhere.path(), &planted).expect("symlink");
        let a = WorkDir::create(parent.path(), job_id, 1).expect("create");
        let b = WorkDir::create(parent.path(), job_id, 1).expect("create again");
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
