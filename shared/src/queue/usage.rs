//! What each tenant holds in Redis right now, counted where it changes, so a
//! quota check on the way in is one HMGET inside the script that writes.
//!
//! `{ns}:{P}:usage:{tenant}` per partition for jobs, `{ns}:{reg}:usage:{tenant}`
//! for datasets (hashes, see [`super::keys`]): each counter lives beside
//! the keys of the scripts that change it, in their slot.
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
//! tenant's usage keys with [`super::Keys::job_usage`] and
//! [`super::Keys::dataset_usage`]. The release helper is
//! `lua/usage_release.lua`. A partition's job counters are checked against
//! the partition's share of the quota ([`super::ops::share`]).

use redis::aio::ConnectionLike;

use super::QueueError;
use super::keys::Keys;

/// Hash fields of the usage hashes.
pub const JOBS: &str = "jobs";
pub const BYTES: &str = "bytes";
pub const DATASETS: &str = "datasets";
pub const DATASET_BYTES: &str = "dataset_bytes";

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

/// A tenant's usage counters, summed over the partitions.
pub async fn read(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    tenant: &str,
) -> Result<Usage, QueueError> {
    let mut usage = Usage::default();
    for p in keys.all_partitions() {
        let v: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(keys.job_usage(tenant, p))
            .arg(&[JOBS, BYTES])
            .query_async(conn)
            .await?;
        usage.jobs += v.first().copied().flatten().unwrap_or(0);
        usage.bytes += v.get(1).copied().flatten().unwrap_or(0);
    }
    let v: Vec<Option<u64>> = redis::cmd("HMGET")
        .arg(keys.dataset_usage(tenant))
        .arg(&[DATASETS, DATASET_BYTES])
        .query_async(conn)
        .await?;
    usage.datasets = v.first().copied().flatten().unwrap_or(0);
    usage.dataset_bytes = v.get(1).copied().flatten().unwrap_or(0);
    Ok(usage)
}
