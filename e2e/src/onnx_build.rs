//! ONNX models built at test time, hostile ones included, so no hostile
//! file is ever committed. Built with the same schema crate the worker's
//! static checks decode with (`onnx-protobuf`), so the two cannot drift.
//!
//! Every model has a signature the API accepts (FP32/INT64 tensors, a
//! dynamic first dimension where it matters), so it can be uploaded,
//! promoted and predicted on like any other:
//!
//! * [`scale`]: `y = k·x`, `x f32[N,4]`: a benign model whose outputs tell
//!   versions apart.
//! * [`external_initializer`], [`external_in_constant`],
//!   [`external_in_subgraph`]: a tensor whose data is "external", at a
//!   location of the caller's choosing (`etc/passwd`, `/etc/passwd`,
//!   `../x`).
//! * [`fold_bomb`]: `ConstantOfShape([16384,16384]) → ReduceSum`: 221 bytes
//!   that make constant folding allocate 1 GiB (and a run too).
//! * [`declared_huge`]: an initializer declaring `[1<<40]` floats, no data.
//! * [`endless_loop`]: a `Loop` with trip count 10^12 and a trivial body.
//! * [`loop_of_input`]: the same `Loop`, its trip count from the request.
//! * [`huge_output`]: `Expand` of a small input to a shape given by a
//!   second (INT64) input: as much output as the caller asks for.
//! * [`padded`]: a benign model carrying an unused initializer of `n`
//!   bytes: large bytes without any trick.

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::tensor_shape_proto::Dimension;
use onnx_protobuf::type_proto::{self, Tensor as TypeTensor};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use protobuf::{EnumOrUnknown, MessageField};

/// A dimension: fixed, or dynamic (named).
#[derive(Debug, Clone, Copy)]
pub enum Dim {
    Fixed(i64),
    Dynamic(&'static str),
}

/// A graph input or output of `elem` type and `dims`.
pub fn value(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = Dimension::new();
        match d {
            Dim::Fixed(n) => dim.set_dim_value(*n),
            Dim::Dynamic(p) => dim.set_dim_param((*p).to_owned()),
        }
        shape.dim.push(dim);
    }
    let mut tt = TypeTensor::new();
    tt.elem_type = elem as i32;
    tt.shape = MessageField::some(shape);
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.to_owned();
    v.type_ = MessageField::some(ty);
    v
}

/// A node `op(inputs) -> outputs` with attributes.
pub fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.to_owned();
    n.input = inputs.iter().map(|s| (*s).to_owned()).collect();
    n.output = outputs.iter().map(|s| (*s).to_owned()).collect();
    n.attribute = attrs;
    n
}

pub fn int_attr(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_owned();
    a.type_ = EnumOrUnknown::new(AttributeType::INT);
    a.i = v;
    a
}

pub fn tensor_attr(name: &str, t: TensorProto) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_owned();
    a.type_ = EnumOrUnknown::new(AttributeType::TENSOR);
    a.t = MessageField::some(t);
    a
}

pub fn graph_attr(name: &str, g: GraphProto) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_owned();
    a.type_ = EnumOrUnknown::new(AttributeType::GRAPH);
    a.g = MessageField::some(g);
    a
}

/// An FP32 tensor holding `data` with `dims`.
pub fn floats(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_owned();
    t.data_type = DataType::FLOAT as i32;
    t.dims = dims.to_vec();
    t.float_data = data.to_vec();
    t
}

/// An INT64 tensor holding `data` with `dims`.
pub fn int64s(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_owned();
    t.data_type = DataType::INT64 as i32;
    t.dims = dims.to_vec();
    t.int64_data = data.to_vec();
    t
}

/// A BOOL scalar.
pub fn boolean(name: &str, v: bool) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_owned();
    t.data_type = DataType::BOOL as i32;
    t.int32_data = vec![i32::from(v)];
    t
}

