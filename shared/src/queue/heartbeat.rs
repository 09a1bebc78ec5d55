//! Worker heartbeats: which workers serve which model right now.
//!
//! Every worker writes, every [`BEAT_EVERY`], its consumer name into one
//! sorted set per model it serves (`{ns}:workers:{model}`), scored by Redis's
//! clock in milliseconds, so hosts with skewed clocks still agree. The same
//! script prunes members older than [`RETAIN`] and sets the key to expire
//! after [`RETAIN`]: a worker that dies leaves at most a minute of garbage,
//! and a model nobody serves any more loses its key. A worker that shuts
//! down cleanly removes itself at once ([`leave`]).
//!
//! Readers ([`read_all`], the API's `/readyz` and `/metrics`) count the
//! members seen within [`FRESH_WITHIN`] (five missed beats), against Redis's
//! clock too, per model and as distinct workers over all models. The cost is one small script per worker every two seconds, and
//! one `ZRANGE` per model per reader.

use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionLike;

use super::QueueError;
use super::keys::Keys;
use super::scripts::BEAT;

/// How often a worker beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);
/// A worker whose last beat is at most this old counts as serving.
pub const FRESH_WITHIN: Duration = Duration::from_secs(10);
/// Members older than this are pruned; the key expires this long after the
/// last beat of any worker.
pub const RETAIN: Duration = Duration::from_secs(60);

/// Records one heartbeat of `consumer` for every model in `models`, in one
/// round trip.
pub async fn beat(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    consumer: &str,
    models: &[String],
) -> Result<(), QueueError> {
    if models.is_empty() {
        return Ok(());
    }
    let mut inv = BEAT.prepare_invoke();
    for model in models {
        inv.key(keys.workers(model));
    }
    inv.arg(consumer).arg(duration_ms(RETAIN));
    inv.invoke_async::<()>(conn).await?;
    Ok(())
}

/// Removes `consumer`'s heartbeats, so readiness reflects a clean shutdown
/// at once instead of after [`FRESH_WITHIN`].
pub async fn leave(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    consumer: &str,
    models: &[String],
) -> Result<(), QueueError> {
    let mut pipe = redis::pipe();
    for model in models {
        pipe.cmd("ZREM")
            .arg(keys.workers(model))
            .arg(consumer)
            .ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// The workers of one model, as of one reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelWorkers {
    pub model: String,
    /// Workers whose last beat is within [`FRESH_WITHIN`].
    pub fresh: u64,
    /// Age of the most recent beat of any worker, if one is remembered
    /// (members are kept for [`RETAIN`]).
    pub last_beat_age_ms: Option<u64>,
}

/// Adds the read of `model`'s heartbeats to a pipeline; its reply goes to
/// [`parse`].
pub fn queue_read(pipe: &mut redis::Pipeline, keys: &Keys, model: &str) {
    pipe.cmd("ZRANGE")
        .arg(keys.workers(model))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES");
}

/// Interprets a [`queue_read`] reply at Redis time `now_ms`. A reply that is
/// not a member/score list (say, an error) reads as no workers.
pub fn parse(model: &str, reply: &Value, now_ms: i64) -> ModelWorkers {
    let fresh_from = fresh_from(now_ms);
    let scores: Vec<i64> = member_scores(reply).into_iter().map(|(_, s)| s).collect();
    let last = scores.iter().copied().max();
    ModelWorkers {
        model: model.to_owned(),
        fresh: scores.iter().filter(|&&s| s >= fresh_from).count() as u64,
        last_beat_age_ms: last.map(|t| u64::try_from(now_ms - t).unwrap_or(0)),
    }
}

/// The oldest beat that still counts at Redis time `now_ms`.
fn fresh_from(now_ms: i64) -> i64 {
    now_ms - duration_ms(FRESH_WITHIN) as i64
}

/// The members and scores of a `ZRANGE ... WITHSCORES` reply: flat (RESP2)
/// or pairs (RESP3).
fn member_scores<'a>(reply: &'a Value) -> Vec<(&'a [u8], i64)> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    fn member(v: &Value) -> Option<&[u8]> {
        match v {
            Value::BulkString(b) => Some(b.as_slice()),
            Value::SimpleString(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
    let score = |v: &Value| -> Option<i64> {
        let f = match v {
            Value::Double(f) => *f,
            Value::Int(n) => *n as f64,
            Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
            Value::SimpleString(s) => s.parse().ok()?,
            _ => return None,
        };
        Some(f as i64)
    };
    let entry = |m: &'a Value, s: &Value| Some((member(m)?, score(s)?));
    if items.iter().all(|i| matches!(i, Value::Array(_))) {
        items
            .iter()
            .filter_map(|pair| match pair {
                Value::Array(p) if p.len() == 2 => entry(&p[0], &p[1]),
                _ => None,
            })
            .collect()
    } else {
        items
            .chunks_exact(2)
            .filter_map(|p| entry(&p[0], &p[1]))
            .collect()
    }
}

/// Redis's clock in Unix milliseconds, from a `TIME` reply.
pub fn parse_time(reply: &Value) -> Option<i64> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let num = |v: &Value| -> Option<i64> {
        match v {
            Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            Value::SimpleString(s) => s.parse().ok(),
            Value::Int(n) => Some(*n),
            _ => None,
        }
    };
    match parts.as_slice() {
        [secs, micros] => Some(num(secs)? * 1000 + num(micros)? / 1000),
        _ => None,
    }
}

/// One reading of every published model's heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeats {
    /// Every published model with its workers, sorted by model name.
    pub models: Vec<ModelWorkers>,
    /// Distinct workers with a fresh beat for at least one model (a worker
    /// serving three models counts once).
    pub fresh_workers: u64,
}

