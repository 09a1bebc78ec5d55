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
use std::sync::LazyLock;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    /// Stored, waiting for a worker to load it in ONNX Runtime.
    Validating,
    /// Loaded successfully: its signature is known; it may become current.
    Ready,
    /// ONNX Runtime refused it; it never becomes current.
    Invalid,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Validating => "validating",
            VersionStatus::Ready => "ready",
            VersionStatus::Invalid => "invalid",
        }
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// One version of a model, as stored in `{ns}:registry:{model}`.
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
    /// Why validation failed (`invalid` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    /// Training metrics of a retrained version (free-form JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

// Moves `current` to version `v` (ARGV[3] is the model), writes its
// signature to the models hash, bumps the epoch and tells APIs and workers.
// KEYS: registry, current, models, history, epoch. ARGV[1]/[2]: models and
// registry channels; ARGV[4]: history length.
const SET_CURRENT: &str = r#"
local function set_current(v, remember)
  local model = ARGV[3]
  local prev = redis.call('HGET', KEYS[2], model)
  if prev == v then return prev end
  if prev and remember then
    redis.call('LPUSH', KEYS[4], prev)
    redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
  end
  redis.call('HSET', KEYS[2], model, v)
  redis.call('INCR', KEYS[5])
  local sig = redis.call('HGET', KEYS[1], 'sig:' .. v)
  if sig then
    redis.call('HSET', KEYS[3], model, sig)
    redis.call('PUBLISH', ARGV[1], model)
  end
  redis.call('PUBLISH', ARGV[2], model)
  return prev
end
local function meta(v)
  local raw = redis.call('HGET', KEYS[1], v)
  if not raw then return nil end
  local ok, m = pcall(cjson.decode, raw)
  if ok then return m end
  return nil
end
local function sig_for(v, sig)
  return (string.gsub(sig, '"@V@"', '"' .. v .. '"', 1))
end
"#;

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{SET_CURRENT}\n{body}"))
}

/// KEYS: registry, current, models, history, epoch, blob.
/// ARGV: 1-4 as [`SET_CURRENT`], 5 sha256, 6 version JSON, 7 signature JSON
/// ('' = unknown yet), 8 mode (`seed` | `add`), 9 bytes.
static REGISTER: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local sha_field = 'sha:' .. ARGV[5]
if ARGV[8] == 'seed' then
  local known = redis.call('HGET', KEYS[1], sha_field)
  local m = known and meta(known)
  if m then
    if m.status == 'ready' and not redis.call('HGET', KEYS[2], ARGV[3]) then
      set_current(known, true)
      return {known, 0, 1}
    end
    return {known, 0, 0}
  end
end
redis.call('SET', KEYS[6], ARGV[9], 'NX')
local v = tostring(redis.call('HINCRBY', KEYS[1], 'seq', 1))
redis.call('HSET', KEYS[1], v, ARGV[6])
redis.call('HSETNX', KEYS[1], sha_field, v)
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'sig:' .. v, sig_for(v, ARGV[7])) end
local promoted = 0
if ARGV[8] == 'seed' then
  local cur = redis.call('HGET', KEYS[2], ARGV[3])
  local take = not cur
  if cur then
    local m = meta(cur)
    take = (not m) or m.source == 'file'
  end
  if take then
    set_current(v, true)
    promoted = 1
  end
end
return {v, 1, promoted}
"#,
    )
});

/// KEYS: registry, current, models, history, epoch. ARGV: 1-4, 5 version.
static PROMOTE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local m = meta(ARGV[5])
if not m then return {'unknown'} end
if m.status ~= 'ready' then return {'not_ready', m.status} end
local prev = set_current(ARGV[5], true)
return {'ok', prev or ''}
"#,
    )
});

/// KEYS: registry, current, models, history, epoch. ARGV: 1-4.
static ROLLBACK: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local cur = redis.call('HGET', KEYS[2], ARGV[3])
while true do
  local p = redis.call('LPOP', KEYS[4])
  if not p then return {'none'} end
  if p ~= cur then
    local m = meta(p)
    if m and m.status == 'ready' then
      set_current(p, false)
      return {'ok', cur or '', p}
    end
  end
end
"#,
    )
});

/// KEYS: registry, current, models, history, epoch. ARGV: 1-4, 5 version, 6 the
/// settled version JSON, 7 signature JSON ('' when invalid).
static SETTLE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local m = meta(ARGV[5])
if not m then return 'unknown' end
if m.status ~= 'validating' then return m.status end
redis.call('HSET', KEYS[1], ARGV[5], ARGV[6])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'sig:' .. ARGV[5], sig_for(ARGV[5], ARGV[7])) end
return 'settled'
"#,
    )
});

