//! OpenAPI schema pieces the derives cannot write, for the handler modules
//! that define the request and response types (a leaf: it imports nothing
//! from the crate, so any handler can use it).
//!
//! - [`exactly_one_of`]: a request that takes one of two fields, never both
//!   or neither (predict's `features` or `inputs`, retrain's `dataset` or
//!   `data`). A derive would document both as optional and allow `{}`.
//! - [`nullable_ref`]: a field that may be `null` (the same as absent).
//! - The results a worker writes ([`AnyJobResult`]): the API splices them
//!   into the job view verbatim and never decodes them, so they have no
//!   Rust type here to derive from. The e2e OpenAPI test validates real
//!   results against these schemas, which is what keeps the two in step.
//! - The `…Doc` mirrors of types the API does not define itself, for the
//!   document ([`crate::openapi`]) and the handler modules' `#[schema(value_type
//!   = ...)]`: here rather than in the document, which imports the handlers.

use serde::Serialize;
use shared::tensor::{DataType, TensorSpec};
use utoipa::ToSchema;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};

/// One of the two fields of [`exactly_one_of`]: its name, its JSON type and
/// a title for the branch that gives it.
pub struct Choice<'a> {
    pub field: &'a str,
    pub json_type: Type,
    pub title: &'a str,
}

/// `fields` (an object schema listing both), plus: exactly one of the two
/// choices is present and not `null`.
pub fn exactly_one_of(
    fields: impl Into<RefOr<Schema>>,
    [a, b]: [Choice<'_>; 2],
    description: &str,
) -> RefOr<Schema> {
    let branch = |given: &Choice<'_>, absent: &Choice<'_>| {
        ObjectBuilder::new()
            .title(Some(given.title))
            .required(given.field)
            .property(
                given.field,
                ObjectBuilder::new().schema_type(given.json_type.clone()),
            )
            .property(absent.field, ObjectBuilder::new().schema_type(Type::Null))
    };
    AllOfBuilder::new()
        .item(fields)
        .item(
            OneOfBuilder::new()
                .item(branch(&a, &b))
                .item(branch(&b, &a)),
        )
        .description(Some(description))
        .into()
}

/// A reference to the schema `name`, or `null`.
pub fn nullable_ref(name: &str, description: &str) -> OneOfBuilder {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(Ref::from_schema_name(name))
        .description(Some(description))
}

/// A succeeded job's result: predictions, a validated version, or a
/// retrain's outcome.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum AnyJobResult {
    Predict(JobResult),
    Retrain(shared::retrain::RetrainResult),
    Validate(ValidateResult),
}

/// A succeeded predict job's result.
#[derive(Serialize, ToSchema)]
pub struct JobResult {
    pub outputs: Vec<OutputTensor>,
    /// Present when the first output holds exactly one number.
    pub prediction: Option<f64>,
}

/// One output tensor of a result (Open Inference Protocol form).
#[derive(Serialize, ToSchema)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: DataType,
    /// The values, flat, in row-major order.
    #[schema(value_type = Vec<Value>)]
    pub data: Vec<()>,
}

