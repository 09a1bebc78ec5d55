//! Static checks of ONNX bytes before ONNX Runtime sees them: what this
//! module owns is the rule set that makes a model "self-contained and
//! bounded", decided on the protobuf alone (decoded with `onnx-protobuf`,
//! never by hand).
//!
//! * **No external data.** ONNX Runtime resolves an external tensor's
//!   `location` against the model's directory, which for a model loaded
//!   from memory is the worker's working directory: an upload could read
//!   any relative file. Every tensor is looked at wherever a tensor can
//!   live: graph initializers, sparse initializers, node attributes (`t`,
//!   `tensors`, `sparse_tensor(s)`), subgraphs (`g`, `graphs`, so If, Loop
//!   and Scan bodies), model-local functions and training-info graphs.
//! * **Bounded declared sizes.** The product of a tensor's dims times its
//!   element size (overflow-checked) must stay under the limit, one tensor
//!   and all of them together (sparse tensors count at their dense size,
//!   which is what ONNX Runtime allocates), and a dense tensor must hold
//!   exactly the elements it declares.
//! * **Bounded structure.** Subgraph nesting and the number of nodes are
//!   capped, so this walk, and ONNX Runtime's, are bounded too.
//! * **No unknown fields** in any message walked: ONNX Runtime's schema may
//!   be newer than ours, and a field we cannot see could carry a tensor.
//!
//! The error messages never echo an external `location` (a path), only
//! what kind of problem was found and the (clipped) tensor name.

use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::{
    AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, SparseTensorProto,
    TensorProto, TrainingInfoProto,
};
use protobuf::{Enum, Message};

use crate::error::JobFailure;

/// Deepest nesting of subgraphs (a Loop body inside an If branch is 2).
pub const MAX_GRAPH_DEPTH: usize = 16;

/// How far the checks go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest declared size of one tensor, and of all tensors together.
    pub max_tensor_bytes: u64,
    /// Most nodes in the model, subgraphs and functions included.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_tensor_bytes: 256 << 20,
            max_nodes: 100_000,
        }
    }
}

/// Decodes `bytes` as an ONNX model and applies every check of the module.
pub fn check(bytes: &[u8], limits: &Limits) -> Result<(), JobFailure> {
    // rust-protobuf caps message nesting at 100 while decoding, so a
    // hostile nesting cannot exhaust the stack here.
    let model = ModelProto::parse_from_bytes(bytes).map_err(|_| {
        JobFailure::InvalidModel("the bytes are not a valid ONNX model (protobuf)".to_owned())
    })?;
    let mut walk = Walk {
        limits: *limits,
        nodes: 0,
        tensor_bytes: 0,
    };
    walk.model(&model)
}

struct Walk {
    limits: Limits,
    nodes: usize,
    tensor_bytes: u64,
}

/// Tensor names are the uploader's text: clipped before they are shown.
fn clip(name: &str) -> String {
    const MAX: usize = 64;
    match name.char_indices().nth(MAX) {
        Some((i, _)) => format!("{:?}…", &name[..i]),
        None => format!("{name:?}"),
    }
}

fn has_unknown(fields: &protobuf::SpecialFields) -> bool {
    fields.unknown_fields().iter().next().is_some()
}

fn unknown_fields(what: &str) -> JobFailure {
    JobFailure::InvalidModel(format!(
        "the model has fields this worker does not know in a {what}"
    ))
}

fn too_complex(what: String) -> JobFailure {
    JobFailure::ModelTooComplex(what)
}

