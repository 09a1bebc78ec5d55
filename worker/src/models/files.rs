//! The `--models-dir` files: checked and loaded at start (a file that fails
//! is skipped), served under their content hash until the registry is read,
//! and seeded into the registry as versions of source `file`, again
//! whenever Redis lost the model's current version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};

use ort::environment::Environment;
use shared::digest::sha256_hex;
use shared::model::valid_internal_model_name;
use shared::queue::registry::{self, RegisterMode, Source, Version, VersionStatus};
use shared::queue::{Keys, QueueError};

use super::{FileModel, ModelStore, Origin, Served, ServedModel, StoreSettings};
use crate::backend::{Backend, OnnxModel, Trust};
use crate::error::WorkerError;
use crate::modelcheck;

impl ModelStore {
    /// Checks and loads every `*.onnx` file of `dir` (sorted). A file that
    /// fails is logged and skipped; the files are served under their content
    /// hash until the first [`ModelStore::reconcile`] replaces them with
    /// registry versions. Blocking: call it off the executor.
    pub fn load_dir(
        env: Environment,
        dir: &Path,
        settings: StoreSettings,
        keys: Keys,
    ) -> Result<ModelStore, WorkerError> {
        let models_dir_err = |source| WorkerError::ModelsDir {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(models_dir_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "onnx") && p.is_file())
            .collect();
        paths.sort();
        let opts = settings.load_options(Trust::Operator);
        let mut files = Vec::new();
        let mut models = Served::new();
        for path in paths {
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if !valid_internal_model_name(name) {
                tracing::error!(path = %path.display(), "skipping model: the file name must be [A-Za-z0-9_.-], optionally after `tenant~`");
                continue;
            }
            let loaded = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    modelcheck::check(&bytes, &settings.check).map_err(|e| e.to_string())?;
                    OnnxModel::load(&env, name, &bytes, &opts).map(|m| (bytes, m))
                });
            match loaded {
                Ok((bytes, model)) => {
                    let info = model.info().clone();
                    tracing::info!(model = name, sha = %info.version, inputs = ?info.inputs, outputs = ?info.outputs, "model file loaded");
                    files.push(FileModel {
                        name: name.to_owned(),
                        file: path
                            .file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        sha256: sha256_hex(&bytes),
                        bytes: Arc::new(bytes),
                        inputs: info.inputs.clone(),
                        outputs: info.outputs.clone(),
                    });
                    models.insert(
                        name.to_owned(),
                        Arc::new(ServedModel {
                            info,
                            source: Origin::File(Arc::new(model)),
                        }),
                    );
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "skipping model that failed to load")
                }
            }
        }
        if models.is_empty() {
            return Err(WorkerError::NoModels(dir.to_path_buf()));
        }
        for d in [&settings.cache_dir, &settings.sandbox.external_data_dir] {
            if let Err(error) = std::fs::create_dir_all(d) {
                tracing::warn!(dir = %d.display(), %error, "cannot create a directory of the model store");
            }
        }
        Ok(ModelStore::new(env, settings, keys, files, models))
    }

    /// Registers the models-dir files not yet seeded by this process, or
    /// whose model lost its current version (a Redis that lost its data).
    pub(super) async fn seed(
        &self,
        conn: &mut shared::redis_conn::Conn,
        currents: &HashMap<String, u32>,
    ) -> Result<bool, QueueError> {
        let mut any = false;
        for f in &self.files {
            let done = self
                .seeded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&f.name);
            if done && currents.contains_key(&f.name) {
                continue;
            }
            let mut v = Version::new(&f.bytes, &f.sha256, Source::File, VersionStatus::Ready);
            v.inputs = f.inputs.clone();
            v.outputs = f.outputs.clone();
            v.note = Some(format!("models dir file {}", f.file));
            let r = registry::register(
                &mut *conn,
                &self.keys,
                &f.name,
                &f.bytes,
                &v,
                RegisterMode::Seed,
                None,
            )
            .await?
            .registered()?;
            tracing::info!(
                model = %f.name,
                version = r.version,
                created = r.created,
                made_current = r.promoted,
                "model file seeded into the registry"
            );
            self.cache_put(&f.sha256, &f.bytes);
            self.seeded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(f.name.clone());
            any = true;
        }
        Ok(any)
    }
}
