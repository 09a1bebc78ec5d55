//! The `watched` mark of a job record: what makes a job's scripts publish
//! every transition, not only its end.
//!
//! Workers publish a job's id on `{ns}:events:job-finished` when it ends,
//! which every long-poll needs. An event stream (`GET /v1/jobs/{id}/events`)
//! also wants the start, each progress write and a retry; publishing those
//! for every job would cost Redis a `PUBLISH` per transition that nobody
//! listens to. So the API marks the jobs it streams ([`watch_job`]), and the
//! start, progress and finish scripts read the mark in the `HMGET` they do
//! anyway and publish only when it is set. The mark stays with the record
//! (it expires with it): a stream that reconnects finds it set.

use redis::aio::ConnectionLike;
use uuid::Uuid;

use super::{Keys, QueueError};
use crate::job::JobRecord;
use crate::queue::scripts::WATCH;

/// Marks the job watched and reads its record in the same atomic step, so
/// every transition after the read is published; `None` for an unknown or
/// expired id (no record is created).
pub async fn watch_job(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    id: &Uuid,
) -> Result<Option<JobRecord>, QueueError> {
    let values: Vec<Option<String>> = WATCH
        .key(keys.job(id))
        .arg(&JobRecord::FIELDS[..])
        .invoke_async(conn)
        .await?;
    if values.is_empty() {
        return Ok(None);
    }
    JobRecord::from_values(*id, values).map_err(QueueError::Corrupt)
}