/// Bits per element of an ONNX element type; `None` for types this
/// checker does not know (refused: their size cannot be bounded).
fn element_bits(data_type: i32) -> Option<u64> {
    use DataType as T;
    Some(match T::from_i32(data_type)? {
        T::UINT8 | T::INT8 | T::BOOL => 8,
        T::FLOAT8E4M3FN | T::FLOAT8E4M3FNUZ | T::FLOAT8E5M2 | T::FLOAT8E5M2FNUZ => 8,
        T::UINT4 | T::INT4 => 4,
        T::UINT16 | T::INT16 | T::FLOAT16 | T::BFLOAT16 => 16,
        T::FLOAT | T::INT32 | T::UINT32 => 32,
        T::INT64 | T::UINT64 | T::DOUBLE | T::COMPLEX64 => 64,
        T::COMPLEX128 => 128,
        // Strings are sized by their bytes, below.
        T::STRING => 0,
        T::UNDEFINED => return None,
    })
}

impl Walk {
    fn model(&mut self, m: &ModelProto) -> Result<(), JobFailure> {
        if has_unknown(&m.special_fields) {
            return Err(unknown_fields("model"));
        }
        if let Some(g) = m.graph.as_ref() {
            self.graph(g, 0)?;
        }
        for f in &m.functions {
            self.function(f)?;
        }
        for t in &m.training_info {
            self.training_info(t)?;
        }
        Ok(())
    }

    fn training_info(&mut self, t: &TrainingInfoProto) -> Result<(), JobFailure> {
        if has_unknown(&t.special_fields) {
            return Err(unknown_fields("training info"));
        }
        for g in [t.initialization.as_ref(), t.algorithm.as_ref()]
            .into_iter()
            .flatten()
        {
            self.graph(g, 0)?;
        }
        Ok(())
    }

    fn function(&mut self, f: &FunctionProto) -> Result<(), JobFailure> {
        if has_unknown(&f.special_fields) {
            return Err(unknown_fields("function"));
        }
        for a in &f.attribute_proto {
            self.attribute(a, 0)?;
        }
        for n in &f.node {
            self.node(n, 0)?;
        }
        Ok(())
    }

    fn graph(&mut self, g: &GraphProto, depth: usize) -> Result<(), JobFailure> {
        if depth > MAX_GRAPH_DEPTH {
            return Err(too_complex(format!(
                "subgraphs are nested more than {MAX_GRAPH_DEPTH} deep"
            )));
        }
        if has_unknown(&g.special_fields) {
            return Err(unknown_fields("graph"));
        }
        for t in &g.initializer {
            self.tensor(t)?;
        }
        for s in &g.sparse_initializer {
            self.sparse(s)?;
        }
        for n in &g.node {
            self.node(n, depth)?;
        }
        Ok(())
    }

    fn node(&mut self, n: &NodeProto, depth: usize) -> Result<(), JobFailure> {
        self.nodes += 1;
        if self.nodes > self.limits.max_nodes {
            return Err(too_complex(format!(
                "the model has more than {} nodes",
                self.limits.max_nodes
            )));
        }
        if has_unknown(&n.special_fields) {
            return Err(unknown_fields("node"));
        }
        for a in &n.attribute {
            self.attribute(a, depth)?;
        }
        Ok(())
    }

    fn attribute(&mut self, a: &AttributeProto, depth: usize) -> Result<(), JobFailure> {
        if has_unknown(&a.special_fields) {
            return Err(unknown_fields("node attribute"));
        }
        // Every field is looked at, whatever `type` claims: ONNX Runtime
        // reads by type, but a checker that trusted the type could be told
        // to look away.
        if let Some(t) = a.t.as_ref() {
            self.tensor(t)?;
        }
        for t in &a.tensors {
            self.tensor(t)?;
        }
        if let Some(s) = a.sparse_tensor.as_ref() {
            self.sparse(s)?;
        }
        for s in &a.sparse_tensors {
            self.sparse(s)?;
        }
        if let Some(g) = a.g.as_ref() {
            self.graph(g, depth + 1)?;
        }
        for g in &a.graphs {
            self.graph(g, depth + 1)?;
        }
        Ok(())
    }

