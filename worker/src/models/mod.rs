//! Which model versions this worker serves, kept in step with the registry
//! ([`shared::queue::registry`]), and which of them are loaded.
//!
//! * At start the `--models-dir` files are checked and loaded (a file that
//!   fails is skipped) and seeded into the registry: new bytes become a new
//!   version (source `file`), made current by the registry's seeding rule.
//! * **Served is not loaded.** The served set ([`Served`], swapped
//!   atomically with [`ArcSwap`]) holds every current version's signature,
//!   so the worker reads every served model's stream and publishes every
//!   signature. Sessions live in a bounded LRU ([`lru`]): past
//!   `--max-loaded-models` or `--max-loaded-model-bytes` the least recently
//!   used versions are unloaded, and a job for an unloaded version loads it
//!   again ([`ModelStore::resolve`]; deduplicated, off the executor). A
//!   batch holds the `Arc` of the session it runs on, so eviction never
//!   breaks a running job.
//! * [`ModelStore::reconcile`] compares the registry's `current` pointers
//!   with the served set, warms the new versions (loading them while the
//!   LRU has room, so a promotion costs the first job nothing) and swaps.
//!   It runs on every registry event and every [`CHECK_EVERY`] ([`watch`]).
//! * Loading a registry version ([`loading`]) runs the static checks and
//!   builds the session by the version's trust (no constant folding for
//!   uploads and retrains), under a load marker ([`quarantine`]).
//! * `validate` jobs ([`validate`]) check uploads in a child process.
//!
//! Submodules: [`files`] (the models-dir files: loaded at start, seeded
//! into the registry), [`lru`] (the loaded set), [`loading`] (bytes → session),
//! [`quarantine`] (load markers, stale ones quarantined), [`validate`]
//! (`validate` jobs), [`watch`] (registry events).

mod files;
pub mod loading;
pub mod lru;
pub mod quarantine;
pub mod validate;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use ort::environment::Environment;
use shared::metric_names::{WORKER_MODEL_SWAPS, WORKER_MODELS_LOADED};
use shared::model::{ModelInfo, valid_internal_model_name};
use shared::queue::registry::{self, Source, VersionStatus};
use shared::queue::{Keys, QueueError};
use shared::redis_conn::Pool;
use shared::tensor::TensorSpec;

use crate::backend::{Backend, LoadOptions, Trust};
use crate::modelcheck;
use crate::sandbox::SandboxConfig;

pub use validate::validate_job;
pub use watch::watch;

/// How often the registry is re-read without an event.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// A models-dir file, kept to seed the registry again if Redis lost it.
struct FileModel {
    name: String,
    file: String,
    bytes: Arc<Vec<u8>>,
    sha256: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

/// One served model: what the worker publishes and where its session
/// comes from.
pub struct ServedModel {
    info: ModelInfo,
    source: Origin,
}

enum Origin {
    /// A models-dir file served before the registry was reachable, under
    /// its content hash: always loaded.
    File(Arc<dyn Backend>),
    /// Registry version `number`: loaded on demand through the LRU.
    Registry { number: u32 },
}

impl ServedModel {
    /// The signature published for the model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn number(&self) -> Option<u32> {
        match self.source {
            Origin::Registry { number } => Some(number),
            Origin::File(_) => None,
        }
    }
}

/// The served set: model name → its current version.
pub type Served = HashMap<String, Arc<ServedModel>>;

/// What the store is configured with.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub intra_threads: usize,
    pub cache_dir: PathBuf,
    /// This worker's consumer name: the field of its load markers.
    pub consumer: String,
    pub check: modelcheck::Limits,
    pub sandbox: SandboxConfig,
    pub max_loaded_models: usize,
    pub max_loaded_bytes: u64,
    /// A load marker older than this means its worker died mid-load.
    pub load_stale: Duration,
}

/// The served model set and how to change it.
pub struct ModelStore {
    env: Environment,
    settings: StoreSettings,
    keys: Keys,
    files: Vec<FileModel>,
    current: ArcSwap<Served>,
    loaded: lru::Loaded,
    /// File models this process has registered (each once per start, and
    /// again if the registry lost its current version).
    seeded: Mutex<HashSet<String>>,
    /// One reconcile at a time: the watcher and the safety-net check must
    /// not load the same version twice.
    reconciling: tokio::sync::Mutex<Option<Option<i64>>>,
}

// The one digest the registry names versions and blobs by; re-exported for
// the loaders here and the retrain job.
use shared::digest::sha256_hex;

