#!/usr/bin/env python3
"""Regenerate the demo ONNX models and their reference fixtures.

Run through `scripts/gen-models`, which sets up a pinned virtualenv first.
Everything here is deterministic (fixed seeds, single-threaded inference), so
re-running produces byte-identical files.

Outputs (relative to the repo root):
  models/mlp128.onnx            features f32[N,128] -> prediction f32[N,1]
  models/breast_cancer.onnx     features f32[N,30]  -> label i64[N], probabilities f32[N,2]
  models/two_input.onnx         x f32[N,4], k i64[N,1] -> y f32[N,2], z i64[N,1]
  models/fixtures/<model>.json  Open Inference Protocol (KServe V2) style
                                input/output tensors computed by onnxruntime
  models/datasets/breast_cancer.csv  the breast-cancer training data (header row,
                                30 features, `target` 0/1) for the trainer crate
  models/testdata/*.onnx        models only the failure tests use (not served
                                by default): slow, flaky_broken/flaky_fixed,
                                inf_output, scale3
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
FIXTURES = MODELS / "fixtures"

# Opset / IR version for the hand-built models. Opset 17 <-> IR version 8 is
# well inside what onnxruntime 1.31 supports.
OPSET = 17
IR_VERSION = 8
BATCH = "batch"
PRODUCER = "gen_models.py"

DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.bool_): "BOOL",
}


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------


def _finish(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def build_mlp128() -> onnx.ModelProto:
    rng = np.random.default_rng(128)
    # Scale so the pre-sigmoid logit has a std of roughly 1 for N(0,1) inputs:
    # outputs spread over (0,1) instead of saturating.
    w1 = (rng.standard_normal((128, 64)) * math.sqrt(2.0 / 128)).astype(np.float32)
    b1 = (rng.standard_normal(64) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((64, 1)) * math.sqrt(1.0 / 64)).astype(np.float32)
    b2 = np.array([0.05], dtype=np.float32)

    inits = [
        numpy_helper.from_array(w1, "fc1.weight"),
        numpy_helper.from_array(b1, "fc1.bias"),
        numpy_helper.from_array(w2, "fc2.weight"),
        numpy_helper.from_array(b2, "fc2.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["features", "fc1.weight", "fc1.bias"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["h1_relu"], name="relu1"),
        helper.make_node("Gemm", ["h1_relu", "fc2.weight", "fc2.bias"], ["logit"], name="fc2"),
        helper.make_node("Sigmoid", ["logit"], ["prediction"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp128",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [BATCH, 128])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [BATCH, 1])],
        initializer=inits,
    )
    return _finish(graph, "Untrained demo MLP 128->64->1 with deterministic weights (seed 128).")


TWO_INPUT_W = np.array(
    [[0.5, -1.0], [1.5, 0.25], [-0.75, 2.0], [1.0, -0.5]], dtype=np.float32
)


def build_two_input() -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(TWO_INPUT_W, "W"),
        numpy_helper.from_array(np.array(2, dtype=np.int64), "two"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"], name="matmul"),
        helper.make_node("Cast", ["k"], ["k_f"], to=TensorProto.FLOAT, name="cast_k"),
        helper.make_node("Add", ["xw", "k_f"], ["y"], name="add_k"),
        helper.make_node("ArgMax", ["y"], ["y_argmax"], axis=1, keepdims=1, name="argmax"),
        helper.make_node("Mul", ["k", "two"], ["k2"], name="mul2"),
        helper.make_node("Add", ["k2", "y_argmax"], ["z"], name="add_z"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_input",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 4]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [BATCH, 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 2]),
            helper.make_tensor_value_info("z", TensorProto.INT64, [BATCH, 1]),
        ],
        initializer=inits,
    )
    return _finish(graph, "y = x @ W + float(k); z = 2*k + argmax(y, axis=1).")


def _name_batch_dim(vi: onnx.ValueInfoProto) -> None:
    dim0 = vi.type.tensor_type.shape.dim[0]
    if not dim0.HasField("dim_value"):
        dim0.dim_param = BATCH


def build_breast_cancer():
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    X = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    pipe = Pipeline(
        [
            ("scaler", StandardScaler()),
            ("clf", LogisticRegression(max_iter=1000, random_state=0)),
        ]
    )
    pipe.fit(X, y)
    model = to_onnx(
        pipe,
        initial_types=[("features", FloatTensorType([None, X.shape[1]]))],
        target_opset={"": OPSET, "ai.onnx.ml": 3},
        options={id(pipe.steps[-1][1]): {"zipmap": False}},
        final_types=None,
    )
    # Make sure the outputs carry the names the fixtures/tests rely on.
    out_names = [o.name for o in model.graph.output]
    assert out_names == ["label", "probabilities"], out_names
    for vi in list(model.graph.input) + list(model.graph.output):
        _name_batch_dim(vi)
    # skl2onnx (1.20) lists the default domain twice when target_opset is a
    # dict; keep a single entry per domain.
    seen = {}
    for op in model.opset_import:
        seen[op.domain] = max(seen.get(op.domain, 0), op.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(seen.items()))
    model.graph.name = "breast_cancer"
    model.doc_string = (
        "StandardScaler + LogisticRegression trained on sklearn's bundled "
        "breast-cancer dataset (target 0 = malignant, 1 = benign)."
    )
    onnx.checker.check_model(model, full_check=True)
    return model, X, y, pipe


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


def _tensor_json(name: str, arr: np.ndarray) -> dict:
    arr = np.ascontiguousarray(arr)
    dt = DATATYPES[arr.dtype]
    flat = arr.reshape(-1)
    if dt in ("FP32", "FP64"):
        if not np.all(np.isfinite(flat)):
            raise ValueError(f"non-finite value in {name}")
        if dt == "FP32":
            # Python float of the float32 value: its repr round-trips exactly.
            data = [float(np.float32(v)) for v in flat]
        else:
            data = [float(v) for v in flat]
    elif dt == "BOOL":
        data = [bool(v) for v in flat]
    else:
        data = [int(v) for v in flat]
    return {"name": name, "shape": [int(d) for d in arr.shape], "datatype": dt, "data": data}


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def make_cases(sess: ort.InferenceSession, feeds_list: list[dict]) -> list[dict]:
    out_names = [o.name for o in sess.get_outputs()]
    in_names = [i.name for i in sess.get_inputs()]
    cases = []
    for feeds in feeds_list:
        outs = sess.run(out_names, feeds)
        cases.append(
            {
                "inputs": [_tensor_json(n, feeds[n]) for n in in_names],
                "outputs": [_tensor_json(n, o) for n, o in zip(out_names, outs)],
            }
        )
    return cases


def write_fixture(model_name: str, cases: list[dict]) -> Path:
    # One tensor per line keeps the files diffable without putting every
    # number on its own line.
    lines = ["{", f'  "model": {json.dumps(model_name)},', '  "cases": [']
    for ci, case in enumerate(cases):
        lines.append("    {")
        for key in ("inputs", "outputs"):
            lines.append(f'      "{key}": [')
            tensors = case[key]
            for ti, t in enumerate(tensors):
                sep = "," if ti < len(tensors) - 1 else ""
                lines.append("        " + json.dumps(t, allow_nan=False) + sep)
            lines.append("      ]" + ("," if key == "inputs" else ""))
        lines.append("    }" + ("," if ci < len(cases) - 1 else ""))
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    # Sanity: valid JSON that round-trips to the same structure.
    assert json.loads(text) == {"model": model_name, "cases": cases}
    path = FIXTURES / f"{model_name}.json"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------
# test-only models (models/testdata/)
# --------------------------------------------------------------------------
SLOW_SIZE = 2048


def build_slow() -> onnx.ModelProto:
    """x f32[N,1] -> y f32[N,1] with y == x, after two 2048x2048 matrix
    products built from x (so no constant folding can skip them): a job that
    takes a noticeable time, for tests that stop or kill a worker mid-job."""
    n = SLOW_SIZE
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
        helper.make_node("Expand", ["m", "square"], ["e"]),
        helper.make_node("MatMul", ["e", "e"], ["p1"]),
        helper.make_node("MatMul", ["p1", "e"], ["p2"]),
        helper.make_node("ReduceSum", ["p2"], ["s"], keepdims=1),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("Add", ["x", "z"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([n, n], dtype=np.int64), "square"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 1])],
        inits,
    )
    return _finish(graph, "Slow identity for failure tests.")


def build_flaky(broken: bool) -> onnx.ModelProto:
    """x f32[N,4] -> y f32[N,4] = 2x. The broken twin has the same signature
    but reshapes through [-1, 3], which fails at run time for every input:
    a model deployed broken, fixed by replacing the file."""
    nodes = [helper.make_node("Mul", ["x", "two"], ["d"])]
    inits = [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")]
    if broken:
        nodes += [
            helper.make_node("Reshape", ["d", "bad_shape"], ["r"]),
            helper.make_node("Reshape", ["r", "good_shape"], ["y"]),
        ]
        inits += [
            numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "bad_shape"),
            numpy_helper.from_array(np.array([-1, 4], dtype=np.int64), "good_shape"),
        ]
    else:
        nodes += [helper.make_node("Identity", ["d"], ["y"])]
    graph = helper.make_graph(
        nodes, "flaky",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 4])],
        inits,
    )
    return _finish(graph, ("Broken" if broken else "Fixed") + " twin for dead-letter tests.")


def build_scale3() -> onnx.ModelProto:
    """x f32[N,4] -> y f32[N,4] = 3x: flaky_fixed's signature with other
    weights, the "new version" of the registry and hot-swap tests."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "three"], ["y"])], "scale3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 4])],
        [numpy_helper.from_array(np.array(3.0, dtype=np.float32), "three")],
    )
    return _finish(graph, "y = 3x, a second version for registry tests.")


