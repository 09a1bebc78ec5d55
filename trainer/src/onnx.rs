//! ONNX export of a [`LinearModel`], protobuf-encoded by hand by the
//! crate's private `proto` module (IR version 8, default opset 17).
//!
//! Graph, with every constant an `f32` initializer:
//!
//! ```text
//! features ─Sub(mean)─Div(scale)─Gemm(weights, bias)─┬─ prediction                        (regression)
//!                                                    ├─ logits ─Sigmoid─ [1-p, p] ─┐      (2 classes)
//!                                                    └─ logits ─Softmax────────────┴─ probabilities ─ArgMax─ label
//! ```
//!
//! Signatures follow the demo models: classification `features f32[batch,D]`
//! → `label i64[batch]`, `probabilities f32[batch,K]` (like
//! `models/breast_cancer.onnx` from skl2onnx); regression
//! `features f32[batch,D]` → `prediction f32[batch,1]` (like
//! `models/mlp128.onnx`). Standardisation stays as Sub/Div nodes instead of
//! being folded into the weights: folding adds large cancelling terms to the
//! bias, which costs precision in `f32` for features with large means.

use ndarray::Array2;

use crate::model::{LinearModel, Link};
use crate::proto::Message;

pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;
pub const PRODUCER_NAME: &str = "onnx-queue trainer";
const BATCH: &str = "batch";

// onnx.proto TensorProto.DataType and AttributeProto.AttributeType values.
const FLOAT: i64 = 1;
const INT64: i64 = 7;
const ATTR_INT: i64 = 2;

enum Dim {
    Batch,
    Fixed(usize),
}

fn tensor_f32(name: &str, dims: &[usize], values: impl Iterator<Item = f64>) -> Message {
    let mut raw = Vec::new();
    for v in values {
        raw.extend_from_slice(&(v as f32).to_le_bytes());
    }
    let mut t = Message::new();
    for &d in dims {
        t.int(1, d as i64); // dims
    }
    t.int(2, FLOAT) // data_type
        .string(8, name) // name
        .bytes(9, &raw); // raw_data
    t
}

fn value_info(name: &str, elem_type: i64, dims: &[Dim]) -> Message {
    let mut shape = Message::new();
    for d in dims {
        let mut dim = Message::new();
        match d {
            Dim::Batch => dim.string(2, BATCH),     // dim_param
            Dim::Fixed(n) => dim.int(1, *n as i64), // dim_value
        };
        shape.message(1, &dim); // TensorShapeProto.dim
    }
    let mut tensor_type = Message::new();
    tensor_type.int(1, elem_type).message(2, &shape); // elem_type, shape
    let mut ty = Message::new();
    ty.message(1, &tensor_type); // TypeProto.tensor_type
    let mut vi = Message::new();
    vi.string(1, name).message(2, &ty); // name, type
    vi
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], int_attrs: &[(&str, i64)]) -> Message {
    let mut n = Message::new();
    for i in inputs {
        n.string(1, i); // input
    }
    for o in outputs {
        n.string(2, o); // output
    }
    n.string(3, outputs[0]).string(4, op); // name, op_type
    for (name, v) in int_attrs {
        let mut a = Message::new();
        a.string(1, name).int(3, *v).int(20, ATTR_INT); // name, i, type
        n.message(5, &a); // attribute
    }
    n
}

fn matrix(m: &Array2<f64>) -> impl Iterator<Item = f64> + '_ {
    // Row-major, as ONNX lays out raw_data.
    m.rows().into_iter().flat_map(|r| r.into_iter().copied())
}

/// Serialises `model` to ONNX bytes. `metadata` becomes the model's
/// `metadata_props` (readable through ONNX Runtime's custom metadata).
pub(crate) fn export(
    model: &LinearModel,
    graph_name: &str,
    doc_string: &str,
    metadata: &[(&str, String)],
) -> Vec<u8> {
    let d = model.mean.len();
    let k = model.n_outputs();
    let w = &model.weights;

    let mut initializers = vec![
        tensor_f32("mean", &[d], model.mean.iter().copied()),
        tensor_f32("scale", &[d], model.scale.iter().copied()),
        tensor_f32("weights", &[d, w.ncols()], matrix(w)),
        tensor_f32("bias", &[w.ncols()], model.bias.iter().copied()),
    ];
    let gemm_out = match model.link {
        Link::Identity => "prediction",
        Link::Sigmoid | Link::Softmax => "logits",
    };
    let mut nodes = vec![
        node("Sub", &["features", "mean"], &["centered"], &[]),
        node("Div", &["centered", "scale"], &["standardized"], &[]),
        node(
            "Gemm",
            &["standardized", "weights", "bias"],
            &[gemm_out],
            &[],
        ),
    ];
    match model.link {
        Link::Identity => {}
        Link::Sigmoid => {
            initializers.push(tensor_f32("one", &[1], std::iter::once(1.0)));
            nodes.push(node("Sigmoid", &["logits"], &["p1"], &[]));
            nodes.push(node("Sub", &["one", "p1"], &["p0"], &[]));
            nodes.push(node(
                "Concat",
                &["p0", "p1"],
                &["probabilities"],
                &[("axis", 1)],
            ));
        }
        Link::Softmax => {
            nodes.push(node(
                "Softmax",
                &["logits"],
                &["probabilities"],
                &[("axis", 1)],
            ));
        }
    }
    let outputs = match model.link {
        Link::Identity => vec![value_info(
            "prediction",
            FLOAT,
            &[Dim::Batch, Dim::Fixed(1)],
        )],
        Link::Sigmoid | Link::Softmax => {
            nodes.push(node(
                "ArgMax",
                &["probabilities"],
                &["label"],
                &[("axis", 1), ("keepdims", 0)],
            ));
            vec![
                value_info("label", INT64, &[Dim::Batch]),
                value_info("probabilities", FLOAT, &[Dim::Batch, Dim::Fixed(k)]),
            ]
        }
    };

    let mut graph = Message::new();
    for n in &nodes {
        graph.message(1, n); // node
    }
    graph.string(2, graph_name); // name
    for t in &initializers {
        graph.message(5, t); // initializer
    }
    graph.message(
        11,
        &value_info("features", FLOAT, &[Dim::Batch, Dim::Fixed(d)]),
    ); // input
    for o in &outputs {
        graph.message(12, o); // output
    }

    let mut opset = Message::new();
    opset.string(1, "").int(2, OPSET); // domain, version

    let mut m = Message::new();
    m.int(1, IR_VERSION) // ir_version
        .string(2, PRODUCER_NAME) // producer_name
        .string(3, env!("CARGO_PKG_VERSION")) // producer_version
        .string(6, doc_string) // doc_string
        .message(7, &graph) // graph
        .message(8, &opset); // opset_import
    for (key, value) in metadata {
        let mut entry = Message::new();
        entry.string(1, key).string(2, value);
        m.message(14, &entry); // metadata_props
    }
    m.into_bytes()
}
