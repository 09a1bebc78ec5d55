//! Every registry write, each one Lua script: register, settle, promote,
//! rollback, delete. The reads and the types are in [`super`].
//!
//! Blob reference counting lives here, in the same scripts that add and
//! remove the versions holding the references, so a count can never be
//! out of step with the versions (see the module docs of [`super`]).

use std::sync::LazyLock;

use redis::aio::ConnectionLike;

use super::{
    Deletion, HISTORY_LEN, Promotion, Quota, QuotaExceeded, RegisterMode, Registered, Registration,
    Rejection, Version, VersionStatus, corrupt,
};
use crate::queue::QueueError;
use crate::queue::keys::Keys;
use crate::tensor::TensorSpec;

// Moves `current` to version `v` (ARGV[3] is the model), writes its
// signature to the models hash, bumps the epoch and tells APIs and workers.
// KEYS: registry, current, models, history, epoch. ARGV[1]/[2]: models and
// registry channels; ARGV[4]: history length.
// `unref(v, blob_key, refs_key, sha)` drops version v's reference to its
// bytes, deleting them when it was the last one (and the namespace is
// counted); returns whether the blob was deleted.
const COMMON: &str = r#"
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
local function unref(v, blob_key, refs_key, sha)
  if redis.call('HDEL', KEYS[1], 'ref:' .. v) == 0 then return false end
  local n = redis.call('HINCRBY', refs_key, sha, -1)
  if n > 0 then return false end
  redis.call('HDEL', refs_key, sha)
  if redis.call('HEXISTS', refs_key, '.counted') == 1 then
    return redis.call('DEL', blob_key) == 1
  end
  return false
end
"#;

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{COMMON}\n{body}"))
}

/// KEYS: registry, current, models, history, epoch, blob, blob-refs, then
/// optionally the tenant's model set. ARGV: 1-4 as [`COMMON`], 5 sha256,
/// 6 version JSON, 7 signature JSON ('' = unknown yet), 8 mode (`seed` |
/// `add`), 9 bytes, 10 max versions ('' = none), 11 max models ('' = none).
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
      return {known, 0, 1, ''}
    end
    return {known, 0, 0, ''}
  end
end
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '')
if not count then
  -- A model registered before counts existed: count it once.
  count = 0
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.match(f, '^%d+$') then count = count + 1 end
  end
end
if ARGV[10] ~= '' and count >= tonumber(ARGV[10]) then return {0, 0, 0, 'versions'} end
if KEYS[8] then
  if ARGV[11] ~= '' and redis.call('SISMEMBER', KEYS[8], ARGV[3]) == 0
     and redis.call('SCARD', KEYS[8]) >= tonumber(ARGV[11]) then
    return {0, 0, 0, 'models'}
  end
  redis.call('SADD', KEYS[8], ARGV[3])
end
if redis.call('EXISTS', KEYS[7]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  -- Nothing was ever registered with counts or made current: no blob
  -- predates the counts.
  redis.call('HSET', KEYS[7], '.counted', 1)
end
redis.call('SET', KEYS[6], ARGV[9], 'NX')
redis.call('HINCRBY', KEYS[7], ARGV[5], 1)
local v = tostring(redis.call('HINCRBY', KEYS[1], 'seq', 1))
redis.call('HSET', KEYS[1], v, ARGV[6], 'ref:' .. v, 1, 'count', count + 1)
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
return {v, 1, promoted, ''}
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

/// KEYS: registry, current, models, history, epoch, blob, blob-refs.
/// ARGV: 1-4, 5 version, 6 the settled version JSON, 7 signature JSON
/// ('' when invalid: the bytes are dropped), 8 sha256.
static SETTLE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local m = meta(ARGV[5])
if not m then return 'unknown' end
if m.status ~= 'validating' then return m.status end
redis.call('HSET', KEYS[1], ARGV[5], ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'sig:' .. ARGV[5], sig_for(ARGV[5], ARGV[7]))
else
  unref(ARGV[5], KEYS[6], KEYS[7], ARGV[8])
end
return 'settled'
"#,
    )
});

/// KEYS: registry, current, models, history, epoch, blob, blob-refs, then
/// optionally the tenant's model set. ARGV: 1-4, 5 version, 6 its sha256
/// as read before (a version rewritten since is left alone).
static DELETE: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r#"
local v = ARGV[5]
local m = meta(v)
if not m then return 'unknown' end
if redis.call('HGET', KEYS[2], ARGV[3]) == v then return 'current' end
if m.sha256 ~= ARGV[6] then return 'changed' end
redis.call('HDEL', KEYS[1], v, 'sig:' .. v)
if redis.call('HGET', KEYS[1], 'sha:' .. ARGV[6]) == v then
  redis.call('HDEL', KEYS[1], 'sha:' .. ARGV[6])
end
redis.call('LREM', KEYS[4], 0, v)
local gone = unref(v, KEYS[6], KEYS[7], ARGV[6])
if redis.call('HEXISTS', KEYS[1], 'count') == 1 then
  local left = redis.call('HINCRBY', KEYS[1], 'count', -1)
  if left <= 0 and KEYS[8] then redis.call('SREM', KEYS[8], ARGV[3]) end
end
if gone then return 'deleted_blob' end
return 'deleted'
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