def build_inf_output() -> onnx.ModelProto:
    """x f32[N,1] -> y = x / 0: an infinite output that must never be
    reported as a success."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["x", "zero"], ["y"])], "inf_output",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 1])],
        [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")],
    )
    return _finish(graph, "Non-finite output for failure tests.")


def save_testdata() -> list:
    out = []
    testdata = MODELS / "testdata"
    testdata.mkdir(exist_ok=True)
    for name, model in [
        ("slow", build_slow()),
        ("flaky_broken", build_flaky(True)),
        ("flaky_fixed", build_flaky(False)),
        ("inf_output", build_inf_output()),
        ("scale3", build_scale3()),
    ]:
        path = testdata / f"{name}.onnx"
        path.write_bytes(model.SerializeToString(deterministic=True))
        out.append((name, path, _session(path)))
    x4 = np.ones((1, 4), dtype=np.float32)
    slow = out[0][2]
    assert slow.run(None, {"x": np.array([[0.5]], dtype=np.float32)})[0].tolist() == [[0.5]]
    try:
        out[1][2].run(None, {"x": x4})
        raise AssertionError("flaky_broken must fail at run time")
    except AssertionError:
        raise
    except Exception:
        pass
    assert out[2][2].run(None, {"x": x4})[0].tolist() == [[2.0] * 4]
    assert np.isinf(out[3][2].run(None, {"x": np.ones((1, 1), np.float32)})[0]).all()
    assert out[4][2].run(None, {"x": x4})[0].tolist() == [[3.0] * 4]
    return out


def write_breast_cancer_csv() -> Path:
    """sklearn's breast-cancer data as CSV: the 30 feature names, then
    `target`. repr() of a float64 is its shortest exact round-trip form, so
    parsers get back the very values sklearn holds."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [str(n) for n in data.feature_names] + ["target"]
    assert not any(c in n for n in names for c in ',"\n'), names
    lines = [",".join(names)]
    for row, t in zip(data.data, data.target):
        lines.append(",".join([repr(float(v)) for v in row] + [str(int(t))]))
    path = MODELS / "datasets" / "breast_cancer.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len(lines) == 570 and len(names) == 31
    return path


