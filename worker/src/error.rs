//! The worker's two error types: [`WorkerError`] stops the process at start-up
//! (missing library, unreadable models dir, bad configuration) and
//! [`JobFailure`] fails one job with a stable code the client sees.

use std::path::PathBuf;

use shared::job::JobError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(
        "ONNX Runtime library not found (looked in: {}). Run scripts/setup, or pass --ort-lib / set ORT_DYLIB_PATH to libonnxruntime.so",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    OrtLibraryMissing { tried: Vec<PathBuf> },
    #[error("cannot load the ONNX Runtime library {path}: {message}")]
    OrtLoad { path: PathBuf, message: String },
    #[error("cannot read models dir {path}: {source}")]
    ModelsDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no loadable *.onnx model in {0}")]
    NoModels(PathBuf),
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    #[error("invalid redis url: {0}")]
    RedisUrl(#[from] redis::RedisError),
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// Why one job failed. Each variant is a stable error code in the job record,
/// and [`JobFailure::is_transient`] decides by variant whether it is retried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobFailure {
    /// The payload on the stream could not be decoded.
    #[error("the job payload could not be decoded: {0}")]
    InvalidPayload(String),
    /// No model of that name is loaded by this worker.
    #[error("model {0} is not loaded by this worker")]
    ModelUnavailable(String),
    /// The inputs do not match the model's signature (the API validates
    /// against the published signature; this catches a model changed since).
    #[error("{0}")]
    InvalidInput(String),
    /// ONNX Runtime rejected the run.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The model produced NaN or infinity: never reported as a success.
    #[error("output {output} holds a non-finite value at index {index}")]
    NonFiniteOutput { output: String, index: usize },
    /// The model produced an output type the API cannot represent.
    #[error("output {output} has unsupported type {ty}")]
    UnsupportedOutput { output: String, ty: String },
    /// A `validate` job: ONNX Runtime refused the uploaded bytes.
    #[error("ONNX Runtime cannot load the model: {0}")]
    InvalidModel(String),
    /// A model tensor refers to data outside the model (ONNX external
    /// data): refused before ONNX Runtime sees it.
    #[error("the model is not self-contained: {0}")]
    ModelExternalData(String),
    /// A tensor declares more bytes than `--max-model-tensor-bytes`.
    #[error("the model declares too much tensor data: {0}")]
    ModelTensorTooLarge(String),
    /// Too many nodes or subgraphs nested too deep.
    #[error("the model is too complex: {0}")]
    ModelTooComplex(String),
    /// Validation ran out of its CPU or wall-clock limit.
    #[error("validating the model took too long: {0}")]
    ModelValidationTimeout(String),
    /// Validation ran out of its memory limit.
    #[error("validating the model needed too much memory: {0}")]
    ModelValidationMemory(String),
    /// The validation process died for another reason.
    #[error("the model crashed its validation: {0}")]
    ModelValidationCrashed(String),
    /// The validation process could not be started (this worker's
    /// problem, not the model's).
    #[error("the model validator could not run: {0}")]
    ValidatorUnavailable(String),
    /// A pinned version that does not exist or is not `ready`.
    #[error("{0}")]
    VersionUnavailable(String),
    /// A retrain job names a dataset that is not stored (any more).
    #[error("dataset {0} not found")]
    DatasetNotFound(String),
    /// The training data cannot be trained on with these parameters: bad
    /// CSV, missing target column, labels that are not class indices, too
    /// few rows.
    #[error("{0}")]
    InvalidDataset(String),
    /// Training itself failed (diverged) or its model could not be scored.
    #[error("training failed: {0}")]
    TrainingFailed(String),
    /// The external trainer failed, timed out or wrote no model.
    #[error("{0}")]
    ExternalTrainer(String),
    /// `"trainer": "external"` on a worker without `--external-trainer`.
    #[error("this worker has no external trainer configured (--external-trainer)")]
    ExternalTrainerNotConfigured,
    /// The trained model loads but does not fit the task (no usable
    /// input or output for the data).
    #[error("the trained model does not fit the task: {0}")]
    IncompatibleModel(String),
    /// The exported ONNX model does not compute what the trainer computed.
    #[error("the exported model disagrees with the trainer: {0}")]
    ExportMismatch(String),
    /// Redis failed while a retrain job read its data or stored its model.
    #[error("registry unavailable: {0}")]
    RegistryUnavailable(String),
    /// The run passed `--max-run-ms` and was terminated.
    #[error("inference took longer than the limit of {limit_ms} ms and was stopped")]
    InferenceTimeout { limit_ms: u64 },
    /// The run needed more memory than the worker's ceiling
    /// (`--max-memory-mb`) allows.
    #[error("the run needed more memory than this deployment allows a job")]
    InferenceMemory,
    /// The outputs, or their JSON, are over `--max-output-elements` or
    /// `--max-result-bytes`.
    #[error("the result is too large: {0}")]
    ResultTooLarge(String),
    /// A client canceled the job while it ran; not a failure of the job,
    /// the attempt ends `canceled`.
    #[error("canceled while running")]
    Canceled,
    /// Training passed `--max-train-secs` and was stopped.
    #[error("training took longer than the limit of {limit_secs} s and was stopped")]
    TrainingTimeout { limit_secs: u64 },
    /// epochs × rows × features over `--max-train-work`.
    #[error("{0}")]
    TrainingBudget(String),
    /// Registering the trained version would take its tenant past a
    /// registry quota.
    #[error("{0}")]
    QuotaExceeded(String),
}

impl JobFailure {
    pub fn code(&self) -> &'static str {
        match self {
            JobFailure::InvalidPayload(_) => "invalid_payload",
            JobFailure::ModelUnavailable(_) => "model_unavailable",
            JobFailure::InvalidInput(_) => "invalid_input",
            JobFailure::Inference(_) => "inference_error",
            JobFailure::NonFiniteOutput { .. } => "non_finite_output",
            JobFailure::UnsupportedOutput { .. } => "unsupported_output",
            JobFailure::InvalidModel(_) => "invalid_model",
            JobFailure::VersionUnavailable(_) => "model_version_unavailable",
            JobFailure::ModelExternalData(_) => "model_external_data",
            JobFailure::ModelTensorTooLarge(_) => "model_tensor_too_large",
            JobFailure::ModelTooComplex(_) => "model_too_complex",
            JobFailure::ModelValidationTimeout(_) => "model_validation_timeout",
            JobFailure::ModelValidationMemory(_) => "model_validation_memory",
            JobFailure::ModelValidationCrashed(_) => "model_validation_crashed",
            JobFailure::ValidatorUnavailable(_) => "validator_unavailable",
            JobFailure::DatasetNotFound(_) => "dataset_not_found",
            JobFailure::InvalidDataset(_) => "invalid_dataset",
            JobFailure::TrainingFailed(_) => "training_failed",
            JobFailure::ExternalTrainer(_) => "external_trainer_failed",
            JobFailure::ExternalTrainerNotConfigured => "external_trainer_not_configured",
            JobFailure::IncompatibleModel(_) => "incompatible_model",
            JobFailure::ExportMismatch(_) => "export_mismatch",
            JobFailure::RegistryUnavailable(_) => "registry_unavailable",
            JobFailure::InferenceTimeout { .. } => "inference_timeout",
            JobFailure::InferenceMemory => "inference_out_of_memory",
            JobFailure::ResultTooLarge(_) => "result_too_large",
            JobFailure::Canceled => "canceled",
            JobFailure::TrainingTimeout { .. } => "training_timeout",
            JobFailure::TrainingBudget(_) => "training_budget_exceeded",
            JobFailure::QuotaExceeded(_) => "quota_exceeded",
        }
    }

    /// Transient failures are retried with back-off and dead-lettered when
    /// attempts run out: a model that fails to run a valid input (a broken or
    /// half-deployed model file) may work once fixed, and a model missing on
    /// this worker may be served by another. Permanent ones fail at once: the
    /// same input would fail the same way. A retrain job that needs an
    /// external trainer this worker lacks is retried too: another worker
    /// may have one. An external trainer that failed is not: its run is
    /// assumed deterministic and may have taken up to its timeout. Limits
    /// are permanent: the same input hits the same limit again, and
    /// retrying a job that held a slot for `--max-run-ms` would only hold
    /// it three times as long. A cancel is the client's decision.
    /// A model refused by validation is refused for good, resource limits
    /// included (the same bytes hit the same limits, and a bomb must not be
    /// run again on every retry); only a validator that could not start
    /// is this worker's problem and worth another attempt.
    pub fn is_transient(&self) -> bool {
        match self {
            JobFailure::ModelUnavailable(_)
            | JobFailure::Inference(_)
            | JobFailure::ExternalTrainerNotConfigured
            | JobFailure::RegistryUnavailable(_)
            | JobFailure::ValidatorUnavailable(_) => true,
            JobFailure::ModelExternalData(_)
            | JobFailure::ModelTensorTooLarge(_)
            | JobFailure::ModelTooComplex(_)
            | JobFailure::ModelValidationTimeout(_)
            | JobFailure::ModelValidationMemory(_)
            | JobFailure::ModelValidationCrashed(_) => false,
            JobFailure::DatasetNotFound(_)
            | JobFailure::InvalidDataset(_)
            | JobFailure::TrainingFailed(_)
            | JobFailure::ExternalTrainer(_)
            | JobFailure::IncompatibleModel(_)
            | JobFailure::ExportMismatch(_) => false,
            JobFailure::InvalidPayload(_)
            | JobFailure::InvalidInput(_)
            | JobFailure::NonFiniteOutput { .. }
            | JobFailure::UnsupportedOutput { .. }
            | JobFailure::InvalidModel(_)
            | JobFailure::VersionUnavailable(_) => false,
            JobFailure::InferenceTimeout { .. }
            | JobFailure::InferenceMemory
            | JobFailure::ResultTooLarge(_)
            | JobFailure::TrainingTimeout { .. }
            | JobFailure::TrainingBudget(_)
            | JobFailure::QuotaExceeded(_)
            | JobFailure::Canceled => false,
        }
    }

    /// The model-rejection failure of a stable code (as a validation child
    /// process reports it); `None` for codes that are not model rejections.
    pub fn model_rejection(code: &str, message: String) -> Option<JobFailure> {
        Some(match code {
            "invalid_model" => JobFailure::InvalidModel(message),
            "model_external_data" => JobFailure::ModelExternalData(message),
            "model_tensor_too_large" => JobFailure::ModelTensorTooLarge(message),
            "model_too_complex" => JobFailure::ModelTooComplex(message),
            "model_validation_timeout" => JobFailure::ModelValidationTimeout(message),
            "model_validation_memory" => JobFailure::ModelValidationMemory(message),
            "model_validation_crashed" => JobFailure::ModelValidationCrashed(message),
            _ => return None,
        })
    }

    /// The failure's own text, without the code's sentence around it.
    pub fn detail(&self) -> String {
        match self {
            JobFailure::InvalidModel(m)
            | JobFailure::ModelExternalData(m)
            | JobFailure::ModelTensorTooLarge(m)
            | JobFailure::ModelTooComplex(m)
            | JobFailure::ModelValidationTimeout(m)
            | JobFailure::ModelValidationMemory(m)
            | JobFailure::ModelValidationCrashed(m) => m.clone(),
            other => other.to_string(),
        }
    }

    pub fn to_job_error(&self) -> JobError {
        JobError {
            code: self.code().to_owned(),
            message: self.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variant_decides_retries() {
        assert!(JobFailure::Inference("x".into()).is_transient());
        assert!(JobFailure::ModelUnavailable("m".into()).is_transient());
        assert!(!JobFailure::InvalidInput("x".into()).is_transient());
        assert!(!JobFailure::InvalidPayload("x".into()).is_transient());
        let nan = JobFailure::NonFiniteOutput {
            output: "y".into(),
            index: 0,
        };
        assert!(!nan.is_transient());
        assert_eq!(nan.code(), "non_finite_output");
        for limit in [
            JobFailure::InferenceTimeout { limit_ms: 1 },
            JobFailure::ResultTooLarge("x".into()),
            JobFailure::TrainingTimeout { limit_secs: 1 },
        ] {
            assert!(!limit.is_transient(), "{limit:?}");
        }
    }

    #[test]
    fn model_rejections_round_trip_through_their_codes() {
        let all = [
            JobFailure::InvalidModel("m".into()),
            JobFailure::ModelExternalData("m".into()),
            JobFailure::ModelTensorTooLarge("m".into()),
            JobFailure::ModelTooComplex("m".into()),
            JobFailure::ModelValidationTimeout("m".into()),
            JobFailure::ModelValidationMemory("m".into()),
            JobFailure::ModelValidationCrashed("m".into()),
        ];
        for f in all {
            assert!(!f.is_transient(), "{f:?}");
            assert_eq!(
                JobFailure::model_rejection(f.code(), f.detail()),
                Some(f.clone())
            );
        }
        assert!(JobFailure::ValidatorUnavailable("x".into()).is_transient());
        assert_eq!(
            JobFailure::model_rejection("inference_error", "x".into()),
            None
        );
    }
}
