//! Model fixtures: the reference inputs and outputs `scripts/gen-models`
//! computed with Python onnxruntime, the comparison of served outputs with
//! them, and temporary models directories made of the demo models.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::Value;

use crate::paths::repo_root;

/// Reference inputs and outputs computed by Python onnxruntime.
#[derive(Debug, Clone, Deserialize)]
pub struct Fixture {
    pub model: String,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub inputs: Vec<Value>,
    pub outputs: Vec<Value>,
}

impl Fixture {
    pub fn load(model: &str) -> Fixture {
        let path = repo_root()
            .join("models/fixtures")
            .join(format!("{model}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bad fixture {}: {e}", path.display()))
    }
}

/// Asserts that OIP output tensors match the expected ones: same names,
/// shapes and datatypes, numbers within `tol` (absolute).
pub fn assert_outputs_match(actual: &Value, expected: &[Value], tol: f64) {
    let actual = actual
        .as_array()
        .unwrap_or_else(|| panic!("outputs is not an array: {actual}"));
    assert_eq!(actual.len(), expected.len(), "output count: {actual:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert_eq!(a["name"], e["name"]);
        assert_eq!(a["shape"], e["shape"], "shape of {}", e["name"]);
        assert_eq!(a["datatype"], e["datatype"], "datatype of {}", e["name"]);
        let (ad, ed) = (
            a["data"].as_array().expect("data array"),
            e["data"].as_array().expect("data array"),
        );
        assert_eq!(ad.len(), ed.len(), "data length of {}", e["name"]);
        for (i, (x, y)) in ad.iter().zip(ed).enumerate() {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => assert!(
                    (x - y).abs() <= tol,
                    "{}[{i}]: got {x}, expected {y}",
                    e["name"]
                ),
                _ => assert_eq!(x, y, "{}[{i}]", e["name"]),
            }
        }
    }
}

/// A temporary models directory, removed on drop.
pub struct ModelsDir {
    pub path: PathBuf,
}

impl ModelsDir {
    /// Copies `models/<source>` to `<name>.onnx` for each `(name, source)`.
    pub fn with(files: &[(&str, &str)]) -> ModelsDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "e2e-models-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("temp models dir");
        let dir = ModelsDir { path };
        for (name, source) in files {
            dir.put(name, source);
        }
        dir
    }

    /// Writes (or replaces) model `name` with the file `models/<source>`.
    pub fn put(&self, name: &str, source: &str) {
        std::fs::copy(
            repo_root().join("models").join(source),
            self.path.join(format!("{name}.onnx")),
        )
        .unwrap_or_else(|e| panic!("copy {source}: {e}"));
    }
}

impl Drop for ModelsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