/// An FP32 `[4]` tensor whose data is "external", at `location`.
pub fn external_tensor(name: &str, location: &str) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_owned();
    t.data_type = DataType::FLOAT as i32;
    t.dims = vec![4];
    t.data_location = EnumOrUnknown::new(DataLocation::EXTERNAL);
    for (k, v) in [("location", location), ("offset", "0"), ("length", "16")] {
        let mut e = StringStringEntryProto::new();
        e.key = k.to_owned();
        e.value = v.to_owned();
        t.external_data.push(e);
    }
    t
}

/// A graph of `nodes` with its inputs, outputs and initializers.
pub fn graph(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    initializers: Vec<TensorProto>,
) -> GraphProto {
    let mut g = GraphProto::new();
    g.name = "g".to_owned();
    g.node = nodes;
    g.input = inputs;
    g.output = outputs;
    g.initializer = initializers;
    g
}

/// The model's bytes: IR 8, default-domain opset 13.
pub fn model(g: GraphProto) -> Vec<u8> {
    let mut m = ModelProto::new();
    m.ir_version = 8;
    m.producer_name = "onnx-queue e2e".to_owned();
    let mut op = OperatorSetIdProto::new();
    op.version = 13;
    m.opset_import.push(op);
    m.graph = MessageField::some(g);
    m.write_to_bytes().expect("encoding an ONNX model")
}

const N: Dim = Dim::Dynamic("N");

fn x4() -> ValueInfoProto {
    value("x", DataType::FLOAT, &[N, Dim::Fixed(4)])
}

fn y4() -> ValueInfoProto {
    value("y", DataType::FLOAT, &[N, Dim::Fixed(4)])
}

/// `y = k·x`, `x f32[N,4] → y f32[N,4]`.
pub fn scale(k: f32) -> Vec<u8> {
    model(graph(
        vec![node("Mul", &["x", "k"], &["y"], vec![])],
        vec![x4()],
        vec![y4()],
        vec![floats("k", &[], &[k])],
    ))
}

/// `y = x + w` with `w` external at `location`.
pub fn external_initializer(location: &str) -> Vec<u8> {
    model(graph(
        vec![node("Add", &["x", "w"], &["y"], vec![])],
        vec![x4()],
        vec![y4()],
        vec![external_tensor("w", location)],
    ))
}

/// `y = x + Constant(external at location)`.
pub fn external_in_constant(location: &str) -> Vec<u8> {
    model(graph(
        vec![
            node(
                "Constant",
                &[],
                &["c"],
                vec![tensor_attr("value", external_tensor("c", location))],
            ),
            node("Add", &["x", "c"], &["y"], vec![]),
        ],
        vec![x4()],
        vec![y4()],
        vec![],
    ))
}

/// `y = x + If(true, then: Constant(external), else: Constant(0))`.
pub fn external_in_subgraph(location: &str) -> Vec<u8> {
    let branch = |t: TensorProto| {
        graph(
            vec![node("Constant", &[], &["c"], vec![tensor_attr("value", t)])],
            vec![],
            vec![value("c", DataType::FLOAT, &[Dim::Fixed(4)])],
            vec![],
        )
    };
    model(graph(
        vec![
            node(
                "If",
                &["cond"],
                &["c"],
                vec![
                    graph_attr("then_branch", branch(external_tensor("e", location))),
                    graph_attr("else_branch", branch(floats("z", &[4], &[0.0; 4]))),
                ],
            ),
            node("Add", &["x", "c"], &["y"], vec![]),
        ],
        vec![x4()],
        vec![y4()],
        vec![boolean("cond", true)],
    ))
}

/// `y = x + ReduceSum(ConstantOfShape([16384, 16384]))`, `x f32[N,1]`.
pub fn fold_bomb() -> Vec<u8> {
    model(graph(
        vec![
            node("ConstantOfShape", &["shape"], &["big"], vec![]),
            node("ReduceSum", &["big"], &["s"], vec![int_attr("keepdims", 0)]),
            node("Add", &["x", "s"], &["y"], vec![]),
        ],
        vec![value("x", DataType::FLOAT, &[N, Dim::Fixed(1)])],
        vec![value("y", DataType::FLOAT, &[N, Dim::Fixed(1)])],
        vec![int64s("shape", &[2], &[16384, 16384])],
    ))
}

