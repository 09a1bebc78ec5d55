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

use redis::aio::ConnectionLike;

use super::QueueError;
use super::keys::Keys;
use super::registry::{Version, VersionStatus, corrupt};
use super::scripts::{MARK, QUARANTINE};

/// A load in progress (or abandoned) as another worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub consumer: String,
    pub model: String,
    pub version: u32,
    /// The field's value as read: [`quarantine`] acts only if it is unchanged.
    pub raw: String,
}

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