/// The signature JSON with a placeholder the scripts replace by the version
/// number they allocate.
fn signature_template(model: &str, v: &Version) -> Result<String, QueueError> {
    let mut info = v.info(model);
    info.version = "@V@".to_owned();
    serde_json::to_string(&info).map_err(corrupt("model signature"))
}

fn limit_arg(n: Option<u32>) -> String {
    n.map(|n| n.to_string()).unwrap_or_default()
}

/// Registers `bytes` as a new version of `model` described by `v` (its
/// `version` is ignored; `ready` versions must carry their signature), see
/// [`RegisterMode`]. The blob is written unless the same bytes are stored,
/// and its reference count goes up. With a `quota`, a registration that
/// would cross one of its limits writes nothing.
pub async fn register(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    bytes: &[u8],
    v: &Version,
    mode: RegisterMode,
    quota: Option<&Quota>,
) -> Result<Registration, QueueError> {
    let json = serde_json::to_string(v).map_err(corrupt("version"))?;
    let sig = if v.status == VersionStatus::Ready {
        signature_template(model, v)?
    } else {
        String::new()
    };
    let mut inv = invocation(&REGISTER, keys, model);
    inv.key(keys.blob(&v.sha256)).key(keys.blob_refs());
    if let Some(q) = quota {
        inv.key(&q.tenant_models);
    }
    inv.arg(&v.sha256)
        .arg(json)
        .arg(sig)
        .arg(match mode {
            RegisterMode::Seed => "seed",
            RegisterMode::Add => "add",
        })
        .arg(bytes)
        .arg(limit_arg(quota.and_then(|q| q.max_versions)))
        .arg(limit_arg(quota.and_then(|q| q.max_models)));
    let (version, created, promoted, refused): (u32, u8, u8, String) =
        inv.invoke_async(conn).await?;
    let limit = |n: Option<u32>| n.unwrap_or_default();
    Ok(match refused.as_str() {
        "versions" => Registration::QuotaExceeded(QuotaExceeded::Versions {
            limit: limit(quota.and_then(|q| q.max_versions)),
        }),
        "models" => Registration::QuotaExceeded(QuotaExceeded::Models {
            limit: limit(quota.and_then(|q| q.max_models)),
        }),
        _ => Registration::Registered(Registered {
            version,
            created: created == 1,
            promoted: promoted == 1,
        }),
    })
}

/// Records the validation of a `validating` version: `Ok` carries its
/// signature (status `ready`), `Err` the reason (status `invalid`, whose
/// bytes are dropped unless another version holds them). A version already
/// settled is left alone (a redelivered validation job); returns whether
/// this call settled it.
pub async fn settle(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    mut v: Version,
    outcome: Result<(Vec<TensorSpec>, Vec<TensorSpec>), Rejection>,
) -> Result<bool, QueueError> {
    let number = v.version;
    let sig = match outcome {
        Ok((inputs, outputs)) => {
            v.status = VersionStatus::Ready;
            v.inputs = inputs;
            v.outputs = outputs;
            v.error = None;
            v.error_code = None;
            signature_template(model, &v)?
        }
        Err(rejection) => {
            v.status = VersionStatus::Invalid;
            v.error = Some(rejection.message);
            v.error_code = Some(rejection.code);
            String::new()
        }
    };
    let json = serde_json::to_string(&v).map_err(corrupt("version"))?;
    let mut inv = invocation(&SETTLE, keys, model);
    inv.key(keys.blob(&v.sha256))
        .key(keys.blob_refs())
        .arg(number)
        .arg(json)
        .arg(sig)
        .arg(&v.sha256);
    let reply: String = inv.invoke_async(conn).await?;
    Ok(reply == "settled")
}

/// Deletes a version that is not current: its metadata, signature, its
/// entries in the rollback history, and its bytes if no other version
/// holds them. `tenant_models` (the tenant's model set of a [`Quota`]) loses
/// the model when its last version goes.
pub async fn delete_version(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    number: u32,
    tenant_models: Option<&str>,
) -> Result<Deletion, QueueError> {
    // The blob key is named by the version's hash: read it, then delete
    // only if the version still has that hash (it cannot change, but a
    // corrupt or concurrent rewrite must not free the wrong bytes).
    for _ in 0..3 {
        let Some(v) = super::version(conn, keys, model, number).await? else {
            return Ok(Deletion::UnknownVersion);
        };
        let mut inv = invocation(&DELETE, keys, model);
        inv.key(keys.blob(&v.sha256)).key(keys.blob_refs());
        if let Some(t) = tenant_models {
            inv.key(t);
        }
        inv.arg(number).arg(&v.sha256);
        let reply: String = inv.invoke_async(conn).await?;
        match reply.as_str() {
            "deleted" => {
                return Ok(Deletion::Deleted {
                    blob_deleted: false,
                });
            }
            "deleted_blob" => return Ok(Deletion::Deleted { blob_deleted: true }),
            "unknown" => return Ok(Deletion::UnknownVersion),
            "current" => return Ok(Deletion::IsCurrent),
            _ => continue,
        }
    }
    Err(QueueError::Corrupt(format!(
        "version {number} of {model} kept changing while being deleted"
    )))
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
            "quarantined" => VersionStatus::Quarantined,
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_counted_marker_is_the_one_the_scripts_test() {
        assert!(super::COMMON.contains(&format!("'{}'", crate::queue::registry::COUNTED)));
        assert!(super::REGISTER.get_hash().len() == 40);
    }
}
