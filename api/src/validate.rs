//! The predict request body and its validation against a model's signature.
//!
//! Pure: no I/O, no clock. [`to_tensors`] turns a parsed [`PredictRequest`]
//! into the exact tensors a worker will feed to ONNX Runtime, or explains in
//! one sentence why it cannot; [`resolve_deadline`] turns the optional
//! `deadline` into an absolute time, given the current one.
//!
//! Tensor `data` is first captured as raw JSON text and only then parsed as a
//! vector of the datatype the *model* expects, so there is one typed parse and
//! no intermediate `serde_json::Value` tree.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::error::Category;
use serde_json::value::RawValue;
use shared::model::{ModelInfo, public_name};
use shared::tensor::{DataType, Tensor, TensorData, TensorSpec};

use utoipa::openapi::schema::{
    KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::error::ApiError;
use crate::schema::{Choice, exactly_one_of};
use crate::text::clip;

/// `POST /v1/models/{model}/predict` body: the `features` shorthand or Open
/// Inference Protocol `inputs`. KServe clients also send `id` and
/// `parameters`; they are accepted and ignored. Its schema is
/// [`PredictRequest::schema`]: these fields, and exactly one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PredictFields)]
pub(crate) struct PredictRequest {
    /// One row of the model's single FP32 input (a model with one 2-D FP32
    /// input `[N, n]`: `n` numbers).
    #[serde(default)]
    #[schema(min_items = 1)]
    pub features: Option<Vec<f32>>,
    /// Every input of the model, by name.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub inputs: Option<Vec<InputTensor>>,
    /// Latest time the job may start; see [`resolve_deadline`]. A job not
    /// started by then fails with `deadline_exceeded` instead of running
    /// late.
    #[serde(default)]
    pub deadline: Option<Deadline>,
    /// Run on this registry version (see `GET /v1/models/{model}/versions`)
    /// instead of the current one; it must exist (404 `version_not_found`)
    /// and be `ready` (409 `version_not_ready`). Read before decoding (see
    /// `routes::predict`), accepted here.
    #[serde(default, deserialize_with = "crate::whole::option")]
    #[schema(minimum = 1)]
    pub model_version: Option<u32>,
    /// An `http` or `https` URL to call, signed, when the job's events
    /// happen (see the README's webhooks); without it, the tenant's default
    /// webhook, if any. Internal addresses are refused (422
    /// `webhook_not_allowed`). Not for the items of a bulk submit, whose
    /// webhook is the request's.
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub webhook: Option<String>,
    /// Which events call the webhook: `start` (each attempt), `progress`
    /// (retrain epochs), `completed`; `[completed]` if left out.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub webhook_events_filter: Option<Vec<shared::queue::webhooks::Event>>,
    /// Accepted (KServe clients send it) and ignored.
    #[serde(default, rename = "id")]
    #[schema(value_type = Option<String>)]
    _id: Option<IgnoredString>,
    /// Accepted (KServe clients send it) and ignored.
    #[serde(default, rename = "parameters")]
    #[schema(value_type = Option<Object>)]
    _parameters: Option<IgnoredObject>,
}

/// The predict body's schema: [`PredictRequest`]'s fields
/// (`PredictFields`), plus exactly one of `features` and `inputs`.
pub(crate) struct PredictBody;

impl PartialSchema for PredictBody {
    fn schema() -> RefOr<Schema> {
        exactly_one_of(
            Ref::from_schema_name("PredictFields"),
            [
                Choice {
                    field: "features",
                    json_type: Type::Array,
                    title: "The features shorthand",
                },
                Choice {
                    field: "inputs",
                    json_type: Type::Array,
                    title: "Open Inference Protocol inputs",
                },
            ],
            "Exactly one of `features` or `inputs`; `null` is the same as leaving a field out. Unknown fields are refused.",
        )
    }
}

impl ToSchema for PredictBody {
    fn name() -> std::borrow::Cow<'static, str> {
        "PredictRequest".into()
    }

    fn schemas(out: &mut Vec<(String, RefOr<Schema>)>) {
        out.push(("PredictFields".into(), PredictRequest::schema()));
        <PredictRequest as ToSchema>::schemas(out);
    }
}

