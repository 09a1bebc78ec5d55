//! The model registry: every version of every model, which one is current,
//! and the model bytes themselves, all in Redis so a worker on another
//! machine needs no shared disk.
//!
//! # Keys (see [`super::keys`])
//!
//! * `{ns}:registry:{model}` (hash): field `seq` is the version counter
//!   (HINCRBY, so versions are 1, 2, 3… per model); field `{n}` is version
//!   `n`'s [`Version`] JSON; field `sig:{n}` is the [`ModelInfo`] JSON of a
//!   version whose signature is known (`ready` versions), copied to
//!   `{ns}:models` when it becomes current; field `sha:{sha256}` names the
//!   first version holding those bytes (seeding looks it up in O(1)).
//! * `{ns}:current` (hash): model → current version number.
//! * `{ns}:registry-epoch` (string): incremented with every change of a
//!   current version, so a worker's periodic check is one GET.
//! * `{ns}:history:{model}` (list): earlier currents, newest first (capped at
//!   [`HISTORY_LEN`]); a promotion pushes the version it replaces, a rollback
//!   pops.
//! * `{ns}:blob:{sha256}` (string): ONNX bytes, content-addressed, so the
//!   same bytes registered twice (two models, or a file that went back to an
//!   older content) are stored once.
//! * `{ns}:events:registry` (pub/sub): a model name whenever its current
//!   version changes; workers reload on it (and re-check every few seconds
//!   in case a message was missed).
//! * `{ns}:blob-refs` (hash): sha256 → how many versions hold those bytes,
//!   kept by the scripts of [`register`], [`settle`] (an invalid version's
//!   bytes are dropped at once, its metadata and error kept) and
//!   [`delete_version`]; a blob whose count reaches 0 is deleted in the same
//!   step. Field `ref:{n}` of the registry hash says that version `n` holds
//!   one of those references, field `count` how many versions the model
//!   has. Blobs stored before the counts existed are left alone until
//!   `jobctl sweep-blobs` has counted them (it sets the field
//!   [`COUNTED`]); a namespace whose first registration finds no current
//!   model and no counts starts counted.
//! * `{ns}:tenant-models:{tenant}` (set): the tenant's model names, when
//!   [`register`] is given a [`Quota`].
//!
//! # Rules
//!
//! * Every write is one Lua script, so two processes can never allocate the
//!   same version number, two workers seeding the same file at once create
//!   one version, and a promotion checks `ready` and moves the pointer in
//!   the same step.
//! * Only a `ready` version can become current. Uploads start `validating`
//!   and a worker settles them `ready` (with their signature) or `invalid`
//!   (with the error) exactly once ([`settle`]).
//! * Seeding from a worker's models directory ([`RegisterMode::Seed`]):
//!   bytes already registered for the model create nothing (a restart is a
//!   no-op, and a rollback is not undone by a restart); new bytes create a
//!   version that becomes current if the model has no current version or
//!   its current version came from a file too. So an edited file rolls out
//!   on restart, but a version an operator promoted from an upload or a
//!   retrain is never replaced by a restart.
//! * [`register`] is the one way in for every source (file, upload,
//!   retrain): a retrain job registers its output with
//!   [`Source::Retrain`], its metrics, and status `ready` once it has
//!   loaded it, then calls [`promote`] if it decides to roll it out.

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::QueueError;
use super::keys::Keys;
use crate::model::ModelInfo;
use crate::tensor::TensorSpec;

/// Earlier current versions remembered for rollback, per model.
pub const HISTORY_LEN: usize = 100;

/// Where a version came from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A worker's `--models-dir`.
    File,
    /// `POST /v1/models/{model}/versions`.
    Upload,
    /// A retrain job.
    Retrain,
}

/// Whether a version may be served.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    /// Stored, waiting for a worker to load it in ONNX Runtime.
    Validating,
    /// Loaded successfully: its signature is known; it may become current.
    Ready,
    /// Validation refused it; it never becomes current.
    Invalid,
    /// A worker died (crashed or ran out of memory) while loading it: no
    /// worker loads it again, and it never becomes current again.
    Quarantined,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Validating => "validating",
            VersionStatus::Ready => "ready",
            VersionStatus::Invalid => "invalid",
            VersionStatus::Quarantined => "quarantined",
        }
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// One version of a model, as stored in `{ns}:registry:{model}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = ModelVersion))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// The hash field is the source of truth; filled in on read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u32,
    /// SHA-256 of the ONNX bytes (hex), naming the blob.
    pub sha256: String,
    pub size: u64,
    pub created_at_ms: i64,
    pub source: Source,
    pub status: VersionStatus,
    /// Why validation failed (`invalid`) or the version was quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The stable code of `error` (e.g. `model_external_data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    /// Training metrics of a retrained version (free-form JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metrics: Option<serde_json::Value>,
    /// A human note: the file a seeded version came from, an upload's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The job that validated or produced the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
}

impl Version {
    /// A new version's description; `inputs`/`outputs` empty until known.
    pub fn new(bytes: &[u8], sha256: &str, source: Source, status: VersionStatus) -> Version {
        Version {
            version: 0,
            sha256: sha256.to_owned(),
            size: bytes.len() as u64,
            created_at_ms: crate::time::now_ms(),
            source,
            status,
            error: None,
            error_code: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            metrics: None,
            note: None,
            job_id: None,
        }
    }

