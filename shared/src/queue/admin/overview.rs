//! `jobctl stats`: every model's queue. The gauges themselves (length, lag,
//! pending, oldest pending) are [`crate::queue::stats::StreamGauges`], read
//! exactly as `/metrics` reads them; this adds what is too dear for every
//! scrape: each consumer's pending count and idle time, the models known
//! only from a stream or a dead letter, and dead letters per model.

use std::collections::BTreeSet;

use crate::redis_conn::Routed;
use redis::Value;
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
    /// Entries in the dead-letter streams, all models and partitions.
    pub dead_letters: u64,
}

/// Statistics of every model known from published signatures, from existing
/// work streams (a model whose workers are all gone still has a queue) or
/// from dead letters, added up over the partitions (lengths, lags, pending
/// entries and each consumer's pending entries are sums; the oldest pending
/// entry is the oldest of any partition). Read-only: the model list, the
/// dead letters, then one pipelined round trip per partition (one slot
/// each) for every model's queue.
pub async fn queue_stats(conn: &mut impl Routed, keys: &Keys) -> Result<QueueOverview, QueueError> {
    let mut models: BTreeSet<String> = redis::cmd("HKEYS")
        .arg(keys.models())
        .query_async::<Vec<String>>(conn)
        .await?
        .into_iter()
        .collect();
    models.extend(stream_models(conn, keys).await?);

    let dead_total = dead::total(conn, keys).await?;
    let dead_by_model = dead::count_by_model(conn, keys, dead_total, DEAD_COUNT_LIMIT).await?;
    if let Some(counts) = &dead_by_model {
        models.extend(counts.keys().filter(|m| !m.is_empty()).cloned());
    }

    let now_ms = stats::redis_now_ms(conn).await?;
    let mut queues: Vec<QueueStats> = models
        .into_iter()
        .map(|model| QueueStats {
            stream: match keys.partitions() {
                1 => keys.stream(&model, 0),
                p => format!("{} (and {} more partitions)", keys.stream(&model, 0), p - 1),
            },
            dead_letters: dead_by_model
                .as_ref()
                .map(|c| c.get(&model).copied().unwrap_or(0)),
            model,
            stream_length: 0,
            group_exists: false,
            lag: 0,
            pending: 0,
            consumers: Vec::new(),
            oldest_pending: None,
        })
        .collect();
    if queues.is_empty() {
        return Ok(QueueOverview {
            queues,
            dead_letters: dead_total,
        });
    }
    const PER_MODEL: usize = GAUGE_READS + 1;
    for p in keys.all_partitions() {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for q in &queues {
            let stream = keys.stream(&q.model, p);
            stats::queue_gauge_reads(&mut pipe, &stream);
            pipe.cmd("XINFO").arg("CONSUMERS").arg(&stream).arg(GROUP);
        }
        let replies: Vec<Value> = pipe.query_async(conn).await?;
        if replies.len() != queues.len() * PER_MODEL {
            return Err(QueueError::Corrupt(format!(
                "queue stats: {} replies for {} models",
                replies.len(),
                queues.len()
            )));
        }
        for (q, r) in queues.iter_mut().zip(replies.chunks_exact(PER_MODEL)) {
            let (gauges, consumers) = r.split_at(GAUGE_READS);
            let g = stats::read_gauges(conn, &keys.stream(&q.model, p), gauges, now_ms).await?;
            q.stream_length += g.length;
            q.group_exists |= g.group_exists;
            q.lag += g.lag;
            q.pending += g.pending;
            if let Some(o) = g.oldest_pending
                && q.oldest_pending
                    .as_ref()
                    .is_none_or(|cur| o.age_ms > cur.age_ms)
            {
                q.oldest_pending = Some(o);
            }
            // No group, no consumers: XINFO CONSUMERS was refused.
            let found = stats::reply::<StreamInfoConsumersReply>(&consumers[0], "XINFO CONSUMERS")?
                .map(|r| r.consumers)
                .unwrap_or_default();
            for c in found {
                match q.consumers.iter_mut().find(|k| k.name == c.name) {
                    Some(k) => {
                        k.pending += c.pending as u64;
                        k.idle_ms = k.idle_ms.min(c.idle as u64);
                    }
                    None => q.consumers.push(ConsumerStats {
                        name: c.name,
                        pending: c.pending as u64,
                        idle_ms: c.idle as u64,
                    }),
                }
            }
        }
    }
    Ok(QueueOverview {
        queues,
        dead_letters: dead_total,
    })
}

/// Models that have a work stream in this namespace, in any partition
/// (each partition's streams are scanned on the node holding its slot).
async fn stream_models(conn: &mut impl Routed, keys: &Keys) -> Result<Vec<String>, QueueError> {
    let mut out = Vec::new();
    for p in keys.all_partitions() {
        out.extend(
            scan_keys(
                conn,
                keys.partition_slot(p),
                &keys.stream_pattern(p),
                "stream",
            )
            .await?
            .iter()
            .filter_map(|k| keys.model_of_stream(k))
            .filter(|m| !m.is_empty())
            .map(str::to_owned),
        );
    }
    Ok(out)
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