    /// Adds `bytes` to the model's total, refusing past the limit.
    fn account(&mut self, name: &str, bytes: u64) -> Result<(), JobFailure> {
        let limit = self.limits.max_tensor_bytes;
        if bytes > limit {
            return Err(JobFailure::ModelTensorTooLarge(format!(
                "tensor {} declares {bytes} bytes; the limit is {limit}",
                clip(name)
            )));
        }
        self.tensor_bytes = self.tensor_bytes.saturating_add(bytes);
        if self.tensor_bytes > limit {
            return Err(JobFailure::ModelTensorTooLarge(format!(
                "the model's tensors declare more than {limit} bytes together"
            )));
        }
        Ok(())
    }

    /// The element count of `dims`, or why it cannot be allowed.
    fn elements(&self, name: &str, dims: &[i64]) -> Result<u64, JobFailure> {
        dims.iter().try_fold(1u64, |n, &d| {
            let d = u64::try_from(d).map_err(|_| {
                JobFailure::InvalidModel(format!("tensor {} has a negative dimension", clip(name)))
            })?;
            n.checked_mul(d).ok_or_else(|| {
                JobFailure::ModelTensorTooLarge(format!(
                    "tensor {} declares more elements than can be counted",
                    clip(name)
                ))
            })
        })
    }

    fn tensor(&mut self, t: &TensorProto) -> Result<(), JobFailure> {
        if has_unknown(&t.special_fields) {
            return Err(unknown_fields("tensor"));
        }
        let external = t.data_location.value() == DataLocation::EXTERNAL.value();
        if external || !t.external_data.is_empty() {
            return Err(JobFailure::ModelExternalData(format!(
                "tensor {} refers to data outside the model file; a model must be self-contained",
                clip(&t.name)
            )));
        }
        if t.data_location.value() != DataLocation::DEFAULT.value() {
            return Err(JobFailure::InvalidModel(format!(
                "tensor {} has an unknown data location",
                clip(&t.name)
            )));
        }
        if t.segment.is_some() {
            return Err(JobFailure::InvalidModel(format!(
                "tensor {} is segmented, which is not supported",
                clip(&t.name)
            )));
        }
        let bits = element_bits(t.data_type).ok_or_else(|| {
            JobFailure::InvalidModel(format!(
                "tensor {} has an unknown element type {}",
                clip(&t.name),
                t.data_type
            ))
        })?;
        let count = self.elements(&t.name, &t.dims)?;
        if t.data_type == DataType::STRING.value() {
            let bytes: u64 = t.string_data.iter().map(|s| s.len() as u64).sum();
            self.account(&t.name, bytes)?;
            return matches(
                &t.name,
                count,
                t.string_data.len() as u64,
                t.raw_data.is_empty(),
            );
        }
        let declared = count
            .checked_mul(bits)
            .map(|b| b.div_ceil(8))
            .ok_or_else(|| {
                JobFailure::ModelTensorTooLarge(format!(
                    "tensor {} declares more bytes than can be counted",
                    clip(&t.name)
                ))
            })?;
        self.account(&t.name, declared)?;
        if !t.raw_data.is_empty() {
            return matches_bytes(&t.name, declared, t.raw_data.len() as u64);
        }
        use DataType as T;
        let dt = T::from_i32(t.data_type).unwrap_or(T::UNDEFINED);
        let held = match dt {
            T::FLOAT => t.float_data.len() as u64,
            T::COMPLEX64 => t.float_data.len() as u64 / 2,
            T::DOUBLE => t.double_data.len() as u64,
            T::COMPLEX128 => t.double_data.len() as u64 / 2,
            T::INT64 => t.int64_data.len() as u64,
            T::UINT32 | T::UINT64 => t.uint64_data.len() as u64,
            // Two 4-bit values per int32.
            T::UINT4 | T::INT4 => {
                let n = t.int32_data.len() as u64;
                if n == count.div_ceil(2) { count } else { n }
            }
            _ => t.int32_data.len() as u64,
        };
        matches(&t.name, count, held, true)
    }

