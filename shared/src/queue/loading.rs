//! Load markers and quarantine: which worker is loading which registry
//! version right now, so that a version that kills its worker while it
//! loads (a crash, an out-of-memory kill) is never loaded again.
//!
//! * Before loading a registry version in its own process, a worker writes
//!   `{ns}:loading` field `{consumer}` = `{model} {version} {Redis ms}`
//!   ([`mark`]) and refreshes it every second while the load runs; it
//!   deletes the field when the load ends, successfully or with a clean
//!   error ([`unmark`]).
//! * A marker not refreshed for longer than the stale window means its
//!   worker died mid-load. Any other worker that sees it calls
//!   [`quarantine`]: one script deletes the marker and, if the version is
//!   still what the caller read, rewrites it `quarantined` with the error,
//!   bumps the registry epoch and publishes the model on the registry
//!   channel like every registry write. Loads refuse non-`ready` versions,
//!   and promotion refuses them too.
//!
//! Times are Redis's (`TIME`), so workers' clocks never matter.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::aio::ConnectionLike;

use super::QueueError;
use super::keys::Keys;
use super::registry::{Version, VersionStatus, corrupt};

/// A load in progress (or abandoned) as another worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub consumer: String,
    pub model: String,
    pub version: u32,
    /// The field's value as read: [`quarantine`] acts only if it is unchanged.
    pub raw: String,
}

/// KEYS: loading. ARGV: consumer, model, version.
static MARK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ms)
return ms
"#,
    )
});

/// KEYS: loading, registry:{model}, epoch. ARGV: 1 consumer, 2 marker as
/// read, 3 stale window ms, 4 version, 5 version JSON as read, 6 the
/// quarantined version JSON ('' = only drop the marker), 7 registry
/// channel, 8 model.
static QUARANTINE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur ~= ARGV[2] then return 'changed' end
local at = tonumber(string.match(cur, '(%d+)$')) or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - at <= tonumber(ARGV[3]) then return 'fresh' end
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[6] == '' then return 'dropped' end
if redis.call('HGET', KEYS[2], ARGV[4]) ~= ARGV[5] then return 'dropped' end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[6])
redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 'quarantined'
"#,
    )
});

/// Writes or refreshes this worker's marker for loading `model` `version`.
pub async fn mark(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    consumer: &str,
    model: &str,
    version: u32,
) -> Result<(), QueueError> {
    let _: i64 = MARK
        .key(keys.loading())
        .arg(consumer)
        .arg(model)
        .arg(version)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// Deletes this worker's marker: the load ended.
pub async fn unmark(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    consumer: &str,
) -> Result<(), QueueError> {
    let _: i64 = redis::cmd("HDEL")
        .arg(keys.loading())
        .arg(consumer)
        .query_async(conn)
        .await?;
    Ok(())
}

/// Every marker but `own`'s. Markers are rare (a load takes milliseconds),
/// so the usual answer costs two O(1) commands, not a read of the hash.
pub async fn others(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    own: &str,
) -> Result<Vec<Marker>, QueueError> {
    let (len, mine): (u64, bool) = redis::pipe()
        .cmd("HLEN")
        .arg(keys.loading())
        .cmd("HEXISTS")
        .arg(keys.loading())
        .arg(own)
        .query_async(conn)
        .await?;
    if len <= u64::from(mine) {
        return Ok(Vec::new());
    }
    let all: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.loading())
        .query_async(conn)
        .await?;
    Ok(all
        .into_iter()
        .filter(|(c, _)| c != own)
        .filter_map(|(consumer, raw)| {
            let mut parts = raw.split(' ');
            let model = parts.next()?.to_owned();
            let version = parts.next()?.parse().ok()?;
            Some(Marker {
                consumer,
                model,
                version,
                raw,
            })
        })
        .collect())
}

/// What [`quarantine`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quarantine {
    /// The marker is younger than the stale window: its worker may be
    /// loading still.
    Fresh,
    /// The marker was refreshed or removed since it was read.
    Changed,
    /// The marker was stale and is gone; the version was not `ready` (or
    /// changed), so nothing else changed.
    Dropped,
    /// The version is now `quarantined`.
    Quarantined,
}

/// Quarantines `m`'s version if `m` is older than `stale_ms` and unchanged.
pub async fn quarantine(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    m: &Marker,
    stale_ms: u64,
    error: &str,
    error_code: &str,
) -> Result<Quarantine, QueueError> {
    let raw: Option<String> = redis::cmd("HGET")
        .arg(keys.registry(&m.model))
        .arg(m.version)
        .query_async(conn)
        .await?;
    let (raw, next) = match raw {
        Some(raw) => {
            let mut v: Version = serde_json::from_str(&raw).map_err(corrupt("registry version"))?;
            let next = if v.status == VersionStatus::Ready {
                v.status = VersionStatus::Quarantined;
                v.error = Some(error.to_owned());
                v.error_code = Some(error_code.to_owned());
                serde_json::to_string(&v).map_err(corrupt("version"))?
            } else {
                String::new()
            };
            (raw, next)
        }
        None => (String::new(), String::new()),
    };
    let reply: String = QUARANTINE
        .key(keys.loading())
        .key(keys.registry(&m.model))
        .key(keys.registry_epoch())
        .arg(&m.consumer)
        .arg(&m.raw)
        .arg(stale_ms)
        .arg(m.version)
        .arg(raw)
        .arg(next)
        .arg(keys.registry_channel())
        .arg(&m.model)
        .invoke_async(conn)
        .await?;
    Ok(match reply.as_str() {
        "fresh" => Quarantine::Fresh,
        "changed" => Quarantine::Changed,
        "quarantined" => Quarantine::Quarantined,
        _ => Quarantine::Dropped,
    })
}