def save_model(model: onnx.ModelProto, name: str) -> Path:
    path = MODELS / f"{name}.onnx"
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def _fmt_shape(shape) -> str:
    return "[" + ",".join(str(d) if d is not None else "?" for d in shape) + "]"


def main() -> None:
    MODELS.mkdir(exist_ok=True)
    FIXTURES.mkdir(exist_ok=True)
    summary = []

    # --- mlp128 ---------------------------------------------------------
    path = save_model(build_mlp128(), "mlp128")
    sess = _session(path)
    rng = np.random.default_rng(1280)
    feeds = [
        {"features": rng.standard_normal((1, 128)).astype(np.float32)} for _ in range(3)
    ]
    feeds.append({"features": rng.standard_normal((4, 128)).astype(np.float32)})
    cases = make_cases(sess, feeds)
    preds = np.concatenate([np.array(c["outputs"][0]["data"]) for c in cases])
    assert np.all((preds > 0.02) & (preds < 0.98)), preds  # not saturated
    write_fixture("mlp128", cases)
    summary.append(("mlp128", path, sess))

    # --- breast_cancer ----------------------------------------------------
    model, X, y, pipe = build_breast_cancer()
    path = save_model(model, "breast_cancer")
    sess = _session(path)
    # Rows 0 and 1 are malignant (0); row 19 is benign (1); the batch mixes
    # both classes.
    singles = [0, 19, 1]
    batch = [20, 21, 22, 23]
    feeds = [{"features": X[[i]]} for i in singles]
    feeds.append({"features": X[batch]})
    cases = make_cases(sess, feeds)
    labels = [l for c in cases for l in c["outputs"][0]["data"]]
    expected = pipe.predict(X[singles + batch]).tolist()
    assert labels == expected, (labels, expected)
    assert labels == y[singles + batch].tolist(), "fixture rows should be classified correctly"
    assert set(labels) == {0, 1}
    write_fixture("breast_cancer", cases)
    summary.append(("breast_cancer", path, sess))

    # --- two_input --------------------------------------------------------
    path = save_model(build_two_input(), "two_input")
    sess = _session(path)
    rng = np.random.default_rng(4)

    def two_feeds(n: int) -> dict:
        return {
            "x": rng.standard_normal((n, 4)).astype(np.float32),
            "k": rng.integers(-3, 4, size=(n, 1), dtype=np.int64),
        }

    feeds = [two_feeds(1) for _ in range(3)] + [two_feeds(4)]
    cases = make_cases(sess, feeds)
    for f, c in zip(feeds, cases):  # check against a numpy reference
        ref_y = f["x"] @ TWO_INPUT_W + f["k"].astype(np.float32)
        got_y = np.array(c["outputs"][0]["data"]).reshape(ref_y.shape)
        assert np.allclose(got_y, ref_y, atol=1e-5)
        ref_z = f["k"] * 2 + np.argmax(got_y, axis=1, keepdims=True)
        assert np.array(c["outputs"][1]["data"]).reshape(ref_z.shape).tolist() == ref_z.tolist()
    write_fixture("two_input", cases)
    summary.append(("two_input", path, sess))

    summary.extend(save_testdata())
    csv_path = write_breast_cancer_csv()

    # --- summary ----------------------------------------------------------
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}")
    for name, path, sess in summary:
        m = onnx.load(str(path))
        opsets = ",".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in m.opset_import)
        ins = ", ".join(f"{i.name} {i.type}{_fmt_shape(i.shape)}" for i in sess.get_inputs())
        outs = ", ".join(f"{o.name} {o.type}{_fmt_shape(o.shape)}" for o in sess.get_outputs())
        print(
            f"{name}: {path.relative_to(ROOT)} ({path.stat().st_size} B, ir {m.ir_version}, {opsets})\n"
            f"  inputs:  {ins}\n  outputs: {outs}"
        )
    print(f"dataset: {csv_path.relative_to(ROOT)} ({csv_path.stat().st_size} B)")


if __name__ == "__main__":
    main()
