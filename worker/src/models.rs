//! Which model versions this worker serves, kept in step with the registry
//! ([`shared::queue::registry`]).
//!
//! * At start the `--models-dir` files are loaded (a file ONNX Runtime
//!   refuses is skipped) and seeded into the registry: new bytes become a new
//!   version (source `file`), made current by the registry's seeding rule.
//! * [`ModelStore::reconcile`] compares the registry's `current` pointers
//!   with the loaded set and loads what differs, off the async executor
//!   (bytes from the disk cache `--model-cache-dir`, keyed by SHA-256, else
//!   from Redis, then cached), then swaps the whole set in one atomic store
//!   ([`ArcSwap`]). It runs on every registry event (pub/sub) and every
//!   [`CHECK_EVERY`] as a safety net ([`watch`]).
//! * A batch takes the set once ([`ModelStore::resolve`]): the jobs hold the
//!   `Arc` of the version they started with, so a swap never changes a
//!   running job's model, and a replaced version is freed when its last job
//!   ends.
//! * Pinned versions (`"model_version": n` in a request) that are not current
//!   are loaded on demand and kept in a small LRU ([`PINNED_CACHE`]).
//! * A worker serves every model that has a current version in its
//!   namespace, not only the files of its own directory, so an uploaded
//!   model needs no file anywhere.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use deadpool_redis::Pool;
use futures::StreamExt;
use ort::environment::Environment;
use sha2::{Digest, Sha256};
use shared::metric_names::{WORKER_MODEL_SWAPS, WORKER_MODELS_LOADED};
use shared::model::valid_internal_model_name;
use shared::queue::registry::{self, RegisterMode, Source, Version, VersionStatus};
use shared::queue::{Keys, QueueError};
use shared::tensor::TensorSpec;
use tokio::sync::watch as tokio_watch;

use crate::backend::{Backend, Models, OnnxModel};
use crate::error::WorkerError;

/// How often the registry is re-read without an event.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Loaded non-current versions kept for pinned requests.
pub const PINNED_CACHE: usize = 4;

