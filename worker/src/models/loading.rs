//! Bytes to a session: what this module owns is every way model bytes
//! reach ONNX Runtime inside the worker's own process, each one behind the
//! static checks ([`crate::modelcheck`]) and with the version's trust
//! ([`super::trust_of`]): registry versions (under a load marker,
//! [`super::quarantine`]), retrain outputs, and the child-process
//! validation of untrusted bytes ([`crate::sandbox`]); and the on-disk
//! cache of model bytes (`--model-cache-dir`, by SHA-256).

use std::path::PathBuf;
use std::sync::Arc;

use shared::queue::registry::{self, VersionStatus};
use shared::redis_conn::Pool;

use super::{LoadError, ModelStore, quarantine, sha256_hex, trust_of};
use crate::backend::{Backend, OnnxModel, Trust};
use crate::error::JobFailure;
use crate::modelcheck;
use crate::sandbox::{self, Signature};

/// Loads version `number` of `model` (which must be `ready`); returns the
/// session and the size of its ONNX bytes.
pub(super) async fn load(
    store: &ModelStore,
    pool: &Pool,
    model: &str,
    number: u32,
) -> Result<(Arc<dyn Backend>, u64), LoadError> {
    let v = {
        let mut conn = pool.get();
        registry::version(&mut conn, &store.keys, model, number)
            .await?
            .ok_or(LoadError::Unknown)?
    };
    if v.status != VersionStatus::Ready {
        return Err(LoadError::NotReady(v.status));
    }
    // Everything from reading the bytes to the built session is under the
    // marker: a worker that dies anywhere in there quarantines the version.
    quarantine::guarded(store, pool, model, number, async {
        let bytes = match store.cache_get(&v.sha256) {
            Some(b) => b,
            None => {
                let mut conn = pool.get();
                let b = registry::blob(&mut conn, &store.keys, &v.sha256)
                    .await?
                    .ok_or(LoadError::BlobMissing)?;
                if sha256_hex(&b) != v.sha256 {
                    return Err(LoadError::BlobMissing);
                }
                store.cache_put(&v.sha256, &b);
                b
            }
        };
        let env = store.env.clone();
        let opts = store.settings.load_options(trust_of(v.source));
        let limits = store.settings.check;
        let name = model.to_owned();
        let size = bytes.len() as u64;
        let loaded = tokio::task::spawn_blocking(move || {
            modelcheck::check(&bytes, &limits)?;
            OnnxModel::load(&env, &name, &bytes, &opts)
                .map(|m| m.with_version(number))
                .map_err(JobFailure::InvalidModel)
        })
        .await
        .map_err(|e| {
            LoadError::Refused(JobFailure::InvalidModel(format!("the load panicked: {e}")))
        })?
        .map_err(LoadError::Refused)?;
        Ok((Arc::new(loaded) as Arc<dyn Backend>, size))
    })
    .await
}

impl ModelStore {
    /// Loads bytes in ONNX Runtime as a model that is not served (yet): a
    /// retrain job's output, to score it. Checked, and built as untrusted.
    /// Blocking.
    pub fn load_unserved(&self, model: &str, bytes: &[u8]) -> Result<OnnxModel, JobFailure> {
        modelcheck::check(bytes, &self.settings.check)?;
        OnnxModel::load(
            &self.env,
            model,
            bytes,
            &self.settings.load_options(Trust::Tenant),
        )
        .map_err(JobFailure::InvalidModel)
    }

    /// Validates untrusted bytes in a child process (see
    /// [`crate::sandbox`]): their signature, or why they are refused.
    /// Blocking.
    pub fn validate_untrusted(&self, bytes: &[u8]) -> Result<Signature, JobFailure> {
        sandbox::validate(bytes, &self.settings.sandbox)
    }

    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        // The hash names a file: accept hex only.
        (sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.settings.cache_dir.join(format!("{sha256}.onnx")))
    }

    /// Cached bytes whose hash still matches (a damaged file is ignored and
    /// fetched again).
    fn cache_get(&self, sha256: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.cache_path(sha256)?).ok()?;
        (sha256_hex(&bytes) == sha256).then_some(bytes)
    }

    /// Best effort: a cache that cannot be written costs a Redis read later.
    pub(crate) fn cache_put(&self, sha256: &str, bytes: &[u8]) {
        let Some(path) = self.cache_path(sha256) else {
            return;
        };
        if path.is_file() {
            return;
        }
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let res = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(error) = res {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(path = %path.display(), %error, "cannot write the model cache");
        }
    }

    /// The bytes of a version, for validation.
    pub async fn bytes(&self, pool: &Pool, sha256: &str) -> Result<Vec<u8>, LoadError> {
        if let Some(b) = self.cache_get(sha256) {
            return Ok(b);
        }
        let mut conn = pool.get();
        registry::blob(&mut conn, &self.keys, sha256)
            .await?
            .ok_or(LoadError::BlobMissing)
    }
}