    fn sparse(&mut self, s: &SparseTensorProto) -> Result<(), JobFailure> {
        if has_unknown(&s.special_fields) {
            return Err(unknown_fields("sparse tensor"));
        }
        let values = s.values.as_ref();
        let name = values.map(|v| v.name.as_str()).unwrap_or_default();
        if let Some(v) = values {
            self.tensor(v)?;
        }
        if let Some(i) = s.indices.as_ref() {
            self.tensor(i)?;
        }
        // ONNX Runtime makes sparse initializers dense: their dense size
        // is what must be bounded.
        let bits = values
            .and_then(|v| element_bits(v.data_type))
            .unwrap_or(8)
            .max(8);
        let dense = self
            .elements(name, &s.dims)?
            .checked_mul(bits / 8)
            .ok_or_else(|| {
                JobFailure::ModelTensorTooLarge(format!(
                    "sparse tensor {} declares more bytes than can be counted",
                    clip(name)
                ))
            })?;
        self.account(name, dense)
    }
}

fn matches(name: &str, declared: u64, held: u64, typed: bool) -> Result<(), JobFailure> {
    if !typed {
        return Err(JobFailure::InvalidModel(format!(
            "string tensor {} carries raw data",
            clip(name)
        )));
    }
    if declared != held {
        return Err(JobFailure::InvalidModel(format!(
            "tensor {} declares {declared} elements but holds {held}",
            clip(name)
        )));
    }
    Ok(())
}

