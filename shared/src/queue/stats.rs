//! Queue gauges. [`StreamGauges`] is the one reading of a stream's length,
//! lag, pending entries and oldest pending entry: [`sample`] takes it for
//! every model on each `/metrics` scrape (with the heartbeats and the
//! delayed and dead-letter totals), and `jobctl stats`
//! ([`super::admin::queue_stats`]) takes the same reading and adds detail
//! too dear for every scrape.
//!
//! [`sample`] costs a few round trips whatever the number of models (the
//! clock, the model list, one pipeline per partition, the heartbeats); none
//! of those commands walks a stream or the pending list. Only a lag Redis cannot
//! tell costs more (see [`lag`]).
//!
//! Every reply is read through the redis crate's types
//! (`StreamInfoGroupsReply`, `StreamPendingCountReply`, tuples); only the
//! heartbeat set's reply is handed on as a `Value`, to
//! [`heartbeat::parse`], which owns its format.

use redis::aio::ConnectionLike;
use redis::streams::{StreamInfoGroup, StreamInfoGroupsReply, StreamPendingCountReply};
use redis::{FromRedisValue, RedisResult, Value};

use super::QueueError;
use super::heartbeat::{self, ModelWorkers};
use super::keys::{CONTROL, GROUP, Keys, TRAIN};
use super::paging::{count_after, entry_id_ms};

/// The oldest entry delivered but not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldestPending {
    pub entry_id: String,
    pub consumer: String,
    /// Time since it was enqueued (Redis clock: now − the entry id's time).
    pub age_ms: u64,
    /// Time since it was last delivered (its lease clock).
    pub idle_ms: u64,
    pub deliveries: u64,
}

/// One stream as its `workers` group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamGauges {
    /// XLEN: acknowledged entries included until trimmed.
    pub length: u64,
    /// Whether the `workers` group exists (a worker for it ever started).
    pub group_exists: bool,
    /// Entries not yet delivered to any consumer.
    pub lag: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// Consumers the group knows (registered on first delivery, kept until
    /// deleted).
    pub consumers: u64,
    pub oldest_pending: Option<OldestPending>,
}

impl StreamGauges {
    /// 0 when nothing is pending.
    pub fn oldest_pending_age_ms(&self) -> u64 {
        self.oldest_pending.as_ref().map_or(0, |p| p.age_ms)
    }
}

/// Replies [`queue_gauge_reads`] adds to a pipeline.
pub(super) const GAUGE_READS: usize = 3;

/// Adds the reads of one stream's gauges to `pipe`, which must run with
/// `ignore_errors`: a model published before its first job has no stream
/// (XINFO fails) and a stream no worker joined has no group (XPENDING
/// fails), which must read as an empty or waiting queue for that stream
/// only. [`read_gauges`] decodes the replies.
pub(super) fn queue_gauge_reads(pipe: &mut redis::Pipeline, stream: &str) {
    pipe.cmd("XLEN").arg(stream);
    pipe.cmd("XINFO").arg("GROUPS").arg(stream);
    // Extended form, first entry only: the smallest pending id is the
    // oldest pending entry, and this costs less than the summary form,
    // which walks every consumer.
    pipe.cmd("XPENDING")
        .arg(stream)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(1);
}