/// One Open Inference Protocol input tensor, `data` still unparsed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputTensor {
    pub name: String,
    /// Row-major shape; the first dimension is the batch.
    #[schema(inline, value_type = Vec<u32>)]
    #[serde(deserialize_with = "crate::whole::many")]
    pub shape: Vec<i64>,
    #[schema(value_type = DataType)]
    pub datatype: String,
    /// The values, flat, in row-major order (numbers, or booleans for BOOL).
    #[schema(value_type = Vec<Value>)]
    pub data: Box<RawValue>,
    /// Accepted and ignored.
    #[serde(default, rename = "parameters")]
    #[schema(value_type = Option<Object>)]
    _parameters: Option<IgnoredObject>,
}

/// The request's `deadline`, as sent: seconds from now, or an RFC 3339
/// timestamp.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Deadline {
    In(f64),
    At(String),
}

/// Seconds from now (more than 0, at most 604800) or an RFC 3339 timestamp
/// at most 7 days ahead.
impl PartialSchema for Deadline {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .exclusive_minimum(Some(0))
                    .maximum(Some(MAX_DEADLINE.as_secs()))
                    .description(Some("Seconds from now")),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                    .description(Some("An RFC 3339 timestamp")),
            )
            .description(Some(
                "Seconds from now (more than 0, at most 604800), or an RFC 3339 timestamp at most 7 days ahead",
            ))
            .into()
    }
}

impl ToSchema for Deadline {}

/// How far ahead a deadline may lie. Longer makes no sense for a queue
/// whose records expire after a day or so, and bounds the arithmetic.
pub(crate) const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