/// A succeeded `validate` job's result (an upload found loadable).
#[derive(Serialize, ToSchema)]
pub struct ValidateResult {
    pub model_version: u32,
    /// Always `ready`.
    pub status: String,
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// `POST /v1/models/{model}/retrain` body: exactly one of `dataset` or
/// `data`. Unknown fields are refused.
#[derive(Serialize, ToSchema)]
#[schema(as = RetrainRequest)]
pub struct RetrainRequestDoc {
    /// A stored dataset's name (`PUT /v1/datasets/{name}`).
    pub dataset: Option<String>,
    /// Inline rows: one number per column, in the order of `columns`.
    pub data: Option<InlineRowsDoc>,
    pub params: Option<TrainParamsDoc>,
    /// Default `if_not_worse`.
    pub promote: Option<PromotePolicyDoc>,
    /// Default `builtin`.
    pub trainer: Option<TrainerKindDoc>,
}

/// Training rows sent inline.
#[derive(Serialize, ToSchema)]
#[schema(as = InlineRows)]
pub struct InlineRowsDoc {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<f64>>,
}

/// Training parameters; every field is optional (defaults in brackets),
/// unknown fields are refused.
#[derive(Serialize, ToSchema)]
#[schema(as = TrainParams)]
pub struct TrainParamsDoc {
    /// Column to predict ["target"].
    pub target_column: Option<String>,
    /// ["classification"]: logistic regression over class indices 0..k.
    pub task: Option<TaskDoc>,
    /// 1..=100000 [100].
    pub epochs: Option<u32>,
    /// (0, 10] [0.1].
    pub learning_rate: Option<f64>,
    /// L2 penalty on standardised weights, [0, 1000] [0.001].
    pub l2: Option<f64>,
    /// [0.05, 0.5] [0.2].
    pub holdout_fraction: Option<f64>,
    /// Seeds the split and mini-batch order [0].
    pub seed: Option<u64>,
    /// >= 1 [32].
    pub batch_size: Option<u32>,
}

/// What the model predicts.
#[derive(Serialize, ToSchema)]
#[schema(as = Task)]
#[serde(rename_all = "snake_case")]
pub enum TaskDoc {
    Classification,
    Regression,
}

/// When a retrained version becomes current.
#[derive(Serialize, ToSchema)]
#[schema(as = PromotePolicy)]
#[serde(rename_all = "snake_case")]
pub enum PromotePolicyDoc {
    IfNotWorse,
    Always,
    Never,
}

/// Which program trains.
#[derive(Serialize, ToSchema)]
#[schema(as = TrainerKind)]
#[serde(rename_all = "snake_case")]
pub enum TrainerKindDoc {
    Builtin,
    External,
}

/// A running retrain job's progress.
#[derive(Serialize, ToSchema)]
#[schema(as = Progress)]
pub struct ProgressDoc {
    pub attempt: u32,
    /// `loading_data`, `training`, `evaluating` or `registering`.
    pub phase: String,
    pub epoch: Option<u32>,
    pub epochs: Option<u32>,
    /// Mean training loss after `epoch`.
    pub train_loss: Option<f64>,
    pub updated_at_ms: i64,
}

/// A version's holdout scores.
#[derive(Serialize, ToSchema)]
#[schema(as = Scored)]
pub struct ScoredDoc {
    pub version: u32,
    /// `{"task": "classification", "accuracy", "log_loss", "rows"}` or
    /// `{"task": "regression", "rmse", "r2", "rows"}`.
    #[schema(value_type = Object)]
    pub metrics: (),
}

/// The data a retrain job trained on.
#[derive(Serialize, ToSchema)]
#[schema(as = DatasetUsed)]
pub struct DatasetUsedDoc {
    /// `null` for inline rows.
    pub name: Option<String>,
    pub sha256: String,
    pub rows: u64,
    pub train_rows: u64,
    pub holdout_rows: u64,
}

/// A succeeded retrain job's result.
#[derive(Serialize, ToSchema)]
#[schema(as = RetrainResult)]
pub struct RetrainResultDoc {
    /// The version registered.
    pub version: u32,
    pub sha256: String,
    /// `promoted`, `kept_current` or `registered_only`.
    pub decision: String,
    /// The decision in words, with both scores.
    pub reason: String,
    pub promote: PromotePolicyDoc,
    pub candidate: ScoredDoc,
    /// The current version scored on the same rows; `null` when none or
    /// not comparable.
    pub baseline: Option<ScoredDoc>,
    pub current_version: Option<u32>,
    pub trainer: TrainerKindDoc,
    pub dataset: DatasetUsedDoc,
    #[schema(value_type = Object)]
    pub params: (),
    pub training_ms: f64,
    pub epochs: Option<u32>,
    pub final_train_loss: Option<f64>,
    /// Largest difference between ONNX Runtime and the built-in trainer.
    pub onnx_max_abs_diff: Option<f64>,
}

/// A succeeded job's result: predictions, a validated version, or a
/// retrain's outcome.
#[derive(Serialize, ToSchema)]
#[schema(as = AnyJobResult)]
#[serde(untagged)]
pub enum AnyJobResultDoc {
    Predict(JobResultDoc),
    Retrain(RetrainResultDoc),
    Validate(ValidateResultDoc),
}

/// A succeeded `validate` job's result (an upload found loadable).
#[derive(Serialize, ToSchema)]
#[schema(as = ValidateResult)]
pub struct ValidateResultDoc {
    pub model_version: u32,
    /// Always `ready`.
    pub status: String,
    pub sha256: String,
    pub inputs: Vec<TensorSpecDoc>,
    pub outputs: Vec<TensorSpecDoc>,
}

/// One model version in the registry.
#[derive(Serialize, ToSchema)]
#[schema(as = ModelVersion)]
pub struct VersionDoc {
    /// 1, 2, 3… per model.
    pub version: u32,
    /// SHA-256 of the ONNX bytes (hex).
    pub sha256: String,
    pub size: u64,
    pub created_at_ms: i64,
    /// `file`, `upload` or `retrain`.
    pub source: String,
    /// `validating`, `ready`, `invalid` or `quarantined` (a worker died
    /// loading it; never loaded or promoted again).
    pub status: String,
    /// Why validation failed, or why the version was quarantined.
    pub error: Option<String>,
    /// The stable code of `error`: `invalid_model`, `model_external_data`,
    /// `model_tensor_too_large`, `model_too_complex`,
    /// `model_validation_timeout`, `model_validation_memory`,
    /// `model_validation_crashed` or `model_load_crashed`.
    pub error_code: Option<String>,
    pub inputs: Vec<TensorSpecDoc>,
    pub outputs: Vec<TensorSpecDoc>,
    /// Training metrics of a retrained version.
    pub metrics: Option<JsonObject>,
    pub note: Option<String>,
    /// The job that validated or produced it.
    pub job_id: Option<uuid::Uuid>,
}

/// Free-form JSON object.
#[derive(Serialize, ToSchema)]
pub struct JsonObject {}

// --------------------------------------------------------- schema mirrors

/// A job's status.
#[derive(Serialize, ToSchema)]
#[schema(as = JobStatus)]
#[serde(rename_all = "snake_case")]
pub enum JobStatusDoc {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

/// What a job asks for.
#[derive(Serialize, ToSchema)]
#[schema(as = JobKind)]
#[serde(rename_all = "snake_case")]
pub enum JobKindDoc {
    Predict,
    Validate,
    Retrain,
}

/// Tensor element types, named as in the Open Inference Protocol.
#[derive(Serialize, ToSchema)]
#[schema(as = DataType)]
pub enum DataTypeDoc {
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "INT64")]
    Int64,
    #[serde(rename = "BOOL")]
    Bool,
}