fn matches_bytes(name: &str, declared: u64, held: u64) -> Result<(), JobFailure> {
    if declared != held {
        return Err(JobFailure::InvalidModel(format!(
            "tensor {} declares {declared} bytes but holds {held}",
            clip(name)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::attribute_proto::AttributeType;
    use onnx_protobuf::{StringStringEntryProto, TrainingInfoProto};
    use protobuf::{EnumOrUnknown, MessageField};

    fn limits() -> Limits {
        Limits {
            max_tensor_bytes: 1 << 20,
            max_nodes: 50,
        }
    }

    fn code_of(m: &ModelProto) -> &'static str {
        let bytes = m.write_to_bytes().unwrap();
        match check(&bytes, &limits()) {
            Ok(()) => "ok",
            Err(f) => f.code(),
        }
    }

    fn floats(name: &str, n: usize) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = DataType::FLOAT.value();
        t.dims = vec![n as i64];
        t.float_data = vec![0.5; n];
        t
    }

    fn external(name: &str) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = DataType::FLOAT.value();
        t.dims = vec![4];
        t.data_location = EnumOrUnknown::new(DataLocation::EXTERNAL);
        let mut e = StringStringEntryProto::new();
        e.key = "location".into();
        e.value = "etc/passwd".into();
        t.external_data.push(e);
        t
    }

    fn node(op: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.attribute = attrs;
        n
    }

    fn attr(name: &str, ty: AttributeType) -> AttributeProto {
        let mut a = AttributeProto::new();
        a.name = name.into();
        a.type_ = EnumOrUnknown::new(ty);
        a
    }

    fn tensor_attr(t: TensorProto) -> AttributeProto {
        let mut a = attr("value", AttributeType::TENSOR);
        a.t = MessageField::some(t);
        a
    }

    fn graph_attr(name: &str, g: GraphProto) -> AttributeProto {
        let mut a = attr(name, AttributeType::GRAPH);
        a.g = MessageField::some(g);
        a
    }

    fn sparse(values: TensorProto, dims: Vec<i64>) -> SparseTensorProto {
        let mut s = SparseTensorProto::new();
        let mut idx = TensorProto::new();
        idx.name = "idx".into();
        idx.data_type = DataType::INT64.value();
        idx.dims = vec![values.dims[0]];
        idx.int64_data = vec![0; values.dims[0] as usize];
        s.values = MessageField::some(values);
        s.indices = MessageField::some(idx);
        s.dims = dims;
        s
    }

    fn model(g: GraphProto) -> ModelProto {
        let mut m = ModelProto::new();
        m.ir_version = 8;
        m.graph = MessageField::some(g);
        m
    }

    fn with_init(t: TensorProto) -> ModelProto {
        let mut g = GraphProto::new();
        g.initializer.push(t);
        model(g)
    }

    fn with_node(n: NodeProto) -> ModelProto {
        let mut g = GraphProto::new();
        g.node.push(n);
        model(g)
    }

    #[test]
    fn the_demo_models_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        for f in [
            "mlp128.onnx",
            "breast_cancer.onnx",
            "two_input.onnx",
            "testdata/scale3.onnx",
            "testdata/flaky_fixed.onnx",
        ] {
            let bytes = std::fs::read(root.join(f)).unwrap();
            assert_eq!(check(&bytes, &Limits::default()), Ok(()), "{f}");
        }
    }

    #[test]
    fn external_data_is_refused_wherever_a_tensor_can_be() {
        let ext = || external("w");
        let mut cases: Vec<(&str, ModelProto)> = vec![("initializer", with_init(ext()))];

        let mut g = GraphProto::new();
        g.sparse_initializer.push(sparse(ext(), vec![16]));
        cases.push(("sparse initializer", model(g)));

        cases.push((
            "Constant value",
            with_node(node("Constant", vec![tensor_attr(ext())])),
        ));

        let mut a = attr("tensors", AttributeType::TENSORS);
        a.tensors = vec![floats("ok", 1), ext()];
        cases.push(("tensors attribute", with_node(node("X", vec![a]))));

        let mut a = attr("sparse_value", AttributeType::SPARSE_TENSOR);
        a.sparse_tensor = MessageField::some(sparse(ext(), vec![8]));
        cases.push((
            "sparse_tensor attribute",
            with_node(node("Constant", vec![a])),
        ));

        let mut a = attr("sparse_tensors", AttributeType::SPARSE_TENSORS);
        a.sparse_tensors = vec![sparse(ext(), vec![8])];
        cases.push(("sparse_tensors attribute", with_node(node("X", vec![a]))));

        // A Constant inside an If branch inside a Loop body.
        let mut inner = GraphProto::new();
        inner.node.push(node("Constant", vec![tensor_attr(ext())]));
        let mut body = GraphProto::new();
        body.node
            .push(node("If", vec![graph_attr("then_branch", inner)]));
        cases.push((
            "nested subgraph",
            with_node(node("Loop", vec![graph_attr("body", body)])),
        ));

        let mut branch = GraphProto::new();
        branch.initializer.push(ext());
        let mut a = attr("graphs", AttributeType::GRAPHS);
        a.graphs = vec![GraphProto::new(), branch];
        cases.push(("graphs attribute", with_node(node("X", vec![a]))));

        // A tensor attribute whose type says INT is still looked at.
        let mut a = attr("value", AttributeType::INT);
        a.t = MessageField::some(ext());
        cases.push(("mistyped attribute", with_node(node("Constant", vec![a]))));

        let mut f = FunctionProto::new();
        f.name = "f".into();
        f.node.push(node("Constant", vec![tensor_attr(ext())]));
        let mut m = model(GraphProto::new());
        m.functions.push(f);
        cases.push(("function body", m));

        let mut f = FunctionProto::new();
        f.attribute_proto.push(tensor_attr(ext()));
        let mut m = model(GraphProto::new());
        m.functions.push(f);
        cases.push(("function attribute default", m));

        let mut ti = TrainingInfoProto::new();
        let mut g = GraphProto::new();
        g.initializer.push(ext());
        ti.algorithm = MessageField::some(g);
        let mut m = model(GraphProto::new());
        m.training_info.push(ti);
        cases.push(("training info", m));

        // `external_data` alone, with the default location.
        let mut t = floats("w", 4);
        t.external_data = ext().external_data;
        cases.push(("external_data without the location flag", with_init(t)));
        // The location flag alone.
        let mut t = floats("w", 4);
        t.data_location = EnumOrUnknown::new(DataLocation::EXTERNAL);
        cases.push(("location flag without external_data", with_init(t)));

        for (what, m) in cases {
            assert_eq!(code_of(&m), "model_external_data", "{what}");
        }
    }

    #[test]
    fn messages_name_no_path() {
        let bytes = with_init(external("w")).write_to_bytes().unwrap();
        let err = check(&bytes, &limits()).unwrap_err().to_string();
        assert!(!err.contains("etc") && !err.contains('/'), "{err}");
    }

    #[test]
    fn declared_sizes_are_bounded_and_must_match_the_data() {
        let mut t = TensorProto::new();
        t.name = "huge".into();
        t.data_type = DataType::FLOAT.value();
        t.dims = vec![1 << 40];
        assert_eq!(code_of(&with_init(t.clone())), "model_tensor_too_large");
        t.dims = vec![i64::MAX, i64::MAX];
        assert_eq!(code_of(&with_init(t.clone())), "model_tensor_too_large");
        t.dims = vec![-1];
        assert_eq!(code_of(&with_init(t.clone())), "invalid_model");
        // In a Constant, and in a subgraph.
        t.dims = vec![1 << 30];
        assert_eq!(
            code_of(&with_node(node("Constant", vec![tensor_attr(t.clone())]))),
            "model_tensor_too_large"
        );
        // Declared but absent, or a different amount present.
        t.dims = vec![100];
        assert_eq!(code_of(&with_init(t.clone())), "invalid_model");
        t.raw_data = vec![0; 399];
        assert_eq!(code_of(&with_init(t.clone())), "invalid_model");
        t.raw_data = vec![0; 400];
        assert_eq!(code_of(&with_init(t.clone())), "ok");
        assert_eq!(code_of(&with_init(floats("f", 10))), "ok");
        let mut short = floats("f", 10);
        short.dims = vec![11];
        assert_eq!(code_of(&with_init(short)), "invalid_model");
        // Each under the limit, together over it.
        let mut g = GraphProto::new();
        for i in 0..3 {
            let mut t = TensorProto::new();
            t.name = format!("w{i}");
            t.data_type = DataType::UINT8.value();
            t.dims = vec![400_000];
            t.raw_data = vec![1; 400_000];
            g.initializer.push(t);
        }
        assert_eq!(code_of(&model(g)), "model_tensor_too_large");
        // A sparse tensor counts at its dense size.
        let mut g = GraphProto::new();
        g.sparse_initializer
            .push(sparse(floats("v", 1), vec![1 << 20, 1 << 20]));
        assert_eq!(code_of(&model(g)), "model_tensor_too_large");
        let mut g = GraphProto::new();
        g.sparse_initializer.push(sparse(floats("v", 1), vec![64]));
        assert_eq!(code_of(&model(g)), "ok");
        // An element type this checker cannot size.
        let mut t = floats("f", 1);
        t.data_type = 99;
        assert_eq!(code_of(&with_init(t)), "invalid_model");
    }

    #[test]
    fn structure_is_bounded() {
        let mut g = GraphProto::new();
        for _ in 0..51 {
            g.node.push(node("Relu", vec![]));
        }
        assert_eq!(code_of(&model(g)), "model_too_complex");
        let mut g = GraphProto::new();
        for _ in 0..MAX_GRAPH_DEPTH + 1 {
            let mut outer = GraphProto::new();
            outer
                .node
                .push(node("If", vec![graph_attr("then_branch", g)]));
            g = outer;
        }
        assert_eq!(code_of(&model(g)), "model_too_complex");
    }

    #[test]
    fn unknown_fields_and_garbage_are_refused() {
        let mut t = floats("f", 1);
        t.special_fields
            .mut_unknown_fields()
            .add_length_delimited(99, b"hidden".to_vec());
        assert_eq!(code_of(&with_init(t)), "invalid_model");
        assert!(check(b"\xff\xff\xff\xff not onnx", &limits()).is_err());
    }
}