impl<'de> Deserialize<'de> for Deadline {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Deadline;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a deadline: a number of seconds from now or an RFC 3339 timestamp")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Deadline, E> {
                Ok(Deadline::In(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Deadline, E> {
                Ok(Deadline::In(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Deadline, E> {
                Ok(Deadline::In(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Deadline, E> {
                Ok(Deadline::At(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The deadline as Unix milliseconds: strictly after `now_ms` and at most
/// [`MAX_DEADLINE`] after it.
pub(crate) fn resolve_deadline(deadline: &Deadline, now_ms: i64) -> Result<i64, ApiError> {
    let max_ms = MAX_DEADLINE.as_millis() as i64;
    let max_secs = MAX_DEADLINE.as_secs();
    match deadline {
        Deadline::In(secs) => {
            // `!(a && b)` rather than `<= 0 || >`: also catches NaN.
            if !(*secs > 0.0 && *secs <= max_secs as f64) {
                return Err(invalid(format!(
                    "deadline must be more than 0 and at most {max_secs} seconds (7 days) \
                     from now, got {secs}"
                )));
            }
            // Rounded up, so the tiniest positive deadline is still in the future.
            Ok(now_ms + (secs * 1000.0).ceil() as i64)
        }
        Deadline::At(text) => {
            let at =
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| {
                    invalid(format!(
                        "deadline must be a number of seconds or an RFC 3339 timestamp \
                         (e.g. 2030-01-01T00:00:00Z): {e}"
                    ))
                })?;
            let ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
                .map_err(|_| invalid("deadline is out of range".to_owned()))?;
            if ms <= now_ms {
                return Err(invalid(format!("deadline {text} is not in the future")));
            }
            if ms - now_ms > max_ms {
                return Err(invalid(format!(
                    "deadline {text} is more than 7 days ahead"
                )));
            }
            Ok(ms)
        }
    }
}

/// Validates `req` against `model` and builds its input tensors, in the
/// order of the model's signature.
pub(crate) fn to_tensors(req: PredictRequest, model: &ModelInfo) -> Result<Vec<Tensor>, ApiError> {
    match (req.features, req.inputs) {
        (Some(features), None) => from_features(features, model).map(|t| vec![t]),
        (None, Some(inputs)) => from_inputs(inputs, model),
        (Some(_), Some(_)) => Err(invalid(
            "send either \"features\" or \"inputs\", not both".to_owned(),
        )),
        (None, None) => Err(invalid(
            "request needs \"features\" (one row) or \"inputs\" (named tensors)".to_owned(),
        )),
    }
}

fn from_features(features: Vec<f32>, model: &ModelInfo) -> Result<Tensor, ApiError> {
    let (Some(width), [spec]) = (model.features_width(), model.inputs.as_slice()) else {
        return Err(invalid(format!(
            "model {} does not take a single row of FP32 features; use \"inputs\"",
            public_name(&model.name)
        )));
    };
    if features.len() != width {
        return Err(invalid(format!(
            "model {} expects {width} features, got {}",
            public_name(&model.name),
            features.len()
        )));
    }
    let data = TensorData::Fp32(features);
    check_finite(&spec.name, &data)?;
    Ok(Tensor {
        name: spec.name.clone(),
        shape: vec![1, spec.shape[1]],
        data,
    })
}

fn from_inputs(inputs: Vec<InputTensor>, model: &ModelInfo) -> Result<Vec<Tensor>, ApiError> {
    // Models have a handful of inputs: linear scans beat hashing here.
    let mut slots: Vec<Option<Tensor>> = vec![None; model.inputs.len()];
    for input in inputs {
        let Some(idx) = model.inputs.iter().position(|s| s.name == input.name) else {
            return Err(invalid(format!(
                "model {} has no input {}",
                public_name(&model.name),
                clip(&input.name)
            )));
        };
        if slots[idx].is_some() {
            return Err(invalid(format!(
                "input {} is given more than once",
                input.name
            )));
        }
        slots[idx] = Some(to_tensor(input, &model.inputs[idx])?);
    }
    let missing: Vec<&str> = model
        .inputs
        .iter()
        .zip(&slots)
        .filter(|(_, slot)| slot.is_none())
        .map(|(spec, _)| spec.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!("missing input {}", missing.join(", "))));
    }
    Ok(slots.into_iter().flatten().collect())
}

fn to_tensor(input: InputTensor, spec: &TensorSpec) -> Result<Tensor, ApiError> {
    let name = &input.name;
    if DataType::parse(&input.datatype) != Some(spec.datatype) {
        return Err(invalid(format!(
            "input {name} expects {}, got {}",
            spec.datatype, input.datatype
        )));
    }
    if !spec.accepts_shape(&input.shape) {
        return Err(invalid(format!(
            "input {name} has shape {:?}, expected {}",
            input.shape,
            spec.shape_text()
        )));
    }
    let Some(expected) = Tensor::shape_elements(&input.shape) else {
        return Err(invalid(format!(
            "input {name} has a shape too large to hold"
        )));
    };
    let data = parse_data(spec.datatype, input.data.get()).map_err(|e| match e.classify() {
        Category::Data => invalid(format!(
            "input {name} data must be a flat array of {} values: {}",
            spec.datatype,
            crate::json_error::describe(&e)
        )),
        _ => crate::json_error::json_error(&e),
    })?;
    if data.len() != expected {
        return Err(invalid(format!(
            "input {name} has {} elements, shape {:?} needs {expected}",
            data.len(),
            input.shape
        )));
    }
    check_finite(name, &data)?;
    Ok(Tensor {
        name: input.name,
        shape: input.shape,
        data,
    })
}

fn parse_data(datatype: DataType, raw: &str) -> Result<TensorData, serde_json::Error> {
    Ok(match datatype {
        DataType::Fp32 => TensorData::Fp32(serde_json::from_str(raw)?),
        DataType::Fp64 => TensorData::Fp64(serde_json::from_str(raw)?),
        DataType::Int32 => TensorData::Int32(serde_json::from_str(raw)?),
        DataType::Int64 => TensorData::Int64(serde_json::from_str(raw)?),
        DataType::Bool => TensorData::Bool(serde_json::from_str(raw)?),
    })
}

/// JSON has no NaN or infinity, but a finite JSON number can overflow FP32
/// (e.g. `1e39`); such a value would poison the model's output silently.
fn check_finite(name: &str, data: &TensorData) -> Result<(), ApiError> {
    match data.first_non_finite() {
        None => Ok(()),
        Some(i) => Err(ApiError::NonFiniteInput(format!(
            "input {name} element {i} is not a finite {} value",
            data.datatype()
        ))),
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::InvalidInput(message)
}

/// A JSON string whose content is irrelevant (KServe's request `id`).
#[derive(Debug)]
struct IgnoredString;

impl<'de> Deserialize<'de> for IgnoredString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IgnoredString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<IgnoredString, E> {
                Ok(IgnoredString)
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON object whose content is irrelevant (KServe's `parameters`),
/// skipped without building it.
#[derive(Debug, Clone)]
struct IgnoredObject;

impl<'de> Deserialize<'de> for IgnoredObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IgnoredObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IgnoredObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(IgnoredObject)
            }
        }
        d.deserialize_map(V)
    }
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

    fn model(name: &str, inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            version: "0123456789abcdef".into(),
            inputs,
            outputs,
            updated_at_ms: 0,
        }
    }

    fn mlp128() -> ModelInfo {
        model(
            "mlp128",
            vec![spec("features", DataType::Fp32, &[-1, 128])],
            vec![spec("prediction", DataType::Fp32, &[-1, 1])],
        )
    }

    fn two_input() -> ModelInfo {
        model(
            "two_input",
            vec![
                spec("x", DataType::Fp32, &[-1, 4]),
                spec("k", DataType::Int64, &[-1, 1]),
            ],
            vec![spec("y", DataType::Fp32, &[-1, 1])],
        )
    }

    fn run(body: &str, m: &ModelInfo) -> Result<Vec<Tensor>, ApiError> {
        let req: PredictRequest = crate::extract::parse(body.as_bytes())?;
        to_tensors(req, m)
    }

    /// Asserts the error's code and that its message contains every `needle`.
    fn fails(body: &str, m: &ModelInfo, code: &str, needles: &[&str]) {
        match run(body, m) {
            Ok(t) => panic!("expected {code}, got tensors {t:?}"),
            Err(e) => {
                assert_eq!(e.code().as_str(), code, "{e}");
                let msg = e.to_string();
                for n in needles {
                    assert!(msg.contains(n), "{msg:?} should mention {n:?}");
                }
            }
        }
    }

    fn features(n: usize, v: &str) -> String {
        format!(r#"{{"features":[{}]}}"#, vec![v; n].join(","))
    }

    fn two(x: &str, k: &str) -> String {
        format!(
            r#"{{"inputs":[{{"name":"x","shape":[1,4],"datatype":"FP32","data":{x}}},
                          {{"name":"k","shape":[1,1],"datatype":"INT64","data":{k}}}]}}"#
        )
    }

    #[test]
    fn features_become_one_row_of_the_single_input() {
        let t = run(&features(128, "0.5"), &mlp128()).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "features");
        assert_eq!(t[0].shape, vec![1, 128]);
        assert_eq!(t[0].data, TensorData::Fp32(vec![0.5; 128]));
    }

    #[test]
    fn features_count_must_match_the_width() {
        fails(
            &features(127, "1"),
            &mlp128(),
            "invalid_input",
            &["128", "127"],
        );
        fails(
            &features(0, "1"),
            &mlp128(),
            "invalid_input",
            &["128", "got 0"],
        );
    }

    #[test]
    fn features_need_a_single_fp32_matrix_input() {
        fails(
            &features(4, "1"),
            &two_input(),
            "invalid_input",
            &["\"inputs\""],
        );
    }

    #[test]
    fn features_must_be_numbers() {
        fails(r#"{"features":[1,"a"]}"#, &mlp128(), "invalid_input", &[]);
        fails(r#"{"features":[1,null]}"#, &mlp128(), "invalid_input", &[]);
    }

    #[test]
    fn features_overflowing_fp32_are_non_finite() {
        let mut body = features(127, "1");
        body.insert_str(body.len() - 2, ",1e39");
        fails(&body, &mlp128(), "non_finite_input", &["features", "127"]);
    }

    #[test]
    fn numbers_beyond_f64_are_malformed_json() {
        let mut body = features(127, "1");
        body.insert_str(body.len() - 2, ",1e400");
        fails(&body, &mlp128(), "malformed_json", &[]);
        fails(
            &two("[1,2,3,1e400]", "[1]"),
            &two_input(),
            "malformed_json",
            &[],
        );
    }

    #[test]
    fn exactly_one_of_features_and_inputs() {
        fails("{}", &mlp128(), "invalid_input", &["features", "inputs"]);
        fails(
            r#"{"features":[1],"inputs":[]}"#,
            &mlp128(),
            "invalid_input",
            &["not both"],
        );
    }

    #[test]
    fn kserve_id_and_parameters_are_accepted_other_fields_are_not() {
        let body = r#"{"id":"r1","parameters":{"a":[1,{"b":2}]},"inputs":[
            {"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4],"parameters":{}},
            {"name":"k","shape":[1,1],"datatype":"INT64","data":[7]}]}"#;
        assert_eq!(run(body, &two_input()).unwrap().len(), 2);
        fails(
            r#"{"features":[1],"outputs":[]}"#,
            &mlp128(),
            "invalid_input",
            &["outputs"],
        );
        fails(
            r#"{"id":5,"features":[1]}"#,
            &mlp128(),
            "invalid_input",
            &[],
        );
        fails(
            r#"{"parameters":[],"features":[1]}"#,
            &mlp128(),
            "invalid_input",
            &[],
        );
        fails(
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"extra":1}]}"#,
            &two_input(),
            "invalid_input",
            &["extra"],
        );
    }

    #[test]
    fn deadlines_in_seconds_or_rfc3339_within_seven_days() {
        let now = 1_800_000_000_000; // 2027-01-15T08:00:00Z
        let req: PredictRequest =
            crate::extract::parse(br#"{"features":[1],"deadline":1.5}"#).unwrap();
        assert_eq!(req.deadline, Some(Deadline::In(1.5)));
        assert_eq!(
            resolve_deadline(&Deadline::In(1.5), now).unwrap(),
            now + 1500
        );
        assert_eq!(resolve_deadline(&Deadline::In(1e-9), now).unwrap(), now + 1);
        assert_eq!(
            resolve_deadline(&Deadline::In(604_800.0), now).unwrap(),
            now + 604_800_000
        );
        let at = Deadline::At("2027-01-15T08:00:30.250Z".into());
        assert_eq!(resolve_deadline(&at, now).unwrap(), now + 30_250);
        let offset = Deadline::At("2027-01-15T09:00:30+01:00".into());
        assert_eq!(resolve_deadline(&offset, now).unwrap(), now + 30_000);

        let bad = [
            Deadline::In(0.0),
            Deadline::In(-0.0),
            Deadline::In(-1.0),
            Deadline::In(604_800.001),
            Deadline::In(9e18),
            Deadline::In(f64::NAN),
            Deadline::At("tomorrow".into()),
            Deadline::At("2027-01-15T08:00:00Z".into()),
            Deadline::At("2027-01-15T07:00:00Z".into()),
            Deadline::At("2027-01-22T08:00:00.001Z".into()),
            Deadline::At("".into()),
        ];
        for d in bad {
            let e = resolve_deadline(&d, now).unwrap_err();
            assert_eq!(e.code().as_str(), "invalid_input", "{d:?}");
            assert!(e.to_string().contains("deadline"), "{e}");
        }
        for body in [
            &br#"{"features":[1],"deadline":true}"#[..],
            br#"{"features":[1],"deadline":[1]}"#,
            br#"{"features":[1],"deadline":{}}"#,
        ] {
            let e = crate::extract::parse::<PredictRequest>(body).unwrap_err();
            assert_eq!(e.code().as_str(), "invalid_input");
        }
        let req: PredictRequest =
            crate::extract::parse(br#"{"features":[1],"deadline":null}"#).unwrap();
        assert_eq!(req.deadline, None);
    }

    #[test]
    fn inputs_become_typed_tensors_in_signature_order() {
        let body = r#"{"inputs":[
            {"name":"k","shape":[2,1],"datatype":"INT64","data":[-9007199254740993, 3]},
            {"name":"x","shape":[2,4],"datatype":"FP32","data":[1,2,3,4,0.1,-6,7,8]}]}"#;
        let t = run(body, &two_input()).unwrap();
        assert_eq!(t[0].name, "x");
        assert_eq!(t[0].shape, vec![2, 4]);
        assert_eq!(
            t[0].data,
            TensorData::Fp32(vec![1., 2., 3., 4., 0.1, -6., 7., 8.])
        );
        assert_eq!(t[1].name, "k");
        assert_eq!(t[1].data, TensorData::Int64(vec![-9007199254740993, 3]));
    }

    #[test]
    fn every_datatype_parses() {
        let m = model(
            "all",
            vec![
                spec("a", DataType::Fp64, &[2]),
                spec("b", DataType::Int32, &[2]),
                spec("c", DataType::Bool, &[2]),
            ],
            vec![],
        );
        let body = r#"{"inputs":[
            {"name":"a","shape":[2],"datatype":"FP64","data":[1e300,2]},
            {"name":"b","shape":[2],"datatype":"INT32","data":[-2147483648,2147483647]},
            {"name":"c","shape":[2],"datatype":"BOOL","data":[true,false]}]}"#;
        let t = run(body, &m).unwrap();
        assert_eq!(t[0].data, TensorData::Fp64(vec![1e300, 2.0]));
        assert_eq!(t[1].data, TensorData::Int32(vec![i32::MIN, i32::MAX]));
        assert_eq!(t[2].data, TensorData::Bool(vec![true, false]));
        let bad_bool = body.replace("[true,false]", "[1,0]");
        fails(&bad_bool, &m, "invalid_input", &["input c", "BOOL"]);
    }

