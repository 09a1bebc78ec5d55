//! The job index: which jobs a tenant submitted, newest first, for
//! `GET /v1/jobs`.
//!
//! The submit script ([`super::ops::submit`]) adds every job's id to a
//! sorted set of its tenant, its partition and the hour it was submitted in
//! ([`Keys::job_index`]), in the same script that writes the record, so the
//! index never misses a job that was accepted. Every member has score 0, so
//! a set sorts by id, and a UUIDv7 id sorts by its millisecond clock (then
//! by the bits after it: ids of one API process are monotonic). A bucket
//! expires [`super::ops::SubmitOptions::index_ttl_secs`] after its hour
//! ends, past the TTL of every record in it, so the index costs memory only
//! for jobs whose records could still be read; members whose record is gone
//! (expired sooner) are skipped by the reader.
//!
//! Reading ([`Walk`]) merges the tenant's buckets of every partition, newest
//! first: buckets are asked for in rounds (one bucket, then 2, 4, ...: a
//! busy tenant is answered by its newest bucket, an idle one costs a few
//! round trips), each round one pipelined `ZRANGE ... BYLEX REV LIMIT` per
//! partition, never a scan of the keyspace.

use std::collections::BTreeMap;

use redis::aio::ConnectionLike;
use uuid::Uuid;

use super::QueueError;
use super::keys::{INDEX_BUCKET_MS, Keys, Partition, partition_of};
use crate::job::JobRecord;

/// The Unix ms a UUIDv7 carries in its first 48 bits.
pub fn id_ms(id: &Uuid) -> i64 {
    let b = id.as_bytes();
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&b[..6]);
    i64::from_be_bytes(ms)
}

/// The index bucket of a time (Unix ms).
pub fn bucket_of(ms: i64) -> i64 {
    ms.div_euclid(INDEX_BUCKET_MS)
}

/// When bucket `bucket` expires (Unix seconds): `ttl_secs` after its hour
/// ends.
pub fn expires_at_secs(bucket: i64, ttl_secs: u64) -> i64 {
    let end = (bucket + 1).saturating_mul(INDEX_BUCKET_MS) / 1000;
    end.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2))
}

/// Positions of `ids`, grouped by partition (so by slot), in order.
fn by_partition(ids: &[Uuid]) -> BTreeMap<Partition, Vec<usize>> {
    let mut groups: BTreeMap<Partition, Vec<usize>> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        groups.entry(partition_of(id)).or_default().push(i);
    }
    groups
}

/// The text every id of millisecond `ms` starts with: a lexical bound.
fn ms_prefix(ms: i64) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1);
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

/// Most buckets one round asks for, per partition.
const MAX_ROUND: i64 = 64;

/// A walk down one tenant's index, newest first, between two times and
/// below a cursor.
pub struct Walk {
    tenant: String,
    partitions: Vec<Partition>,
    /// Exclusive upper bound, as `ZRANGE BYLEX` takes it (`(` + text).
    upper: String,
    /// Inclusive lower bound (`[` + text).
    lower: String,
    /// The newest bucket not yet done with, and the oldest to visit.
    bucket: i64,
    oldest: i64,
    /// Buckets the next round asks for.
    span: i64,
}

impl Walk {
    /// Jobs of `tenant` submitted from `since_ms` to `until_ms` (inclusive,
    /// by their ids' time), older than `after` if given (a cursor: the last
    /// id a previous page examined).
    pub fn new(
        keys: &Keys,
        tenant: &str,
        since_ms: i64,
        until_ms: i64,
        after: Option<&Uuid>,
    ) -> Walk {
        let mut upper = format!("({}", ms_prefix(until_ms.saturating_add(1)));
        let mut top = until_ms;
        if let Some(after) = after {
            let below = format!("({after}");
            if below < upper {
                upper = below;
                top = id_ms(after);
            }
        }
        Walk {
            tenant: tenant.to_owned(),
            partitions: keys.all_partitions().collect(),
            upper,
            lower: format!("[{}", ms_prefix(since_ms)),
            bucket: bucket_of(top),
            oldest: bucket_of(since_ms),
            span: 1,
        }
    }