/// The gauges of `stream` from the [`GAUGE_READS`] replies of
/// [`queue_gauge_reads`], ages against Redis time `now_ms`. May read more
/// when Redis cannot tell the lag (see [`lag`]).
pub(super) async fn read_gauges(
    conn: &mut impl ConnectionLike,
    stream: &str,
    replies: &[Value],
    now_ms: i64,
) -> Result<StreamGauges, QueueError> {
    let [length, groups, oldest] = replies else {
        return Err(QueueError::Corrupt(format!(
            "{stream}: {} gauge replies, expected {GAUGE_READS}",
            replies.len()
        )));
    };
    let length: u64 = reply(length, "XLEN")?.unwrap_or(0);
    let group = reply::<StreamInfoGroupsReply>(groups, "XINFO GROUPS")?
        .and_then(|r| r.groups.into_iter().find(|g| g.name == GROUP));
    let Some(group) = group else {
        // No worker ever joined: nothing was delivered, everything waits.
        return Ok(StreamGauges {
            length,
            group_exists: false,
            lag: length,
            pending: 0,
            consumers: 0,
            oldest_pending: None,
        });
    };
    let oldest = reply::<StreamPendingCountReply>(oldest, "XPENDING")?
        .and_then(|r| r.ids.into_iter().next())
        .map(|p| OldestPending {
            age_ms: age_ms(&p.id, now_ms),
            entry_id: p.id,
            consumer: p.consumer,
            idle_ms: p.last_delivered_ms as u64,
            deliveries: p.times_delivered as u64,
        });
    Ok(StreamGauges {
        length,
        group_exists: true,
        lag: lag(conn, stream, &group).await?,
        pending: group.pending as u64,
        consumers: group.consumers as u64,
        oldest_pending: oldest,
    })
}

/// The group's lag. Redis reports none after entries were deleted past the
/// group's position (its counter is then unreliable), and Redis before 7.0
/// has no `lag` field at all (the crate's `StreamInfoGroup::lag` is `None`
/// either way): the entries after the last delivered one are then counted,
/// in pages.
pub async fn lag(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &StreamInfoGroup,
) -> Result<u64, QueueError> {
    if let Some(lag) = group.lag {
        return Ok(lag as u64);
    }
    let after = match group.last_delivered_id.as_str() {
        "" => "0-0",
        id => id,
    };
    count_after(conn, stream, after).await
}

/// One reply of a pipeline run with `ignore_errors`, typed. A command Redis
/// refused for this key (no such key, no group, another type) reads as
/// `None`, i.e. nothing there; a Redis that is not serving, or a reply of
/// another shape, is an error.
pub(super) fn reply<T: FromRedisValue>(v: &Value, what: &str) -> Result<Option<T>, QueueError> {
    match redis::from_redis_value_ref::<RedisResult<T>>(v) {
        Ok(Ok(t)) => Ok(Some(t)),
        Ok(Err(e)) if super::redis_unavailable(&e) => Err(e.into()),
        Ok(Err(_)) => Ok(None),
        Err(e) => Err(QueueError::Corrupt(format!("{what} reply: {e}"))),
    }
}

/// How long ago, by Redis's clock, the entry was appended.
fn age_ms(entry_id: &str, now_ms: i64) -> u64 {
    entry_id_ms(entry_id)
        .and_then(|t| u64::try_from(now_ms - t).ok())
        .unwrap_or(0)
}

/// A `TIME` reply (seconds, microseconds) in Unix milliseconds.
fn unix_ms((secs, micros): (i64, i64)) -> i64 {
    secs * 1000 + micros / 1000
}