/// The trust a registry version is loaded with.
pub fn trust_of(source: Source) -> Trust {
    match source {
        Source::File => Trust::Operator,
        Source::Upload | Source::Retrain => Trust::Tenant,
    }
}

impl ModelStore {
    /// A store serving `models` (each under its signature's name) the way
    /// models-dir files are served before the registry is read: never
    /// seeded, and replaced only by a [`ModelStore::reconcile`]. For running
    /// the consumer in-process on backends of one's own (its tests).
    pub fn serving(
        env: Environment,
        settings: StoreSettings,
        keys: Keys,
        models: Vec<Arc<dyn Backend>>,
    ) -> ModelStore {
        let served = models
            .into_iter()
            .map(|m| {
                let info = m.info().clone();
                let model = ServedModel {
                    info: info.clone(),
                    source: Origin::File(m),
                };
                (info.name, Arc::new(model))
            })
            .collect();
        ModelStore::new(env, settings, keys, Vec::new(), served)
    }

    fn new(
        env: Environment,
        settings: StoreSettings,
        keys: Keys,
        files: Vec<FileModel>,
        served: Served,
    ) -> ModelStore {
        let loaded = lru::Loaded::new(settings.max_loaded_models, settings.max_loaded_bytes);
        ModelStore {
            env,
            settings,
            keys,
            files,
            current: ArcSwap::from_pointee(served),
            loaded,
            seeded: Mutex::new(HashSet::new()),
            reconciling: tokio::sync::Mutex::new(None),
        }
    }

    /// The current set, as of now.
    pub fn snapshot(&self) -> Arc<Served> {
        self.current.load_full()
    }