    /// Up to `want` more ids, newest first, each older than the last one
    /// returned; empty once the walk is done. At most one round trip per
    /// partition per round of buckets.
    pub async fn next(
        &mut self,
        conn: &mut impl ConnectionLike,
        keys: &Keys,
        want: usize,
    ) -> Result<Vec<Uuid>, QueueError> {
        let want = want.max(1);
        while self.bucket >= self.oldest {
            let newest = self.bucket;
            let oldest = (newest - self.span + 1).max(self.oldest);
            // Every set of the round, with whether it filled its LIMIT.
            let mut lists: Vec<(Vec<String>, bool)> = Vec::new();
            for &p in &self.partitions {
                let mut pipe = redis::pipe();
                for b in (oldest..=newest).rev() {
                    pipe.cmd("ZRANGE")
                        .arg(keys.job_index(&self.tenant, p, b))
                        .arg(&self.upper)
                        .arg(&self.lower)
                        .arg("BYLEX")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(want);
                }
                let replies: Vec<Vec<String>> = pipe.query_async(conn).await?;
                lists.extend(replies.into_iter().map(|l| {
                    let full = l.len() >= want;
                    (l, full)
                }));
            }
            // A set that filled its LIMIT may hold more below its last
            // member: only what is above the highest such cut is complete.
            let cut = lists
                .iter()
                .filter(|(l, full)| *full && !l.is_empty())
                .filter_map(|(l, _)| l.last().cloned())
                .max();
            let mut merged: Vec<String> = lists.into_iter().flat_map(|(l, _)| l).collect();
            merged.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(cut) = &cut {
                merged.retain(|m| m >= cut);
            }
            let complete = cut.is_none() && merged.len() <= want;
            merged.truncate(want);
            if complete {
                // The round's buckets are done with.
                self.bucket = oldest - 1;
                self.span = (self.span * 2).min(MAX_ROUND);
            }
            let Some(last) = merged.last() else {
                continue;
            };
            self.upper = format!("({last}");
            // A member that is not an id was not written by the submit
            // script; it is passed over.
            return Ok(merged
                .iter()
                .filter_map(|m| Uuid::parse_str(m).ok())
                .collect());
        }
        Ok(Vec::new())
    }
}

/// Reads the records of the ids a [`Walk`] found, in `ids` order (`None` for an unknown or
/// expired id): one pipelined round trip per partition, since a cluster
/// refuses a pipeline that crosses slots.
pub async fn records(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    ids: &[Uuid],
) -> Result<Vec<Option<JobRecord>>, QueueError> {
    let mut out: Vec<Option<JobRecord>> = (0..ids.len()).map(|_| None).collect();
    for (_, members) in by_partition(ids) {
        let mut pipe = redis::pipe();
        for &i in &members {
            pipe.cmd("HMGET")
                .arg(keys.job(&ids[i]))
                .arg(&JobRecord::FIELDS[..]);
        }
        let replies: Vec<Vec<Option<String>>> = pipe.query_async(conn).await?;
        for (&i, values) in members.iter().zip(replies) {
            out[i] = JobRecord::from_values(ids[i], values).map_err(QueueError::Corrupt)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_carries_its_time_and_sorts_by_it() {
        let keys = Keys::with_partitions("t", 3);
        let a = keys.new_job_id(2);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = keys.new_job_id(0);
        let now = crate::time::now_ms();
        assert!((now - id_ms(&a)).abs() < 1000, "{} vs {now}", id_ms(&a));
        assert!(a.to_string() < b.to_string());
        assert!(ms_prefix(id_ms(&a)) < a.to_string());
        assert!(a.to_string().starts_with(&ms_prefix(id_ms(&a))));
        assert!(ms_prefix(id_ms(&a) + 1) > a.to_string());
    }

    #[test]
    fn buckets_are_hours_and_expire_after_theirs() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(INDEX_BUCKET_MS - 1), 0);
        assert_eq!(bucket_of(INDEX_BUCKET_MS), 1);
        assert_eq!(bucket_of(-1), -1);
        assert_eq!(expires_at_secs(0, 60), 3600 + 60);
        assert_eq!(expires_at_secs(2, 0), 3 * 3600);
    }
}
