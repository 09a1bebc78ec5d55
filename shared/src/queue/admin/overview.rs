//! `jobctl stats`: every model's queue. The gauges themselves (length, lag,
//! pending, oldest pending) are [`crate::queue::stats::StreamGauges`], read
//! exactly as `/metrics` reads them; this adds what is too dear for every
//! scrape: each consumer's pending count and idle time, the models known
//! only from a stream or a dead letter, and dead letters per model.

use std::collections::BTreeSet;

use redis::Value;
use redis::aio::ConnectionLike;
use redis::streams::StreamInfoConsumersReply;

use super::dead;
use crate::queue::QueueError;
use crate::queue::keys::{GROUP, Keys};
use crate::queue::paging::scan_keys;
use crate::queue::stats::{self, GAUGE_READS};

pub use crate::queue::stats::OldestPending;

/// Per-model dead-letter counts need every entry read once; above this many
/// dead letters [`queue_stats`] reports only the total.
const DEAD_COUNT_LIMIT: u64 = 10_000;

/// One consumer of a model's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStats {
    pub name: String,
    /// Entries delivered to it and not yet acknowledged.
    pub pending: u64,
    /// Milliseconds since it last read or claimed.
    pub idle_ms: u64,
}

/// One model's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    pub model: String,
    pub stream: String,
    /// Entries in the stream (XLEN), acknowledged ones included until
    /// trimmed.
    pub stream_length: u64,
    /// Whether the `workers` group exists (a worker for it ever started).
    pub group_exists: bool,
    /// Entries not yet delivered to any consumer.
    pub lag: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    pub consumers: Vec<ConsumerStats>,
    pub oldest_pending: Option<OldestPending>,
    /// Dead letters of this model; `None` when the dead-letter stream is
    /// too long to count per model (see [`QueueOverview::dead_letters`]).
    pub dead_letters: Option<u64>,
}

impl QueueStats {
    /// Jobs waiting or running: what scaling decisions look at.
    pub fn depth(&self) -> u64 {
        self.lag + self.pending
    }
}

/// Every model's queue and the dead-letter total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOverview {
    /// Sorted by model name.
    pub queues: Vec<QueueStats>,
    /// Entries in `{ns}:dead`, all models.
    pub dead_letters: u64,
}

/// Statistics of every model known from published signatures, from existing
/// work streams (a model whose workers are all gone still has a queue) or
/// from dead letters. Read-only: the model list, the dead letters, then one
/// pipelined round trip for every model's queue.
pub async fn queue_stats(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
) -> Result<QueueOverview, QueueError> {
    let mut models: BTreeSet<String> = redis::cmd("HKEYS")
        .arg(keys.models())
        .query_async::<Vec<String>>(conn)
        .await?
        .into_iter()
        .collect();
    models.extend(stream_models(conn, keys).await?);

    let dead_total: u64 = redis::cmd("XLEN")
        .arg(keys.dead_letters(0))
        .query_async(conn)
        .await?;
    let dead_by_model = dead::count_by_model(conn, keys, dead_total, DEAD_COUNT_LIMIT).await?;
    if let Some(counts) = &dead_by_model {
        models.extend(counts.keys().filter(|m| !m.is_empty()).cloned());
    }

    let now_ms = stats::redis_now_ms(conn).await?;
    const PER_MODEL: usize = GAUGE_READS + 1;
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for model in &models {
        let stream = keys.stream(model, 0);
        stats::queue_gauge_reads(&mut pipe, &stream);
        pipe.cmd("XINFO").arg("CONSUMERS").arg(&stream).arg(GROUP);
    }
    let replies: Vec<Value> = if models.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(conn).await?
    };
    if replies.len() != models.len() * PER_MODEL {
        return Err(QueueError::Corrupt(format!(
            "queue stats: {} replies for {} models",
            replies.len(),
            models.len()
        )));
    }

    let mut queues = Vec::with_capacity(models.len());
    for (model, r) in models.into_iter().zip(replies.chunks_exact(PER_MODEL)) {
        let stream = keys.stream(&model, 0);
        let (gauges, consumers) = r.split_at(GAUGE_READS);
        let g = stats::read_gauges(conn, &stream, gauges, now_ms).await?;
        // No group, no consumers: XINFO CONSUMERS was refused.
        let consumers = stats::reply::<StreamInfoConsumersReply>(&consumers[0], "XINFO CONSUMERS")?
            .map(|r| r.consumers)
            .unwrap_or_default()
            .into_iter()
            .map(|c| ConsumerStats {
                name: c.name,
                pending: c.pending as u64,
                idle_ms: c.idle as u64,
            })
            .collect();
        let dead_letters = dead_by_model
            .as_ref()
            .map(|c| c.get(&model).copied().unwrap_or(0));
        queues.push(QueueStats {
            model,
            stream,
            stream_length: g.length,
            group_exists: g.group_exists,
            lag: g.lag,
            pending: g.pending,
            consumers,
            oldest_pending: g.oldest_pending,
            dead_letters,
        });
    }
    Ok(QueueOverview {
        queues,
        dead_letters: dead_total,
    })
}

/// Models that have a work stream in this namespace.
async fn stream_models(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
) -> Result<Vec<String>, QueueError> {
    Ok(scan_keys(conn, &keys.stream_pattern(0), "stream")
        .await?
        .iter()
        .filter_map(|k| keys.model_of_stream(k))
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use crate::queue::keys::glob_escape;

    #[test]
    fn glob_metacharacters_are_escaped() {
        // A namespace with `*` must not make the stream scan match other
        // namespaces' streams.
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("infer:stream:"), "infer:stream:");
    }
}
