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

use serde::Serialize;
use shared::tensor::{DataType, TensorSpec};
use utoipa::ToSchema;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};

/// One of the two fields of [`exactly_one_of`]: its name, its JSON type and
/// a title for the branch that gives it.
pub(crate) struct Choice<'a> {
    pub field: &'a str,
    pub json_type: Type,
    pub title: &'a str,
}

/// `fields` (an object schema listing both), plus: exactly one of the two
/// choices is present and not `null`.
pub(crate) fn exactly_one_of(
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
pub(crate) fn nullable_ref(name: &str, description: &str) -> OneOfBuilder {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(Ref::from_schema_name(name))
        .description(Some(description))
}

/// A succeeded job's result: predictions, a validated version, or a
/// retrain's outcome.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[expect(
    dead_code,
    reason = "a schema only: the worker writes these results, the API splices them in unread"
)]
pub(crate) enum AnyJobResult {
    Predict(JobResult),
    Retrain(shared::retrain::RetrainResult),
    Validate(ValidateResult),
}

/// A succeeded predict job's result.
#[derive(Serialize, ToSchema)]
pub(crate) struct JobResult {
    pub outputs: Vec<OutputTensor>,
    /// Present when the first output holds exactly one number.
    pub prediction: Option<f64>,
}

/// One output tensor of a result (Open Inference Protocol form).
#[derive(Serialize, ToSchema)]
pub(crate) struct OutputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: DataType,
    /// The values, flat, in row-major order.
    #[schema(value_type = Vec<Value>)]
    pub data: Vec<()>,
}

/// A succeeded `validate` job's result (an upload found loadable).
#[derive(Serialize, ToSchema)]
pub(crate) struct ValidateResult {
    pub model_version: u32,
    /// Always `ready`.
    pub status: String,
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}
