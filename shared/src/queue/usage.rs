//! What each tenant holds in Redis right now, counted where it changes, so a
//! quota check on the way in is one HMGET inside the script that writes.
//!
//! `{ns}:usage:{tenant}` (hash, see [`super::keys`]):
//!
//! | field           | counts                                                        |
//! |-----------------|---------------------------------------------------------------|
//! | `jobs`          | unfinished jobs: queued (a retry waiting included) or running |
//! | `bytes`         | the stream payload bytes of those jobs                        |
//! | `datasets`      | stored datasets                                               |
//! | `dataset_bytes` | their CSV bytes                                               |
//!
//! # The invariant, and who keeps it
//!
//! A job adds to `jobs`/`bytes` once, in the script that accepts it
//! ([`super::ops::submit`]) or puts it back after it ended (a dead-letter
//! replay, [`super::admin::replay`]), and takes away once, in the one script
//! that makes it terminal: the worker's finish, the worker's start when it
//! fails a job unrun (deadline, attempts), or a cancel of a queued job. Each
//! of those scripts already decides that transition atomically, so a job is
//! never counted twice or released twice. The job record carries its
//! payload size (`bytes`) for the release. Counters never go below zero:
//! jobs accepted before the counters existed release what was never added.
//!
//! Datasets are counted by the scripts of [`super::datasets`], replacing a
//! dataset counts the difference.
//!
//! Every key a script touches comes in through `KEYS`; the caller names the
//! tenant's usage key with [`super::Keys::usage`].

use redis::aio::ConnectionLike;

use super::QueueError;
use super::keys::Keys;

/// Hash fields of `{ns}:usage:{tenant}`.
pub const JOBS: &str = "jobs";
pub const BYTES: &str = "bytes";
pub const DATASETS: &str = "datasets";
pub const DATASET_BYTES: &str = "dataset_bytes";

/// Lua: subtracts from a usage counter, never below zero. Prepended to the
/// scripts that release usage.
pub(crate) const RELEASE_LUA: &str = r#"
local function usage_release(key, field, n)
  n = tonumber(n) or 0
  if n <= 0 then return end
  if redis.call('HINCRBY', key, field, -n) < 0 then
    redis.call('HSET', key, field, 0)
  end
end
"#;

/// A tenant's usage, as counted now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub jobs: u64,
    pub bytes: u64,
    pub datasets: u64,
    pub dataset_bytes: u64,
}

/// Bounds on a tenant's unfinished jobs; 0 means unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobQuota {
    pub max_jobs: u64,
    pub max_bytes: u64,
}

/// Which quota a refused write would have exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Jobs,
    Bytes,
    Datasets,
    DatasetBytes,
}

impl QuotaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Jobs => "queued jobs",
            QuotaKind::Bytes => "queued bytes",
            QuotaKind::Datasets => "datasets",
            QuotaKind::DatasetBytes => "dataset bytes",
        }
    }

    /// The reply word the scripts use.
    pub(crate) fn parse(s: &str) -> Option<QuotaKind> {
        Some(match s {
            JOBS => QuotaKind::Jobs,
            BYTES => QuotaKind::Bytes,
            DATASETS => QuotaKind::Datasets,
            DATASET_BYTES => QuotaKind::DatasetBytes,
            _ => return None,
        })
    }
}

/// A write refused because it would take a tenant past a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverQuota {
    pub kind: QuotaKind,
    /// What the tenant holds now.
    pub used: u64,
    pub limit: u64,
}

impl OverQuota {
    /// From a script's `{'quota', field, used, limit}` reply tail.
    pub(crate) fn from_reply(
        field: &str,
        used: &str,
        limit: &str,
    ) -> Result<OverQuota, QueueError> {
        let kind = QuotaKind::parse(field)
            .ok_or_else(|| QueueError::Corrupt(format!("unknown quota {field:?}")))?;
        Ok(OverQuota {
            kind,
            used: used.parse().unwrap_or(0),
            limit: limit.parse().unwrap_or(0),
        })
    }
}

/// A tenant's usage counters.
pub async fn read(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    tenant: &str,
) -> Result<Usage, QueueError> {
    let v: Vec<Option<u64>> = redis::cmd("HMGET")
        .arg(keys.usage(tenant))
        .arg(&[JOBS, BYTES, DATASETS, DATASET_BYTES])
        .query_async(conn)
        .await?;
    let at = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
    Ok(Usage {
        jobs: at(0),
        bytes: at(1),
        datasets: at(2),
        dataset_bytes: at(3),
    })
}