/// Redis's clock, the one stream entry ids are made from, so ages do not
/// depend on the reader's clock.
pub(super) async fn redis_now_ms(conn: &mut impl ConnectionLike) -> Result<i64, QueueError> {
    let time: (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(unix_ms(time))
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
    /// Jobs waiting out a retry back-off (every delayed set).
    pub delayed: u64,
    /// Entries in the dead-letter streams of every partition.
    pub dead_letters: u64,
}

/// Samples the queue gauges of every model published in `{ns}:models`, and
/// of the training stream once it exists (reported as model `.train`, so
/// training workers can be scaled on its lag like any model's), added up
/// over the partitions: lengths, lags, pending entries, delayed jobs and
/// dead letters are sums, the oldest pending age and the consumer count the
/// largest of any partition.
///
/// One pipelined round trip reads the models and their heartbeats (the
/// registry's slot), then one per partition reads its streams (each
/// partition is one slot, which a cluster requires of a pipeline).
pub async fn sample(conn: &mut impl ConnectionLike, keys: &Keys) -> Result<Sample, QueueError> {
    let now_ms = redis_now_ms(conn).await?;
    let mut models: Vec<String> = redis::cmd("HKEYS")
        .arg(keys.models())
        .query_async(conn)
        .await?;
    models.sort();
    models.push(TRAIN.to_owned());

    let mut totals = Sample {
        streams: models
            .iter()
            .map(|m| StreamSample {
                model: m.clone(),
                length: 0,
                pending: 0,
                lag: 0,
                oldest_pending_age_ms: 0,
                consumers: 0,
                workers: ModelWorkers {
                    model: m.clone(),
                    fresh: 0,
                    last_beat_age_ms: None,
                },
            })
            .collect(),
        delayed: 0,
        dead_letters: 0,
    };
    let mut training_exists = false;
    for p in keys.all_partitions() {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("XLEN").arg(keys.dead_letters(p));
        pipe.cmd("EXISTS").arg(keys.stream(TRAIN, p));
        for model in models.iter().map(String::as_str).chain([CONTROL]) {
            pipe.cmd("ZCARD").arg(keys.delayed(model, p));
        }
        for model in &models {
            queue_gauge_reads(&mut pipe, &keys.stream(model, p));
        }
        let replies: Vec<Value> = pipe.query_async(conn).await?;
        let heads = 2 + models.len() + 1;
        if replies.len() != heads + models.len() * GAUGE_READS {
            return Err(QueueError::Corrupt(format!(
                "stream stats: {} replies for {} models",
                replies.len(),
                models.len()
            )));
        }
        totals.dead_letters += reply::<u64>(&replies[0], "XLEN")?.unwrap_or(0);
        training_exists |= reply::<bool>(&replies[1], "EXISTS")?.unwrap_or(false);
        for r in &replies[2..heads] {
            totals.delayed += reply::<u64>(r, "ZCARD")?.unwrap_or(0);
        }
        for (s, r) in totals
            .streams
            .iter_mut()
            .zip(replies[heads..].chunks_exact(GAUGE_READS))
        {
            let g = read_gauges(conn, &keys.stream(&s.model, p), r, now_ms).await?;
            s.length += g.length;
            s.pending += g.pending;
            s.lag += g.lag;
            s.consumers = s.consumers.max(g.consumers);
            s.oldest_pending_age_ms = s.oldest_pending_age_ms.max(g.oldest_pending_age_ms());
        }
    }
    if !training_exists {
        totals.streams.pop();
    }
    totals.streams.sort_by(|a, b| a.model.cmp(&b.model));

    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for s in &totals.streams {
        heartbeat::queue_read(&mut pipe, keys, &s.model);
    }
    let beats: Vec<Value> = if totals.streams.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(conn).await?
    };
    for (s, b) in totals.streams.iter_mut().zip(&beats) {
        // The heartbeat set's reply is read by its owner.
        s.workers = heartbeat::parse(&s.model, b, now_ms);
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// An `XINFO GROUPS` entry as RESP2 sends it: alternating names and
    /// values.
    fn group_resp2(name: &str, lag: Value) -> Value {
        Value::Array(vec![
            bulk("name"),
            bulk(name),
            bulk("consumers"),
            Value::Int(2),
            bulk("pending"),
            Value::Int(3),
            bulk("last-delivered-id"),
            bulk("5-0"),
            bulk("entries-read"),
            Value::Int(5),
            bulk("lag"),
            lag,
        ])
    }

    /// A refused command, as an `ignore_errors` pipeline hands it back.
    fn server_error(line: &str) -> Value {
        let v = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).expect("RESP");
        assert!(matches!(v, Value::ServerError(_)), "{v:?}");
        v
    }

    /// Gauges from replies alone: with a lag Redis tells, no further read.
    fn gauges(replies: &[Value]) -> Result<StreamGauges, QueueError> {
        struct NoConn;
        impl ConnectionLike for NoConn {
            fn req_packed_command<'a>(
                &'a mut self,
                _: &'a redis::Cmd,
            ) -> redis::RedisFuture<'a, Value> {
                panic!("no further read expected")
            }
            fn req_packed_commands<'a>(
                &'a mut self,
                _: &'a redis::Pipeline,
                _: usize,
                _: usize,
            ) -> redis::RedisFuture<'a, Vec<Value>> {
                panic!("no further read expected")
            }
            fn get_db(&self) -> i64 {
                0
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(read_gauges(&mut NoConn, "s", replies, 4_000))
    }

    #[test]
    fn the_workers_group_is_found_among_others() {
        let pending = Value::Array(vec![Value::Array(vec![
            bulk("1000-0"),
            bulk("worker-a"),
            Value::Int(250),
            Value::Int(2),
        ])]);
        let groups = Value::Array(vec![
            group_resp2("other", Value::Int(9)),
            group_resp2(GROUP, Value::Int(4)),
        ]);
        let g = gauges(&[Value::Int(7), groups, pending]).expect("gauges");
        assert_eq!(
            g,
            StreamGauges {
                length: 7,
                group_exists: true,
                lag: 4,
                pending: 3,
                consumers: 2,
                oldest_pending: Some(OldestPending {
                    entry_id: "1000-0".into(),
                    consumer: "worker-a".into(),
                    age_ms: 3_000,
                    idle_ms: 250,
                    deliveries: 2,
                }),
            }
        );
        assert_eq!(g.oldest_pending_age_ms(), 3_000);
    }

    #[test]
    fn resp3_maps_decode_like_resp2_arrays() {
        let group = Value::Map(vec![
            (Value::SimpleString("name".into()), bulk(GROUP)),
            (Value::SimpleString("consumers".into()), Value::Int(1)),
            (Value::SimpleString("pending".into()), Value::Int(0)),
            (Value::SimpleString("last-delivered-id".into()), bulk("9-0")),
            (Value::SimpleString("lag".into()), Value::Int(6)),
        ]);
        let g = gauges(&[
            Value::Int(6),
            Value::Array(vec![group]),
            Value::Array(vec![]),
        ])
        .expect("gauges");
        assert_eq!((g.lag, g.pending, g.consumers), (6, 0, 1));
        assert_eq!(g.oldest_pending, None);
        assert_eq!(g.oldest_pending_age_ms(), 0);
    }

    #[test]
    fn a_missing_stream_or_group_is_an_empty_or_waiting_queue() {
        let no_key = server_error("ERR no such key");
        let no_group = server_error("NOGROUP No such key 's' or consumer group 'workers'");
        let g = gauges(&[Value::Int(0), no_key, no_group.clone()]).expect("gauges");
        assert_eq!((g.length, g.lag, g.group_exists), (0, 0, false));

        let others = Value::Array(vec![group_resp2("other", Value::Int(1))]);
        let g = gauges(&[Value::Int(5), others, no_group]).expect("gauges");
        assert_eq!((g.lag, g.pending, g.group_exists), (5, 0, false));

        let wrong_type =
            server_error("WRONGTYPE Operation against a key holding the wrong kind of value");
        let g = gauges(&[wrong_type.clone(), wrong_type.clone(), wrong_type]).expect("gauges");
        assert_eq!((g.length, g.lag), (0, 0));
    }

    #[test]
    fn a_redis_that_is_not_serving_is_an_error_not_an_empty_queue() {
        let loading = server_error("LOADING Redis is loading the dataset in memory");
        let e = gauges(&[loading.clone(), loading.clone(), loading]).expect_err("loading");
        assert!(e.is_unavailable(), "{e}");
    }

    #[test]
    fn a_reply_of_another_shape_is_corrupt() {
        let e = gauges(&[bulk("seven"), Value::Array(vec![]), Value::Array(vec![])])
            .expect_err("corrupt");
        assert!(matches!(e, QueueError::Corrupt(_)), "{e}");
        assert!(gauges(&[Value::Int(1)]).is_err());
    }

    #[test]
    fn ages_count_back_from_redis_time() {
        assert_eq!(age_ms("1000-0", 4_000), 3_000);
        assert_eq!(age_ms("5000-0", 4_000), 0, "a clock step back is no age");
        assert_eq!(age_ms("junk", 4_000), 0);
        assert_eq!(unix_ms((1_763_792_262, 123_456)), 1_763_792_262_123);
    }
}
