//! Where things are: the repository, the workspace binaries under test
//! (built once per test process, with the test's own profile), the ONNX
//! Runtime library, and the directory child logs go to.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (the repository).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

pub(crate) fn log_dir() -> PathBuf {
    let dir = repo_root().join("target").join("e2e-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Path of a workspace binary, built (once per test process) with the same
/// profile as the test itself, so a test never runs a stale binary; or the
/// one in `E2E_BIN_DIR` when that is set.
pub fn binary(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        // Another build's binaries (the bench measures a baseline commit
        // with them): taken as they are, never rebuilt.
        if let Some(dir) = std::env::var_os("E2E_BIN_DIR") {
            return PathBuf::from(dir);
        }
        // Tests run from target/<profile>/deps/<test>-<hash>, examples from
        // target/<profile>/examples/, binaries (the bench) from target/<profile>/.
        let exe = std::env::current_exe().expect("current exe");
        let parent = exe.parent().expect("executable has a directory");
        let profile_dir = if parent.ends_with("deps") || parent.ends_with("examples") {
            parent.parent().map(Path::to_path_buf)
        } else {
            Some(parent.to_path_buf())
        }
        .expect("executable lives in target/<profile>/{deps,examples,}");
        if std::env::var_os("E2E_NO_BUILD").is_none() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(repo_root()).args([
                "build", "--quiet", "-p", "api", "-p", "worker", "-p", "jobctl",
            ]);
            if profile_dir.ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cannot run cargo build");
            assert!(
                status.success(),
                "building the api, worker and jobctl binaries failed"
            );
        }
        profile_dir
    });
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p {name}`",
        path.display()
    );
    path
}

/// The ONNX Runtime library the tests use: `ORT_DYLIB_PATH`, else the copy
/// `scripts/setup` makes.
pub fn ort_lib() -> PathBuf {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".local/onnxruntime/libonnxruntime.so"));
    assert!(
        path.is_file(),
        "ONNX Runtime library {} missing: run scripts/setup",
        path.display()
    );
    path
}