    #[test]
    fn missing_inputs_are_named() {
        let body = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        fails(body, &two_input(), "invalid_input", &["missing input k"]);
        fails(r#"{"inputs":[]}"#, &two_input(), "invalid_input", &["x, k"]);
    }

    #[test]
    fn unknown_and_duplicate_inputs_are_rejected() {
        let body = r#"{"inputs":[{"name":"z","shape":[1],"datatype":"FP32","data":[1]}]}"#;
        fails(body, &two_input(), "invalid_input", &["no input z"]);
        let dup = r#"{"inputs":[
            {"name":"k","shape":[1,1],"datatype":"INT64","data":[1]},
            {"name":"k","shape":[1,1],"datatype":"INT64","data":[1]}]}"#;
        fails(dup, &two_input(), "invalid_input", &["k", "more than once"]);
    }

    #[test]
    fn datatype_must_equal_the_spec() {
        let body = two("[1,2,3,4]", "[1]").replace("\"FP32\"", "\"INT64\"");
        fails(
            &body,
            &two_input(),
            "invalid_input",
            &["input x expects FP32, got INT64"],
        );
        let lower = two("[1,2,3,4]", "[1]").replace("\"FP32\"", "\"fp32\"");
        fails(&lower, &two_input(), "invalid_input", &["got fp32"]);
    }

    #[test]
    fn shape_must_fit_the_spec() {
        let body = two("[1,2,3]", "[1]").replace("[1,4]", "[1,3]");
        fails(&body, &two_input(), "invalid_input", &["input x", "[N, 4]"]);
        let rank = two("[1,2,3,4]", "[1]").replace("[1,4]", "[4]");
        fails(&rank, &two_input(), "invalid_input", &["[N, 4]"]);
        let negative = two("[1,2,3,4]", "[1]").replace("[1,4]", "[-1,4]");
        fails(&negative, &two_input(), "invalid_input", &["[N, 4]"]);
    }

    #[test]
    fn data_length_must_equal_the_shape_product() {
        fails(
            &two("[1,2,3]", "[1]"),
            &two_input(),
            "invalid_input",
            &["input x", "3 elements", "needs 4"],
        );
        let body = two("[1,2,3,4]", "[1,2]");
        fails(
            &body,
            &two_input(),
            "invalid_input",
            &["input k", "needs 1"],
        );
    }

    #[test]
    fn elements_must_parse_as_the_datatype() {
        fails(
            &two("[1,2,3,4]", "[1.5]"),
            &two_input(),
            "invalid_input",
            &["input k", "INT64"],
        );
        fails(
            &two("[1,2,\"a\",4]", "[1]"),
            &two_input(),
            "invalid_input",
            &["input x", "FP32"],
        );
        fails(
            &two("[[1,2,3,4]]", "[1]"),
            &two_input(),
            "invalid_input",
            &["flat array"],
        );
        fails(
            &two("{}", "[1]"),
            &two_input(),
            "invalid_input",
            &["input x"],
        );
        let m = model("i32", vec![spec("n", DataType::Int32, &[1])], vec![]);
        let i32_body = |v: &str| {
            format!(r#"{{"inputs":[{{"name":"n","shape":[1],"datatype":"INT32","data":[{v}]}}]}}"#)
        };
        fails(&i32_body("3e9"), &m, "invalid_input", &["INT32"]);
        fails(&i32_body("3000000000"), &m, "invalid_input", &["INT32"]);
        assert!(run(&i32_body("-7"), &m).is_ok());
    }

    #[test]
    fn fp32_overflow_in_inputs_is_non_finite() {
        fails(
            &two("[1,2,1e39,4]", "[1]"),
            &two_input(),
            "non_finite_input",
            &["input x", "element 2"],
        );
        fails(
            &two("[1,2,-1e39,4]", "[1]"),
            &two_input(),
            "non_finite_input",
            &[],
        );
    }
}
