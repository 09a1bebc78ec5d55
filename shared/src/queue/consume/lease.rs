//! A running job's lease, renewed while it runs (and how a cancel is seen),
//! and its progress, written only for the current attempt.

use redis::aio::ConnectionLike;
use uuid::Uuid;

use super::{by_stream, scatter};
use crate::queue::QueueError;
use crate::queue::keys::{GROUP, Keys, WebhookKey, partition_of};
use crate::queue::scripts::{Durability, PROGRESS, RENEW, invoke_all};

/// One running job whose lease [`renew`] keeps.
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub stream: &'a str,
    pub entry_id: &'a str,
    pub job_id: Uuid,
}

/// What [`renew`] found for one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// Still this consumer's; renewed.
    Held,
    /// Renewed, and a client asked to cancel the job: stop it.
    CancelRequested,
    /// Another consumer took the entry over (or it was acknowledged).
    Lost,
}

/// Renews the lease of entries this consumer still owns by resetting their
/// idle time (XCLAIM JUSTID, which does not count as a delivery), and tells
/// whether a client asked to cancel each job meanwhile: the renewal is the
/// worker's periodic look at its running jobs, so a cancel costs no extra
/// round trip. An entry another consumer has taken over is left alone:
/// stealing it back would only make the two workers fight over it.
///
/// Renews the leases of `leases` held by `consumer`; answers in their order.
pub async fn renew(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    consumer: &str,
    leases: &[Lease<'_>],
) -> Result<Vec<Renewed>, QueueError> {
    let groups = by_stream(leases.iter().map(|l| l.stream));
    let invocations: Vec<_> = groups
        .iter()
        .map(|(stream, members)| {
            let mut inv = RENEW.key(*stream);
            inv.arg(GROUP).arg(consumer);
            for &i in members {
                inv.key(keys.job(&leases[i].job_id)).arg(leases[i].entry_id);
            }
            inv
        })
        .collect();
    let streams: Vec<&str> = groups.iter().map(|(s, _)| *s).collect();
    let answers: Vec<Vec<i64>> =
        invoke_all(conn, &RENEW, &streams, &invocations, Durability::Async).await?;
    Ok(scatter(&groups, answers, leases.len())?
        .into_iter()
        .map(|c| match c {
            2 => Renewed::CancelRequested,
            1 => Renewed::Held,
            _ => Renewed::Lost,
        })
        .collect())
}

/// Writes a running job's progress, only while `attempt` is the job's
/// current attempt and it is still running: a worker that lost the job to a
/// takeover cannot overwrite the new attempt's progress.
///
/// Stores `progress_json` as the job's `progress` field (served by
/// `GET /v1/jobs/{id}`); false when the attempt is no longer current.
pub async fn write_progress(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    job_id: &Uuid,
    attempt: u32,
    progress_json: &str,
) -> Result<bool, QueueError> {
    let written: i64 = PROGRESS
        .key(keys.job(job_id))
        .key(keys.webhooks(partition_of(job_id), WebhookKey::Outbox))
        .arg(attempt)
        .arg(progress_json)
        // Published only for a job an event stream follows (see
        // `lua/progress.lua`).
        .arg(keys.job_finished_channel())
        .arg(job_id.to_string())
        .invoke_async(conn)
        .await?;
    Ok(written == 1)
}
