//! Deliveries: new entries of a read group's streams (`XREADGROUP`, on a
//! connection that may block), takeovers of expired leases (`XAUTOCLAIM`)
//! and the plain acknowledgement of entries that carry no job.

use redis::aio::ConnectionLike;
use redis::streams::{StreamId, StreamReadReply};
use uuid::Uuid;

use crate::model::tenant_of;
use crate::queue::QueueError;
use crate::queue::keys::{GROUP, Keys};
use crate::queue::wire::{EntryJob, JobEnvelope};

/// One stream entry handed to this consumer.
#[derive(Debug)]
pub struct Delivery {
    pub stream: String,
    pub entry_id: String,
    /// The `id` field; `None` only for an entry no API could have written.
    pub job_id: Option<Uuid>,
    /// The decoded payload, or why it could not be decoded.
    pub job: Result<JobEnvelope, String>,
}

impl Delivery {
    fn from_entry(stream: &str, entry: StreamId) -> Delivery {
        let EntryJob { job_id, job, .. } = EntryJob::read(&entry.map);
        Delivery {
            stream: stream.to_owned(),
            entry_id: entry.id,
            job_id,
            job,
        }
    }

    /// The model of the entry, from its stream key, readable even when the
    /// payload is not.
    pub fn model<'a>(&'a self, keys: &Keys) -> &'a str {
        keys.model_of_stream(&self.stream).unwrap_or("")
    }

    /// The tenant whose usage the job counts against: its model's. Control
    /// and training streams carry every tenant's jobs, so the payload's
    /// model decides; an undecodable payload falls back to the stream's.
    pub fn tenant<'a>(&'a self, keys: &Keys) -> &'a str {
        let model = match &self.job {
            Ok(job) => job.model.as_str(),
            Err(_) => self.model(keys),
        };
        tenant_of(model)
    }
}

/// Reads up to `count` new entries per stream for `consumer`, blocking up to
/// `block_ms` when there are none. The connection must not be shared with
/// latency-sensitive traffic while it blocks, and its response timeout must
/// exceed `block_ms`.
pub async fn read_new(
    conn: &mut impl ConnectionLike,
    streams: &[String],
    consumer: &str,
    count: usize,
    block_ms: u64,
) -> Result<Vec<Delivery>, QueueError> {
    if streams.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(streams);
    for _ in streams {
        cmd.arg(">");
    }
    let reply: Option<StreamReadReply> = cmd.query_async(conn).await?;
    Ok(reply
        .map(|r| r.keys)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|key| {
            let stream = key.key;
            key.ids
                .into_iter()
                .map(move |entry| Delivery::from_entry(&stream, entry))
        })
        .collect())
}

/// Takes over up to `count` entries of `stream` whose lease ran out (idle
/// longer than `lease_ms`), whoever held them. Entries whose payload was
/// deleted meanwhile are dropped from the pending list by Redis itself.
pub async fn reclaim(
    conn: &mut impl ConnectionLike,
    stream: &str,
    consumer: &str,
    lease_ms: u64,
    count: usize,
) -> Result<Vec<Delivery>, QueueError> {
    let claimed =
        crate::queue::paging::autoclaim(conn, stream, GROUP, consumer, lease_ms, count).await?;
    Ok(claimed
        .into_iter()
        .map(|entry| Delivery::from_entry(stream, entry))
        .collect())
}

/// Acknowledges entries that carry no runnable job (no job id at all).
pub async fn ack(
    conn: &mut impl ConnectionLike,
    stream: &str,
    entry_ids: &[&str],
) -> Result<(), QueueError> {
    if entry_ids.is_empty() {
        return Ok(());
    }
    redis::cmd("XACK")
        .arg(stream)
        .arg(GROUP)
        .arg(entry_ids)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}
