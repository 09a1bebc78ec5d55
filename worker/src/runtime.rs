//! Finding and starting ONNX Runtime. With ort's `load-dynamic` the library is
//! opened at run time, so a missing or wrong file must become a clear start-up
//! error here; ort would otherwise panic on first use.

use std::path::{Path, PathBuf};

use crate::error::WorkerError;

/// Where the library is looked for when no path is configured, in order:
/// the project-local copy made by `scripts/setup` (relative to the working
/// directory, then to the executable in `target/<profile>/`), then the
/// container image's location.
pub fn default_candidates() -> Vec<PathBuf> {
    let rel = Path::new(".local/onnxruntime/libonnxruntime.so");
    let mut out = vec![rel.to_path_buf()];
    if let Ok(exe) = std::env::current_exe()
        && let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent)
    {
        out.push(root.join(rel));
    }
    out.push(PathBuf::from("/usr/local/lib/libonnxruntime.so"));
    out
}

/// The configured path if any (it must exist), else the first default
/// candidate that exists.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf, WorkerError> {
    let candidates = match configured {
        Some(p) => vec![p.to_path_buf()],
        None => default_candidates(),
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(WorkerError::OrtLibraryMissing { tried: candidates })
}

/// Loads the library and builds the process's one ONNX Runtime environment.
pub fn start(path: &Path) -> Result<ort::environment::Environment, WorkerError> {
    let load_err = |message: String| WorkerError::OrtLoad {
        path: path.to_path_buf(),
        message,
    };
    let builder = ort::init_from(path).map_err(|e| load_err(e.to_string()))?;
    // ONNX Runtime 1.31 records telemetry in a database under $HOME (and
    // may send it): nothing a worker should do with tenants' models.
    builder
        .with_name("worker")
        .with_telemetry(false)
        .build()
        .map_err(|e| load_err(e.to_string()))
}

/// The ONNX Runtime environment of a test process (one per process, as in
/// the worker): `ORT_DYLIB_PATH`, else the copy `scripts/setup` makes.
#[cfg(test)]
pub(crate) fn test_env() -> &'static ort::environment::Environment {
    static ENV: std::sync::OnceLock<ort::environment::Environment> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let lib = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../.local/onnxruntime/libonnxruntime.so")
            });
        start(&lib).unwrap_or_else(|e| panic!("{e} (run scripts/setup)"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_configured_library_is_a_clear_error() {
        let err = find_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
        assert!(msg.contains("scripts/setup"), "{msg}");
    }
}
