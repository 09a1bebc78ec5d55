//! Shared helpers of the integration tests: the repository's files and one
//! real ONNX Runtime environment per test process.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{Array1, Array2};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use trainer::Dataset;

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("trainer/ sits in the workspace root")
        .to_path_buf()
}

pub(crate) fn breast_cancer() -> Dataset {
    let bytes = std::fs::read(repo_root().join("models/datasets/breast_cancer.csv"))
        .expect("models/datasets/breast_cancer.csv (made by scripts/gen-models)");
    Dataset::from_csv(&bytes, "target").expect("breast-cancer CSV parses")
}

/// ONNX Runtime from `ORT_DYLIB_PATH`, else the copy `scripts/setup` makes
/// (as the worker and the e2e harness find it). Only one environment may
/// exist per process, hence the `OnceLock`.
pub(crate) fn ort_env() -> &'static Environment {
    static ENV: OnceLock<Environment> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".local/onnxruntime/libonnxruntime.so"));
        assert!(
            lib.is_file(),
            "ONNX Runtime library {} missing: run scripts/setup or set ORT_DYLIB_PATH",
            lib.display()
        );
        ort::init_from(&lib)
            .expect("ONNX Runtime loads")
            .with_name("trainer-tests")
            .build()
            .expect("ONNX Runtime environment")
    })
}

// Builder errors are not Send/Sync; keep them inside an ort::Result.
fn build(bytes: &[u8]) -> ort::Result<Session> {
    Session::builder(ort_env())?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(1)?
        .commit_from_memory(bytes)
}

pub(crate) fn session(bytes: &[u8]) -> Session {
    build(bytes).expect("ONNX Runtime accepts the model")
}

/// Runs a classifier: (`label`, `probabilities`).
pub(crate) fn classify(session: &mut Session, x: &Array2<f32>) -> (Array1<i64>, Array2<f32>) {
    let out = session
        .run(ort::inputs!["features" => TensorRef::from_array_view(x).expect("input tensor")])
        .expect("model runs");
    let labels = out["label"]
        .try_extract_array::<i64>()
        .expect("label is i64")
        .to_owned()
        .into_dimensionality()
        .expect("label is 1-D");
    let probs = out["probabilities"]
        .try_extract_array::<f32>()
        .expect("probabilities are f32")
        .to_owned()
        .into_dimensionality()
        .expect("probabilities are 2-D");
    (labels, probs)
}

/// Runs a regressor: `prediction` (`rows × 1`).
pub(crate) fn regress(session: &mut Session, x: &Array2<f32>) -> Array2<f32> {
    let out = session
        .run(ort::inputs!["features" => TensorRef::from_array_view(x).expect("input tensor")])
        .expect("model runs");
    out["prediction"]
        .try_extract_array::<f32>()
        .expect("prediction is f32")
        .to_owned()
        .into_dimensionality()
        .expect("prediction is 2-D")
}

/// The values ONNX Runtime actually sees: `f32`, widened back to `f64` so
/// the trainer's own `predict` runs on identical inputs.
pub(crate) fn as_f32(x: ndarray::ArrayView2<f64>) -> (Array2<f32>, Array2<f64>) {
    let x32 = x.mapv(|v| v as f32);
    let back = x32.mapv(f64::from);
    (x32, back)
}