fn invocation<'a>(s: &'a redis::Script, keys: &Keys, model: &str) -> redis::ScriptInvocation<'a> {
    let mut inv = s.key(keys.registry(model));
    inv.key(keys.current())
        .key(keys.models())
        .key(keys.history(model))
        .key(keys.registry_epoch())
        .arg(keys.models_channel())
        .arg(keys.registry_channel())
        .arg(model)
        .arg(HISTORY_LEN);
    inv
}

fn corrupt(what: &str) -> impl Fn(serde_json::Error) -> QueueError + '_ {
    move |e| QueueError::Corrupt(format!("{what}: {e}"))
}

/// The signature JSON with a placeholder the scripts replace by the version
/// number they allocate.
fn signature_template(model: &str, v: &Version) -> Result<String, QueueError> {
    let mut info = v.info(model);
    info.version = "@V@".to_owned();
    serde_json::to_string(&info).map_err(corrupt("model signature"))
}

/// Registers `bytes` as a new version of `model` described by `v` (its
/// `version` is ignored; `ready` versions must carry their signature), see
/// [`RegisterMode`]. The blob is written unless the same bytes are stored.
pub async fn register(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    bytes: &[u8],
    v: &Version,
    mode: RegisterMode,
) -> Result<Registered, QueueError> {
    let json = serde_json::to_string(v).map_err(corrupt("version"))?;
    let sig = if v.status == VersionStatus::Ready {
        signature_template(model, v)?
    } else {
        String::new()
    };
    let mut inv = invocation(&REGISTER, keys, model);
    inv.key(keys.blob(&v.sha256))
        .arg(&v.sha256)
        .arg(json)
        .arg(sig)
        .arg(match mode {
            RegisterMode::Seed => "seed",
            RegisterMode::Add => "add",
        })
        .arg(bytes);
    let (version, created, promoted): (u32, u8, u8) = inv.invoke_async(conn).await?;
    Ok(Registered {
        version,
        created: created == 1,
        promoted: promoted == 1,
    })
}

/// Records the validation of a `validating` version: `Ok` carries its
/// signature (status `ready`), `Err` the reason (status `invalid`). A
/// version already settled is left alone (a redelivered validation job);
/// returns whether this call settled it.
pub async fn settle(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    mut v: Version,
    outcome: Result<(Vec<TensorSpec>, Vec<TensorSpec>), String>,
) -> Result<bool, QueueError> {
    let number = v.version;
    let sig = match outcome {
        Ok((inputs, outputs)) => {
            v.status = VersionStatus::Ready;
            v.inputs = inputs;
            v.outputs = outputs;
            v.error = None;
            signature_template(model, &v)?
        }
        Err(error) => {
            v.status = VersionStatus::Invalid;
            v.error = Some(error);
            String::new()
        }
    };
    let json = serde_json::to_string(&v).map_err(corrupt("version"))?;
    let mut inv = invocation(&SETTLE, keys, model);
    inv.arg(number).arg(json).arg(sig);
    let reply: String = inv.invoke_async(conn).await?;
    Ok(reply == "settled")
}

fn promotion(reply: Vec<String>) -> Result<Promotion, QueueError> {
    let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or_default();
    let num = |s: &str| s.parse::<u32>().ok();
    match field(0) {
        "ok" if reply.len() == 2 => Ok(Promotion::Done {
            from: num(field(1)),
            to: 0,
        }),
        "ok" => Ok(Promotion::Done {
            from: num(field(1)),
            to: num(field(2)).ok_or_else(|| QueueError::Corrupt("rollback target".into()))?,
        }),
        "unknown" => Ok(Promotion::UnknownVersion),
        "not_ready" => Ok(Promotion::NotReady(match field(1) {
            "invalid" => VersionStatus::Invalid,
            _ => VersionStatus::Validating,
        })),
        "none" => Ok(Promotion::NothingToRollBack),
        other => Err(QueueError::Corrupt(format!(
            "registry script answered {other:?}"
        ))),
    }
}

/// Makes `version` current if it is `ready`; the replaced version is
/// remembered for [`rollback`].
pub async fn promote(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    version: u32,
) -> Result<Promotion, QueueError> {
    let mut inv = invocation(&PROMOTE, keys, model);
    inv.arg(version);
    let reply: Vec<String> = inv.invoke_async(conn).await?;
    Ok(match promotion(reply)? {
        Promotion::Done { from, .. } => Promotion::Done { from, to: version },
        other => other,
    })
}

/// Makes the previous current version current again (the most recent one
/// still `ready`).
pub async fn rollback(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
) -> Result<Promotion, QueueError> {
    let reply: Vec<String> = invocation(&ROLLBACK, keys, model)
        .invoke_async(conn)
        .await?;
    promotion(reply)
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

fn parse_version(number: u32, json: &str) -> Result<Version, QueueError> {
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