/// `y = x + w[0:4]` where `w` declares `[1<<40]` floats and holds none.
pub fn declared_huge() -> Vec<u8> {
    let mut w = floats("w", &[1 << 40], &[]);
    w.float_data.clear();
    model(graph(
        vec![
            node("Slice", &["w", "starts", "ends"], &["w4"], vec![]),
            node("Add", &["x", "w4"], &["y"], vec![]),
        ],
        vec![x4()],
        vec![y4()],
        vec![w, int64s("starts", &[1], &[0]), int64s("ends", &[1], &[4])],
    ))
}

/// The body of the loops below: passes `x` through, condition unchanged.
fn pass_through_body() -> GraphProto {
    graph(
        vec![
            node("Identity", &["cond_in"], &["cond_out"], vec![]),
            node("Identity", &["v_in"], &["v_out"], vec![]),
        ],
        vec![
            value("i", DataType::INT64, &[]),
            value("cond_in", DataType::BOOL, &[]),
            value("v_in", DataType::FLOAT, &[N, Dim::Fixed(4)]),
        ],
        vec![
            value("cond_out", DataType::BOOL, &[]),
            value("v_out", DataType::FLOAT, &[N, Dim::Fixed(4)]),
        ],
        vec![],
    )
}

/// A `Loop` of 10^12 iterations whose body passes `x` through:
/// `x f32[N,4] → y f32[N,4]`, running (practically) forever.
pub fn endless_loop() -> Vec<u8> {
    model(graph(
        vec![node(
            "Loop",
            &["trips", "cond", "x"],
            &["y"],
            vec![graph_attr("body", pass_through_body())],
        )],
        vec![x4()],
        vec![y4()],
        vec![
            int64s("trips", &[], &[1_000_000_000_000]),
            boolean("cond", true),
        ],
    ))
}

/// A `Loop` of as many iterations as the request asks for: `x f32[N,4]`,
/// `n i64[1]` → `y f32[N,4]` (`y = x`). On zeros, the validation's trial
/// run, it does nothing; with `n = 10^12` it runs (practically) forever,
/// so only the run's time limit can stop it.
pub fn loop_of_input() -> Vec<u8> {
    model(graph(
        vec![
            node("Reshape", &["n", "scalar"], &["trips"], vec![]),
            node(
                "Loop",
                &["trips", "cond", "x"],
                &["y"],
                vec![graph_attr("body", pass_through_body())],
            ),
        ],
        vec![x4(), value("n", DataType::INT64, &[Dim::Fixed(1)])],
        vec![y4()],
        vec![int64s("scalar", &[0], &[]), boolean("cond", true)],
    ))
}

/// `y = Expand(x, shape)`: `x f32[1,1]`, `shape i64[2]` → `y f32[A,B]`.
pub fn huge_output() -> Vec<u8> {
    model(graph(
        vec![node("Expand", &["x", "shape"], &["y"], vec![])],
        vec![
            value("x", DataType::FLOAT, &[Dim::Fixed(1), Dim::Fixed(1)]),
            value("shape", DataType::INT64, &[Dim::Fixed(2)]),
        ],
        vec![value(
            "y",
            DataType::FLOAT,
            &[Dim::Dynamic("A"), Dim::Dynamic("B")],
        )],
        vec![],
    ))
}

/// [`scale`] plus an unused initializer of `bytes` bytes.
pub fn padded(k: f32, bytes: usize) -> Vec<u8> {
    let mut pad = TensorProto::new();
    pad.name = "pad".to_owned();
    pad.data_type = DataType::UINT8 as i32;
    pad.dims = vec![bytes as i64];
    pad.raw_data = vec![0x5a; bytes];
    model(graph(
        vec![node("Mul", &["x", "k"], &["y"], vec![])],
        vec![x4()],
        vec![y4()],
        vec![floats("k", &[], &[k]), pad],
    ))
}