/// `POST /v1/models/{model}/predict` body: exactly one of `features` (for a
/// model with a single 2-D FP32 input `[N, n]`: `n` numbers, one row) or
/// Open Inference Protocol `inputs`. Unknown fields are refused.
#[derive(Serialize, ToSchema)]
#[schema(as = PredictRequest)]
pub struct PredictRequestDoc {
    /// One row of the model's single FP32 input.
    pub features: Option<Vec<f32>>,
    /// Every input of the model, by name.
    pub inputs: Option<Vec<InputTensorDoc>>,
    /// Seconds from now (`> 0`, at most 604800) or an RFC 3339 timestamp at
    /// most 7 days ahead: a job not started by then fails with
    /// `deadline_exceeded` instead of running late.
    #[schema(value_type = Option<DeadlineDoc>)]
    pub deadline: Option<()>,
    /// Run on this registry version (see `GET /v1/models/{model}/versions`)
    /// instead of the current one; it must exist (404 `version_not_found`)
    /// and be `ready` (409 `version_not_ready`). The inputs are checked
    /// against that version's signature.
    pub model_version: Option<u32>,
    /// Accepted (KServe clients send it) and ignored.
    pub id: Option<String>,
    /// Accepted (KServe clients send it) and ignored.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<()>,
}

/// A deadline: seconds from now, or an RFC 3339 timestamp.
#[derive(Serialize, ToSchema)]
#[schema(as = Deadline)]
#[serde(untagged)]
pub enum DeadlineDoc {
    Seconds(f64),
    #[schema(format = DateTime)]
    At(String),
}

/// One Open Inference Protocol input tensor.
#[derive(Serialize, ToSchema)]
#[schema(as = InputTensor)]
pub struct InputTensorDoc {
    pub name: String,
    /// Row-major shape; the first dimension is the batch.
    pub shape: Vec<i64>,
    pub datatype: DataTypeDoc,
    /// The values, flat, in row-major order (numbers, or booleans for BOOL).
    #[schema(value_type = Vec<Value>)]
    pub data: Vec<()>,
    /// Accepted and ignored.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<()>,
}

/// One output tensor of a result (Open Inference Protocol form).
#[derive(Serialize, ToSchema)]
#[schema(as = OutputTensor)]
pub struct OutputTensorDoc {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: DataTypeDoc,
    /// The values, flat, in row-major order.
    #[schema(value_type = Vec<Value>)]
    pub data: Vec<()>,
}

/// A succeeded job's result.
#[derive(Serialize, ToSchema)]
#[schema(as = JobResult)]
pub struct JobResultDoc {
    pub outputs: Vec<OutputTensorDoc>,
    /// Present when the first output holds exactly one number.
    pub prediction: Option<f64>,
}

/// Why a job failed: a stable code and a sentence.
#[derive(Serialize, ToSchema)]
#[schema(as = JobError)]
pub struct JobErrorDoc {
    /// E.g. `invalid_input`, `inference_error`, `non_finite_output`,
    /// `deadline_exceeded`, `attempts_exhausted`.
    pub code: String,
    pub message: String,
}

/// A declared input or output of a model. `-1` is a dynamic dimension.
#[derive(Serialize, ToSchema)]
#[schema(as = TensorSpec)]
pub struct TensorSpecDoc {
    pub name: String,
    pub datatype: DataTypeDoc,
    pub shape: Vec<i64>,
}

/// A served model's signature, as a worker published it.
#[derive(Serialize, ToSchema)]
#[schema(as = Model)]
pub struct ModelDoc {
    pub name: String,
    /// The current registry version number, as text.
    pub version: String,
    pub inputs: Vec<TensorSpecDoc>,
    pub outputs: Vec<TensorSpecDoc>,
    /// When a worker last published it (Unix ms).
    pub updated_at_ms: i64,
    /// The registry's current version (the one `version` names).
    #[schema(required = true)]
    pub current_version: Option<u32>,
    /// Newest first, at most 10 (all: `GET /v1/models/{model}/versions`).
    pub versions: Vec<VersionDoc>,
}

/// `GET /healthz` body.
#[derive(Serialize, ToSchema)]
#[schema(as = Health)]
pub struct HealthDoc {
    /// Always `ok`.
    pub status: String,
}
