//! The worker's side of the protocol: publishing model signatures, joining
//! the consumer groups, reading and reclaiming entries, the start/finish
//! transitions of a job, lease renewal, delayed retries and trimming. One
//! function per step, each a single Redis round trip.
//!
//! # Leases
//!
//! A delivered entry sits in the group's pending list under the consumer that
//! read it; its idle time is the lease clock. A worker renews the lease of
//! the entries it is running ([`renew`]) every fraction of `--lease-ms`;
//! any worker reclaims entries idle longer than the lease ([`reclaim`], i.e.
//! XAUTOCLAIM), which is how the jobs of a killed or stalled worker move on.
//! The attempt number taken by [`start`] makes the move safe: [`finish`]
//! only writes if the job is still on the caller's attempt.
//!
//! # Retries and dead letters
//!
//! A transient failure goes back to the queue through its stream's delayed
//! set (job ids by due time, payload parked in the job record) and
//! [`release_due`] moves due jobs back onto their stream. A job whose last
//! allowed attempt fails, or which keeps losing its worker, ends `failed` and
//! is copied to the dead-letter stream before it is acknowledged.
//!
//! One module per concern: [`read`] (deliveries: new entries, takeovers),
//! [`attempt`] (start and finish), [`lease`] (renewal, progress),
//! [`upkeep`] (due retries, trimming); this file joins the groups and
//! publishes signatures.

mod attempt;
mod lease;
mod read;
mod upkeep;

pub use attempt::{Finish, Finished, Outcome, Policy, Start, finish, start};
pub use lease::{Lease, Renewed, renew, write_progress};
pub use read::{Delivery, ack, read_new, reclaim};
pub use upkeep::{release_due, trim_acked, trim_dead_letters};

use redis::aio::ConnectionLike;

use super::QueueError;
use super::keys::{GROUP, Keys};
use crate::model::ModelInfo;

/// Publishes a model's signature and tells API processes to refresh it.
pub async fn publish_model(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    info: &ModelInfo,
) -> Result<(), QueueError> {
    let json = serde_json::to_string(info)
        .map_err(|e| QueueError::Corrupt(format!("model signature: {e}")))?;
    // Two commands, not one pipeline: a cluster routes PUBLISH by its
    // channel's slot, which is not the registry's, and refuses a pipeline
    // that crosses slots.
    redis::cmd("HSET")
        .arg(keys.models())
        .arg(&info.name)
        .arg(json)
        .query_async::<()>(conn)
        .await?;
    redis::cmd("PUBLISH")
        .arg(keys.models_channel())
        .arg(&info.name)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Creates the consumer group of a stream (and the stream) if missing.
/// The group starts at `0`, not `$`, so jobs enqueued before the first worker
/// ever started are still delivered.
pub async fn ensure_group(conn: &mut impl ConnectionLike, stream: &str) -> Result<(), QueueError> {
    let res = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(conn)
        .await;
    match res {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => Ok(other?),
    }
}

/// Positions of the items of each stream, streams in first-seen order: one
/// batched script call per stream (a script may only touch its stream).
pub(super) fn by_stream<'a>(streams: impl Iterator<Item = &'a str>) -> Vec<(&'a str, Vec<usize>)> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, s) in streams.enumerate() {
        match groups.iter_mut().find(|(g, _)| *g == s) {
            Some((_, members)) => members.push(i),
            None => groups.push((s, vec![i])),
        }
    }
    groups
}

/// Puts the per-stream answers back in item order.
pub(super) fn scatter(
    groups: &[(&str, Vec<usize>)],
    answers: Vec<Vec<i64>>,
    len: usize,
) -> Result<Vec<i64>, QueueError> {
    let mut out = vec![0; len];
    if answers.len() != groups.len() {
        return Err(QueueError::Corrupt(format!(
            "{} script answers for {} streams",
            answers.len(),
            groups.len()
        )));
    }
    for ((_, members), codes) in groups.iter().zip(answers) {
        if codes.len() != members.len() {
            return Err(QueueError::Corrupt(format!(
                "{} script answers for {} jobs",
                codes.len(),
                members.len()
            )));
        }
        for (&i, c) in members.iter().zip(codes) {
            out[i] = c;
        }
    }
    Ok(out)
}