/// A models-dir file, kept to seed the registry again if Redis lost it.
struct FileModel {
    name: String,
    file: String,
    bytes: Arc<Vec<u8>>,
    sha256: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

type Pinned = VecDeque<(String, u32, Arc<dyn Backend>)>;

/// The served model set and how to change it.
pub struct ModelStore {
    env: Environment,
    intra_threads: usize,
    cache_dir: PathBuf,
    keys: Keys,
    files: Vec<FileModel>,
    current: ArcSwap<Models>,
    pinned: Mutex<Pinned>,
    /// File models this process has registered (each once per start, and
    /// again if the registry lost its current version).
    seeded: Mutex<HashSet<String>>,
    /// One reconcile at a time: the watcher and the safety-net check must
    /// not load the same version twice.
    reconciling: tokio::sync::Mutex<Option<Option<i64>>>,
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ModelStore {
    /// Loads every `*.onnx` file of `dir` (sorted). A file that fails to
    /// load is logged and skipped; the files are served under their content
    /// hash until the first [`ModelStore::reconcile`] replaces them with
    /// registry versions. Blocking: call it off the executor.
    pub fn load_dir(
        env: Environment,
        dir: &Path,
        intra_threads: usize,
        cache_dir: PathBuf,
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
        let mut files = Vec::new();
        let mut models = Models::new();
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
                    OnnxModel::load(&env, name, &bytes, intra_threads).map(|m| (bytes, m))
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
                        inputs: info.inputs,
                        outputs: info.outputs,
                    });
                    models.insert(name.to_owned(), Arc::new(model));
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "skipping model that failed to load")
                }
            }
        }
        if models.is_empty() {
            return Err(WorkerError::NoModels(dir.to_path_buf()));
        }
        if let Err(error) = std::fs::create_dir_all(&cache_dir) {
            tracing::warn!(dir = %cache_dir.display(), %error, "cannot create the model cache dir; loading from redis every time");
        }
        Ok(ModelStore {
            env,
            intra_threads,
            cache_dir,
            keys,
            files,
            current: ArcSwap::from_pointee(models),
            pinned: Mutex::new(VecDeque::new()),
            seeded: Mutex::new(HashSet::new()),
            reconciling: tokio::sync::Mutex::new(None),
        })
    }

    /// The current set, as of now. Holding it keeps its versions alive.
    pub fn snapshot(&self) -> Arc<Models> {
        self.current.load_full()
    }

    /// Names of the served models, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.current.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// Registers the models-dir files not yet seeded by this process, or
    /// whose model lost its current version (a Redis that lost its data).
    async fn seed(
        &self,
        conn: &mut deadpool_redis::Connection,
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
            )
            .await?;
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

    /// Brings the served set in line with the registry: seeds files, loads
    /// every current version not loaded yet and swaps the set atomically.
    /// A version that cannot be loaded is logged and the model keeps its
    /// previous version. Returns whether the set of model names changed.
    pub async fn reconcile(&self, pool: &Pool) -> Result<bool, QueueError> {
        // Holds the epoch of the last complete reconcile.
        let mut seen = self.reconciling.lock().await;
        let mut conn = pool.get().await?;
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
        let (names_changed, complete) = self.swap_to(&mut conn, &currents).await;
        // A version that failed to load is tried again on the next check.
        if complete {
            *seen = Some(epoch);
        }
        Ok(names_changed)
    }

    /// Loads what differs from `currents` and swaps the set. Returns
    /// whether the model names changed and whether every version loaded.
    async fn swap_to(
        &self,
        conn: &mut deadpool_redis::Connection,
        currents: &HashMap<String, u32>,
    ) -> (bool, bool) {
        let mut complete = true;
        let now = self.current.load_full();
        let mut next = Models::new();
        let mut swapped = Vec::new();
        for (model, &number) in currents {
            if !valid_internal_model_name(model) {
                continue;
            }
            let label = number.to_string();
            if let Some(m) = now.get(model)
                && m.info().version == label
            {
                next.insert(model.clone(), Arc::clone(m));
                continue;
            }
            match self.load(conn, model, number).await {
                Ok(m) => {
                    next.insert(model.clone(), m);
                    // A file served under its content hash before the
                    // registry was reachable is not a swap, only a relabel.
                    let from = now
                        .get(model)
                        .map(|m| m.info().version.clone())
                        .filter(|v| v.parse::<u32>().is_ok());
                    swapped.push((model.clone(), from));
                }
                Err(error) => {
                    complete = false;
                    tracing::error!(model, version = number, %error, "cannot load the current version; keeping the loaded one");
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
        let loaded = next.len();
        self.current.store(Arc::new(next));
        metrics::gauge!(WORKER_MODELS_LOADED).set(loaded as f64);
        for (model, from) in swapped {
            let to = currents.get(&model).copied().unwrap_or_default();
            match from {
                Some(from) => {
                    metrics::counter!(WORKER_MODEL_SWAPS, "model" => model.clone()).increment(1);
                    tracing::info!(model, from = %from, to, "model version swapped");
                }
                None => {
                    metrics::counter!(WORKER_MODEL_SWAPS, "model" => model.clone()).absolute(0);
                    tracing::info!(model, version = to, "model version loaded");
                }
            }
        }
        (names_changed, complete)
    }

    /// Loads version `number` of `model` (which must be `ready`).
    async fn load(
        &self,
        conn: &mut deadpool_redis::Connection,
        model: &str,
        number: u32,
    ) -> Result<Arc<dyn Backend>, LoadError> {
        let v = registry::version(&mut **conn, &self.keys, model, number)
            .await?
            .ok_or(LoadError::Unknown)?;
        if v.status != VersionStatus::Ready {
            return Err(LoadError::NotReady(v.status));
        }
        let bytes = match self.cache_get(&v.sha256) {
            Some(b) => b,
            None => {
                let b = registry::blob(&mut **conn, &self.keys, &v.sha256)
                    .await?
                    .ok_or(LoadError::BlobMissing)?;
                if sha256_hex(&b) != v.sha256 {
                    return Err(LoadError::BlobMissing);
                }
                self.cache_put(&v.sha256, &b);
                b
            }
        };
        let env = self.env.clone();
        let intra = self.intra_threads;
        let name = model.to_owned();
        let model = tokio::task::spawn_blocking(move || {
            OnnxModel::load(&env, &name, &bytes, intra).map(|m| m.with_version(number))
        })
        .await
        .map_err(|e| LoadError::Onnx(e.to_string()))?
        .map_err(LoadError::Onnx)?;
        Ok(Arc::new(model))
    }

    /// Loads bytes in ONNX Runtime as a model that is not served (yet): a
    /// retrain job's output, to validate and score it. Blocking.
    pub fn load_unserved(&self, model: &str, bytes: &[u8]) -> Result<OnnxModel, String> {
        OnnxModel::load(&self.env, model, bytes, self.intra_threads)
    }

    /// Loads bytes in ONNX Runtime to validate them: their signature, or why
    /// ONNX Runtime refused them. Blocking.
    pub fn check(
        &self,
        model: &str,
        bytes: &[u8],
    ) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), String> {
        OnnxModel::load(&self.env, model, bytes, 1).map(|m| {
            let info = m.info();
            (info.inputs.clone(), info.outputs.clone())
        })
    }

    /// The model each job runs on: its pinned version, else the current
    /// version from one snapshot. `Err` when a pinned version cannot be
    /// served (unknown, not ready, unloadable); `Ok(None)` when the model
    /// is not served at all.
    pub async fn resolve(
        &self,
        pool: &Pool,
        model: &str,
        pinned: Option<u32>,
        snapshot: &Models,
    ) -> Result<Option<Arc<dyn Backend>>, LoadError> {
        let current = snapshot.get(model);
        let Some(number) = pinned else {
            return Ok(current.cloned());
        };
        if let Some(m) = current
            && m.info().version == number.to_string()
        {
            return Ok(Some(Arc::clone(m)));
        }
        {
            let mut cache = self.pinned.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = cache
                .iter()
                .position(|(m, n, _)| m == model && *n == number)
                && let Some(hit) = cache.remove(i)
            {
                let m = Arc::clone(&hit.2);
                cache.push_back(hit);
                return Ok(Some(m));
            }
        }
        let mut conn = pool.get().await.map_err(QueueError::from)?;
        let loaded = self.load(&mut conn, model, number).await?;
        let mut cache = self.pinned.lock().unwrap_or_else(PoisonError::into_inner);
        cache.push_back((model.to_owned(), number, Arc::clone(&loaded)));
        while cache.len() > PINNED_CACHE {
            cache.pop_front();
        }
        Ok(Some(loaded))
    }

    /// The bytes of a version, for validation.
    pub async fn bytes(&self, pool: &Pool, sha256: &str) -> Result<Vec<u8>, LoadError> {
        if let Some(b) = self.cache_get(sha256) {
            return Ok(b);
        }
        let mut conn = pool.get().await.map_err(QueueError::from)?;
        registry::blob(&mut conn, &self.keys, sha256)
            .await?
            .ok_or(LoadError::BlobMissing)
    }

    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        // The hash names a file: accept hex only.
        (sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.cache_dir.join(format!("{sha256}.onnx")))
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
    #[error("onnx runtime cannot load the version: {0}")]
    Onnx(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Keeps the served set in line with the registry until `stop`: reconciles
/// on every message of the registry channel and every [`CHECK_EVERY`].
/// `on_names_changed` runs after a reconcile that added a model (new
/// streams to read).
pub async fn watch<F>(
    store: Arc<ModelStore>,
    pool: Pool,
    redis_url: String,
    channel: String,
    on_names_changed: F,
    mut stop: tokio_watch::Receiver<bool>,
) where
    F: Fn() + Send + Sync,
{
    // The sink is kept with the stream: the subscription lives as long as
    // both halves.
    let mut subscription: Option<(redis::aio::PubSubSink, redis::aio::PubSubStream)> = None;
    let mut next_check = tokio::time::Instant::now();
    loop {
        if subscription.is_none() {
            subscription = subscribe(&redis_url, &channel).await;
        }
        let event = async {
            match subscription.as_mut() {
                Some((_, s)) => s.next().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        let woke_by_event = tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep_until(next_check) => false,
            got = event => {
                if got.is_none() {
                    // The connection dropped: subscribe again next round.
                    subscription = None;
                }
                got.is_some()
            }
        };
        if woke_by_event || tokio::time::Instant::now() >= next_check {
            next_check = tokio::time::Instant::now() + CHECK_EVERY;
            match store.reconcile(&pool).await {
                Ok(true) => on_names_changed(),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "cannot check the model registry"),
            }
        }
    }
}

async fn subscribe(
    url: &str,
    channel: &str,
) -> Option<(redis::aio::PubSubSink, redis::aio::PubSubStream)> {
    let res = async {
        let client = redis::Client::open(url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub.split())
    };
    match tokio::time::timeout(Duration::from_secs(2), res).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(error)) => {
            tracing::debug!(%error, "cannot subscribe to registry events; relying on the periodic check");
            None
        }
        Err(_) => None,
    }
}

/// Runs a `validate` job: loads the version's bytes in ONNX Runtime and
/// settles the version `ready` (with its signature) or `invalid`. Returns
/// the version label and the job's result JSON or failure (`invalid_model`
/// for bytes ONNX Runtime refuses). A redelivered job whose version is
/// already settled reports that outcome again without loading anything.
pub async fn validate_job(
    store: &Arc<ModelStore>,
    pool: &Pool,
    job: &shared::queue::wire::JobEnvelope,
) -> (String, Result<String, crate::JobFailure>) {
    use crate::JobFailure;
    let Some(number) = job.model_version else {
        return (
            String::new(),
            Err(JobFailure::InvalidPayload(
                "a validate job must name a model_version".to_owned(),
            )),
        );
    };
    let label = number.to_string();
    let unavailable = |e: &dyn std::fmt::Display| {
        JobFailure::ModelUnavailable(format!("{} (registry unavailable: {e})", job.model))
    };
    let meta = async {
        let mut conn = pool.get().await?;
        registry::version(&mut conn, &store.keys, &job.model, number).await
    }
    .await;
    let v = match meta {
        Ok(Some(v)) => v,
        Ok(None) => {
            return (
                label,
                Err(JobFailure::InvalidPayload(format!(
                    "model {} has no version {number}",
                    job.model
                ))),
            );
        }
        Err(e) => return (label, Err(unavailable(&e))),
    };
    let checked = match v.status {
        VersionStatus::Ready => Ok((v.inputs.clone(), v.outputs.clone())),
        VersionStatus::Invalid => Err(v.error.clone().unwrap_or_default()),
        VersionStatus::Validating => {
            let bytes = match store.bytes(pool, &v.sha256).await {
                Ok(b) => b,
                Err(LoadError::Queue(e)) => return (label, Err(unavailable(&e))),
                Err(e) => return (label, Err(JobFailure::InvalidModel(e.to_string()))),
            };
            let s = Arc::clone(store);
            let model = job.model.clone();
            let sha = v.sha256.clone();
            let checked = tokio::task::spawn_blocking(move || {
                if sha256_hex(&bytes) != sha {
                    return Err("the stored bytes do not match the version's hash".to_owned());
                }
                let res = s.check(&model, &bytes);
                if res.is_ok() {
                    s.cache_put(&sha, &bytes);
                }
                res
            })
            .await
            .unwrap_or_else(|e| Err(format!("validation panicked: {e}")));
            let mut settled = v.clone();
            settled.job_id = Some(job.id);
            let res = async {
                let mut conn = pool.get().await?;
                registry::settle(&mut conn, &store.keys, &job.model, settled, checked.clone()).await
            }
            .await;
            if let Err(e) = res {
                return (label, Err(unavailable(&e)));
            }
            checked
        }
    };
    match checked {
        Ok((inputs, outputs)) => {
            tracing::info!(model = %job.model, version = number, "model version validated: ready");
            let result = serde_json::json!({
                "model_version": number,
                "status": VersionStatus::Ready.as_str(),
                "sha256": v.sha256,
                "inputs": inputs,
                "outputs": outputs,
            });
            (label, Ok(result.to_string()))
        }
        Err(error) => {
            tracing::warn!(model = %job.model, version = number, %error, "model version is invalid");
            (label, Err(JobFailure::InvalidModel(error)))
        }
    }
}
