//! What tests with several tenants need: an API keys file written for the
//! test (digests only, as operators write it) and removed afterwards, and
//! the registry routes tests drive (upload, promote, a version's entry).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Client, Reply};

/// A keys file: `(tenant, key)` pairs, stored as `tenant sha256(key)`.
pub struct KeysFile {
    pub path: PathBuf,
}

impl KeysFile {
    pub fn new(tenants: &[(&str, &str)]) -> KeysFile {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "e2e-keys-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let lines: String = tenants
            .iter()
            .map(|(tenant, key)| format!("{tenant} {}\n", digest(key)))
            .collect();
        std::fs::write(&path, format!("# tenant  sha256 of the key\n{lines}"))
            .expect("write keys file");
        KeysFile { path }
    }

    /// The value of `--api-keys-file`.
    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for KeysFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Hex SHA-256 of a key, as the keys file holds it.
pub fn digest(key: &str) -> String {
    shared::digest::sha256_hex(key)
}

impl Client {
    /// Version `version` of `model` as `GET /v1/models/{model}/versions`
    /// lists it.
    pub async fn version(&self, model: &str, version: u32) -> serde_json::Value {
        let r = self.get(&format!("/v1/models/{model}/versions")).await;
        assert_eq!(r.status, reqwest::StatusCode::OK, "{}", r.text);
        r.json["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .find(|v| v["version"] == version)
            .cloned()
            .unwrap_or_else(|| panic!("no version {version}: {}", r.text))
    }

    /// `POST /v1/models/{model}/promote` to `version`.
    pub async fn promote(&self, model: &str, version: u32) -> Reply {
        self.send(
            self.http
                .post(format!("{}/v1/models/{model}/promote", self.base))
                .json(&serde_json::json!({ "version": version })),
        )
        .await
    }

    /// `POST /v1/models/{model}/versions` with `bytes` as the ONNX file.
    pub async fn upload_version(&self, model: &str, bytes: Vec<u8>) -> Reply {
        self.post_raw(
            &format!("/v1/models/{model}/versions"),
            Some("application/octet-stream"),
            bytes,
        )
        .await
    }
}