/// Every published model (`{ns}:models`) with its workers. Two round trips:
/// the model list with Redis's clock, then every model's heartbeats.
pub async fn read_all(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
) -> Result<Heartbeats, QueueError> {
    let (time, mut models): (Value, Vec<String>) = redis::pipe()
        .cmd("TIME")
        .cmd("HKEYS")
        .arg(keys.models())
        .query_async(conn)
        .await?;
    let now_ms =
        parse_time(&time).ok_or_else(|| QueueError::Corrupt(format!("TIME reply {time:?}")))?;
    models.sort();
    if models.is_empty() {
        return Ok(Heartbeats {
            models: Vec::new(),
            fresh_workers: 0,
        });
    }
    let mut pipe = redis::pipe();
    for model in &models {
        queue_read(&mut pipe, keys, model);
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    Ok(Heartbeats {
        models: models
            .iter()
            .zip(&replies)
            .map(|(m, r)| parse(m, r, now_ms))
            .collect(),
        fresh_workers: fresh_workers(&replies, now_ms),
    })
}

/// Distinct members with a fresh score across [`queue_read`] replies.
fn fresh_workers(replies: &[Value], now_ms: i64) -> u64 {
    let fresh_from = fresh_from(now_ms);
    let fresh: std::collections::HashSet<&[u8]> = replies
        .iter()
        .flat_map(member_scores)
        .filter(|&(_, s)| s >= fresh_from)
        .map(|(m, _)| m)
        .collect();
    fresh.len() as u64
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn fresh_workers_and_last_beat_age_in_both_protocols() {
        let now = 1_000_000;
        let resp2 = Value::Array(vec![
            bulk("old"),
            bulk("985000"),
            bulk("a"),
            bulk("991000"),
            bulk("b"),
            bulk("999500"),
        ]);
        assert_eq!(
            parse("m", &resp2, now),
            ModelWorkers {
                model: "m".into(),
                fresh: 2,
                last_beat_age_ms: Some(500),
            }
        );
        let resp3 = Value::Array(vec![
            Value::Array(vec![bulk("a"), Value::Double(989_999.0)]),
            Value::Array(vec![bulk("b"), Value::Double(990_000.0)]),
        ]);
        let w = parse("m", &resp3, now);
        assert_eq!((w.fresh, w.last_beat_age_ms), (1, Some(10_000)));
    }

    #[test]
    fn a_worker_serving_several_models_counts_once() {
        let now = 1_000_000;
        let a = Value::Array(vec![bulk("w1"), bulk("999000"), bulk("w2"), bulk("998000")]);
        let b = Value::Array(vec![
            Value::Array(vec![bulk("w1"), Value::Double(999_500.0)]),
            Value::Array(vec![bulk("w3"), Value::Double(980_000.0)]),
        ]);
        // w1 and w2 are fresh; w3's beat is older than the window.
        assert_eq!(fresh_workers(&[a, b, Value::Nil], now), 2);
        assert_eq!(fresh_workers(&[], now), 0);
    }

    #[test]
    fn no_heartbeats_read_as_no_workers() {
        for reply in [Value::Array(vec![]), Value::Nil] {
            let w = parse("m", &reply, 5);
            assert_eq!((w.fresh, w.last_beat_age_ms), (0, None));
        }
    }

    #[test]
    fn time_replies_become_milliseconds() {
        let t = Value::Array(vec![bulk("1763792262"), bulk("123456")]);
        assert_eq!(parse_time(&t), Some(1_763_792_262_123));
        assert_eq!(parse_time(&Value::Nil), None);
    }
}