    /// Names of the served models, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.current.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// Registry versions loaded in ONNX Runtime now (files excluded).
    pub fn loaded_versions(&self) -> usize {
        self.loaded.len()
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Brings the served set in line with the registry: seeds files, warms
    /// and swaps in every current version not served yet. A version that
    /// cannot be served is logged and the model keeps its previous version.
    /// Returns whether the set of model names changed.
    pub async fn reconcile(&self, pool: &Pool) -> Result<bool, QueueError> {
        // Holds the epoch of the last complete reconcile.
        let mut seen = self.reconciling.lock().await;
        let mut conn = pool.get();
        // Read before the pointers: a change after this read bumps the
        // epoch again and is picked up next time.
        let epoch = registry::epoch(&mut conn, &self.keys).await?;
        let all_seeded = {
            let seeded = self.seeded.lock().unwrap_or_else(PoisonError::into_inner);
            self.files.iter().all(|f| seeded.contains(&f.name))
        };
        if *seen == Some(epoch) && epoch.is_some() && all_seeded {
            return Ok(false);
        }
        let mut currents = registry::currents(&mut conn, &self.keys).await?;
        if self.seed(&mut conn, &currents).await? {
            for f in &self.files {
                if let Some(v) = registry::current(&mut conn, &self.keys, &f.name).await? {
                    currents.insert(f.name.clone(), v);
                }
            }
        }
        drop(conn);
        let (names_changed, complete) = self.swap_to(pool, &currents).await;
        // A version that failed to load is tried again on the next check.
        if complete {
            *seen = Some(epoch);
        }
        Ok(names_changed)
    }

    /// Serves `currents`. Returns whether the model names changed and
    /// whether every version could be served.
    async fn swap_to(&self, pool: &Pool, currents: &HashMap<String, u32>) -> (bool, bool) {
        let mut complete = true;
        let now = self.current.load_full();
        let mut next = Served::new();
        let mut swapped = Vec::new();
        for (model, &number) in currents {
            if !valid_internal_model_name(model) {
                continue;
            }
            if let Some(m) = now.get(model)
                && m.number() == Some(number)
            {
                next.insert(model.clone(), Arc::clone(m));
                continue;
            }
            match self.prepare(pool, model, number).await {
                Ok(served) => {
                    next.insert(model.clone(), Arc::new(served));
                    // A file served under its content hash before the
                    // registry was reachable is not a swap, only a relabel.
                    let from = now.get(model).and_then(|m| m.number());
                    swapped.push((model.clone(), from));
                }
                Err(error) => {
                    complete = false;
                    tracing::error!(model, version = number, %error, "cannot serve the current version; keeping the served one");
                }
            }
        }
        // Models without a current version (a Redis that lost its data,
        // until re-seeded) keep being served as they are.
        for (model, m) in now.iter() {
            next.entry(model.clone()).or_insert_with(|| Arc::clone(m));
        }
        if swapped.is_empty() {
            return (false, complete);
        }
        let names_changed = next.len() != now.len() || next.keys().any(|k| !now.contains_key(k));
        let served = next.len();
        self.current.store(Arc::new(next));
        metrics::gauge!(WORKER_MODELS_LOADED).set(served as f64);
        for (model, from) in swapped {
            let to = currents.get(&model).copied().unwrap_or_default();
            match from {
                Some(from) => {
                    metrics::counter!(WORKER_MODEL_SWAPS, "model" => model.clone()).increment(1);
                    tracing::info!(model, from, to, "model version swapped");
                }
                None => {
                    metrics::counter!(WORKER_MODEL_SWAPS, "model" => model.clone()).absolute(0);
                    tracing::info!(model, version = to, "model version loaded");
                }
            }
        }
        (names_changed, complete)
    }

    /// A current version ready to be served: its signature from the
    /// registry, and its session loaded now if the LRU has room (so the
    /// first job after a promotion does not wait for it).
    async fn prepare(
        &self,
        pool: &Pool,
        model: &str,
        number: u32,
    ) -> Result<ServedModel, LoadError> {
        let v = {
            let mut conn = pool.get();
            registry::version(&mut conn, &self.keys, model, number)
                .await?
                .ok_or(LoadError::Unknown)?
        };
        if v.status != VersionStatus::Ready {
            return Err(LoadError::NotReady(v.status));
        }
        if self.loaded.has_room(lru::estimate(v.size)) {
            self.get_loaded(pool, model, number).await?;
        }
        Ok(ServedModel {
            info: v.info(model),
            source: Origin::Registry { number },
        })
    }

    /// The session of `model` version `number`: from the LRU, else loaded
    /// (one load per version at a time, whoever asks).
    async fn get_loaded(
        &self,
        pool: &Pool,
        model: &str,
        number: u32,
    ) -> Result<Arc<dyn Backend>, LoadError> {
        if let Some(m) = self.loaded.get(model, number) {
            return Ok(m);
        }
        let gate = self.loaded.gate(model, number);
        let _held = gate.lock().await;
        if let Some(m) = self.loaded.get(model, number) {
            return Ok(m);
        }
        let (m, size) = loading::load(self, pool, model, number).await?;
        for (model, number) in self.loaded.insert(model, number, Arc::clone(&m), size) {
            tracing::info!(
                model,
                version = number,
                "model version unloaded (least recently used)"
            );
        }
        Ok(m)
    }

    /// The model each job runs on: its pinned version, else the current
    /// version from one snapshot. `Err` when a pinned version cannot be
    /// served (unknown, not ready, unloadable); `Ok(None)` when the model
    /// is not served, or its current version cannot be loaded here now
    /// (a transient failure: another worker may serve it).
    pub async fn resolve(
        &self,
        pool: &Pool,
        model: &str,
        pinned: Option<u32>,
        snapshot: &Served,
    ) -> Result<Option<Arc<dyn Backend>>, LoadError> {
        let current = snapshot.get(model);
        let number = match (pinned, current) {
            (None, None) => return Ok(None),
            (None, Some(m)) => match &m.source {
                Origin::File(b) => return Ok(Some(Arc::clone(b))),
                Origin::Registry { number } => {
                    return match self.get_loaded(pool, model, *number).await {
                        Ok(m) => Ok(Some(m)),
                        Err(LoadError::Queue(e)) => Err(LoadError::Queue(e)),
                        Err(error) => {
                            tracing::error!(model, version = number, %error, "cannot load the current version");
                            Ok(None)
                        }
                    };
                }
            },
            (Some(n), _) => n,
        };
        self.get_loaded(pool, model, number).await.map(Some)
    }
}

impl StoreSettings {
    /// How sessions of models of `trust` are built.
    pub fn load_options(&self, trust: Trust) -> LoadOptions {
        LoadOptions {
            trust,
            intra_threads: self.intra_threads,
            external_data_dir: self.sandbox.external_data_dir.clone(),
        }
    }
}

/// Why a version could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no such version")]
    Unknown,
    #[error("the version is {}", .0.as_str())]
    NotReady(VersionStatus),
    #[error("the model bytes are missing from redis")]
    BlobMissing,
    #[error("the version cannot be loaded: {0}")]
    Refused(crate::JobFailure),
    #[error(transparent)]
    Queue(#[from] QueueError),
}