    /// The signature published to `{ns}:models` while this version is
    /// current; `version` there is the version number as text.
    pub fn info(&self, model: &str) -> ModelInfo {
        ModelInfo {
            name: model.to_owned(),
            version: self.version.to_string(),
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            updated_at_ms: crate::time::now_ms(),
        }
    }
}

/// How [`register`] treats bytes it has seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterMode {
    /// A models-dir file: reuse the version holding the same bytes, and
    /// apply the seeding rule for `current` (see the module docs).
    Seed,
    /// Upload or retrain: always a new version, never current by itself.
    Add,
}

/// What [`register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub version: u32,
    /// False when seeding found the bytes already registered.
    pub created: bool,
    /// Whether this call made the version current.
    pub promoted: bool,
}

/// The outcome of [`promote`] or [`rollback`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promotion {
    /// `current` moved from `from` (none for a model's first) to `to`.
    Done { from: Option<u32>, to: u32 },
    /// No such version of this model.
    UnknownVersion,
    /// The version exists but is not `ready`.
    NotReady(VersionStatus),
    /// Rollback with no earlier current version left.
    NothingToRollBack,
}

mod write;
pub use write::*;

/// The field of `{ns}:blob-refs` that says every stored blob is counted, so
/// a count of 0 means the bytes are unreferenced (never a sha256: not hex).
pub const COUNTED: &str = ".counted";

/// Why a version was refused: a stable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: String,
    pub message: String,
}

/// Limits [`register`] enforces in the same step as it adds a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// The tenant's set of model names ([`Keys::tenant_models`]): the
    /// models counted against `max_models`.
    pub tenant_models: String,
    /// Most versions one model may have (deleted ones do not count).
    pub max_versions: Option<u32>,
    /// Most models the tenant may have.
    pub max_models: Option<u32>,
}

/// Which limit of a [`Quota`] a registration would have crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaExceeded {
    Versions { limit: u32 },
    Models { limit: u32 },
}

/// What [`register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Registered(Registered),
    /// Nothing was written.
    QuotaExceeded(QuotaExceeded),
}

impl Registration {
    /// The registration, for callers that passed no quota (where nothing
    /// else can happen).
    pub fn registered(self) -> Result<Registered, QueueError> {
        match self {
            Registration::Registered(r) => Ok(r),
            Registration::QuotaExceeded(q) => Err(QueueError::Corrupt(format!(
                "registration refused for a quota: {q:?}"
            ))),
        }
    }
}

/// The outcome of [`delete_version`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Gone, with its signature and rollback history entries; its bytes
    /// too when no other version holds them.
    Deleted {
        blob_deleted: bool,
    },
    UnknownVersion,
    /// The current version cannot be deleted.
    IsCurrent,
}

/// The registry epoch: changes whenever any current version changes
/// (`None` before the first change, or after Redis lost its data).
pub async fn epoch(conn: &mut impl ConnectionLike, keys: &Keys) -> Result<Option<i64>, QueueError> {
    Ok(redis::cmd("GET")
        .arg(keys.registry_epoch())
        .query_async(conn)
        .await?)
}

/// Every model's current version.
pub async fn currents(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
) -> Result<HashMap<String, u32>, QueueError> {
    let raw: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.current())
        .query_async(conn)
        .await?;
    Ok(raw
        .into_iter()
        .filter_map(|(m, v)| Some((m, v.parse().ok()?)))
        .collect())
}

/// One model's current version.
pub async fn current(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
) -> Result<Option<u32>, QueueError> {
    let raw: Option<String> = redis::cmd("HGET")
        .arg(keys.current())
        .arg(model)
        .query_async(conn)
        .await?;
    Ok(raw.and_then(|v| v.parse().ok()))
}

pub(crate) fn corrupt(what: &str) -> impl Fn(serde_json::Error) -> QueueError + '_ {
    move |e| QueueError::Corrupt(format!("{what}: {e}"))
}

pub(crate) fn parse_version(number: u32, json: &str) -> Result<Version, QueueError> {
    let mut v: Version = serde_json::from_str(json).map_err(corrupt("registry version"))?;
    v.version = number;
    Ok(v)
}

/// One version's description; `None` when the model has no such version.
pub async fn version(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    number: u32,
) -> Result<Option<Version>, QueueError> {
    let raw: Option<String> = redis::cmd("HGET")
        .arg(keys.registry(model))
        .arg(number)
        .query_async(conn)
        .await?;
    raw.map(|json| parse_version(number, &json)).transpose()
}

/// A model's versions, newest first, at most `limit`.
pub async fn versions(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    limit: usize,
) -> Result<Vec<Version>, QueueError> {
    let raw: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.registry(model))
        .query_async(conn)
        .await?;
    let mut out = raw
        .iter()
        .filter_map(|(f, json)| Some((f.parse::<u32>().ok()?, json)))
        .map(|(n, json)| parse_version(n, json))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by_key(|v| std::cmp::Reverse(v.version));
    out.truncate(limit);
    Ok(out)
}

/// The ONNX bytes of a content hash; `None` if they are not stored.
pub async fn blob(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    sha256: &str,
) -> Result<Option<Vec<u8>>, QueueError> {
    Ok(redis::cmd("GET")
        .arg(keys.blob(sha256))
        .query_async(conn)
        .await?)
}
