//! Cheap queue gauges for scraping: per model stream length, pending
//! entries, consumer-group lag, oldest pending age, consumers and fresh
//! workers, plus the delayed-retry and dead-letter totals.
//!
//! [`sample`] costs two pipelined round trips whatever the number of models
//! (the model list with Redis's clock and the totals, then per model `XLEN`,
//! `XINFO GROUPS`, the `XPENDING` summary and the heartbeat set), every
//! command O(1) or O(consumers). `jobctl stats` ([`super::admin::queue_stats`])
//! reads the same group fields through [`workers_group`] and adds the
//! per-consumer detail that is too dear to take on every scrape.

use redis::Value;
use redis::aio::ConnectionLike;

use super::QueueError;
use super::admin::{count_after, entry_id_ms, field_map, value_string, value_u64};
use super::heartbeat::{self, ModelWorkers};
use super::keys::{GROUP, Keys, TRAIN};

/// The fields of the `workers` group in an `XINFO GROUPS` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered; `None` when Redis cannot tell (entries
    /// deleted after the group's position), see [`lag`].
    pub lag: Option<u64>,
    pub consumers: u64,
    pub last_delivered_id: String,
}

/// The `workers` group of an `XINFO GROUPS` reply, if the stream has it.
pub fn workers_group(groups: Vec<Value>) -> Option<GroupInfo> {
    let g = groups
        .into_iter()
        .map(field_map)
        .find(|g| g.get("name").and_then(value_string).as_deref() == Some(GROUP))?;
    Some(GroupInfo {
        pending: g.get("pending").and_then(value_u64).unwrap_or(0),
        lag: g.get("lag").and_then(value_u64),
        consumers: g.get("consumers").and_then(value_u64).unwrap_or(0),
        last_delivered_id: g
            .get("last-delivered-id")
            .and_then(value_string)
            .unwrap_or_else(|| "0-0".to_owned()),
    })
}

/// The group's lag; where Redis reports none (its counter is unreliable
/// after deletions), the entries after the last delivered one, counted.
pub async fn lag(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &GroupInfo,
) -> Result<u64, QueueError> {
    match group.lag {
        Some(lag) => Ok(lag),
        None => count_after(conn, stream, &group.last_delivered_id).await,
    }
}

/// One model's stream, as of one [`sample`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSample {
    pub model: String,
    /// XLEN: acknowledged entries included until trimmed.
    pub length: u64,
    pub pending: u64,
    pub lag: u64,
    /// Age (Redis clock) of the oldest delivered, unacknowledged entry;
    /// 0 when nothing is pending.
    pub oldest_pending_age_ms: u64,
    pub consumers: u64,
    pub workers: ModelWorkers,
}

/// Every published model's stream, and the namespace-wide totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Sorted by model name.
    pub streams: Vec<StreamSample>,
    /// Jobs waiting out a retry back-off (`{ns}:delayed`).
    pub delayed: u64,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
}

/// Samples the queue gauges of every model published in `{ns}:models`, and
/// of the training stream once it exists (reported as model `.train`, so
/// training workers can be scaled on its lag like any model's).
pub async fn sample(conn: &mut impl ConnectionLike, keys: &Keys) -> Result<Sample, QueueError> {
    let (time, mut models, dead_letters, delayed, training): (Value, Vec<String>, u64, u64, bool) =
        redis::pipe()
            .cmd("TIME")
            .cmd("HKEYS")
            .arg(keys.models())
            .cmd("XLEN")
            .arg(keys.dead_letters(0))
            .cmd("ZCARD")
            .arg(keys.delayed(TRAIN, 0))
            .cmd("EXISTS")
            .arg(keys.stream(TRAIN, 0))
            .query_async(conn)
            .await?;
    if training {
        models.push(TRAIN.to_owned());
    }
    let now_ms = heartbeat::parse_time(&time)
        .ok_or_else(|| QueueError::Corrupt(format!("TIME reply {time:?}")))?;
    models.sort();

    const PER_MODEL: usize = 4;
    let mut pipe = redis::pipe();
    // A model published before any job has no stream yet: XINFO and XPENDING
    // then fail for that model only, which reads as an empty queue.
    pipe.ignore_errors();
    for model in &models {
        let stream = keys.stream(model, 0);
        pipe.cmd("XLEN").arg(&stream);
        pipe.cmd("XINFO").arg("GROUPS").arg(&stream);
        pipe.cmd("XPENDING").arg(&stream).arg(GROUP);
        heartbeat::queue_read(&mut pipe, keys, model);
    }
    let replies: Vec<Value> = if models.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(conn).await?
    };
    if replies.len() != models.len() * PER_MODEL {
        return Err(QueueError::Corrupt(format!(
            "stream stats: {} replies for {} models",
            replies.len(),
            models.len()
        )));
    }

    let mut streams = Vec::with_capacity(models.len());
    for (model, r) in models.into_iter().zip(replies.chunks_exact(PER_MODEL)) {
        let length = value_u64(&r[0]).unwrap_or(0);
        let group = match &r[1] {
            Value::Array(groups) => workers_group(groups.clone()),
            _ => None,
        };
        let (pending, lag, consumers) = match &group {
            Some(g) => (
                g.pending,
                lag(conn, &keys.stream(&model, 0), g).await?,
                g.consumers,
            ),
            // No worker ever joined: nothing was delivered, everything waits.
            None => (0, length, 0),
        };
        streams.push(StreamSample {
            length,
            pending,
            lag,
            consumers,
            oldest_pending_age_ms: oldest_pending_age_ms(&r[2], now_ms),
            workers: heartbeat::parse(&model, &r[3], now_ms),
            model,
        });
    }
    Ok(Sample {
        streams,
        delayed,
        dead_letters,
    })
}

/// From an `XPENDING key group` summary (`[count, smallest id, greatest
/// id, consumers]`): the age of the smallest id, i.e. of the oldest pending
/// entry.
fn oldest_pending_age_ms(summary: &Value, now_ms: i64) -> u64 {
    let Value::Array(parts) = summary else {
        return 0;
    };
    parts
        .get(1)
        .and_then(value_string)
        .and_then(|id| entry_id_ms(&id))
        .and_then(|t| u64::try_from(now_ms - t).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_workers_group_is_found_among_others() {
        let group = |name: &str, lag: Value| {
            Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("consumers"),
                Value::Int(2),
                bulk("pending"),
                Value::Int(3),
                bulk("last-delivered-id"),
                bulk("5-0"),
                bulk("lag"),
                lag,
            ])
        };
        let g = workers_group(vec![
            group("other", Value::Int(9)),
            group(GROUP, Value::Int(4)),
        ]);
        assert_eq!(
            g,
            Some(GroupInfo {
                pending: 3,
                lag: Some(4),
                consumers: 2,
                last_delivered_id: "5-0".into(),
            })
        );
        let unknown_lag = workers_group(vec![group(GROUP, Value::Nil)]);
        assert_eq!(unknown_lag.and_then(|g| g.lag), None);
        assert_eq!(workers_group(vec![group("other", Value::Int(1))]), None);
    }

    #[test]
    fn oldest_pending_age_comes_from_the_smallest_id() {
        let summary = Value::Array(vec![
            Value::Int(2),
            bulk("1000-0"),
            bulk("1500-3"),
            Value::Array(vec![]),
        ]);
        assert_eq!(oldest_pending_age_ms(&summary, 4000), 3000);
        let none = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(oldest_pending_age_ms(&none, 4000), 0);
        assert_eq!(oldest_pending_age_ms(&Value::Nil, 1), 0);
    }
}
