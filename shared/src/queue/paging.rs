//! Cursors for reads that must never become one huge reply or one long
//! blocking command: a stream walked in XRANGE pages, the keyspace walked
//! with SCAN, and the time a stream entry id carries. The dead-letter
//! listing ([`super::admin`]) and the lag fallback ([`super::stats`]) both
//! walk streams through [`Pages`]. [`autoclaim`] is the one takeover of
//! unacknowledged entries, for the workers and the webhook dispatchers.

use redis::aio::ConnectionLike;
use redis::streams::{StreamId, StreamRangeReply};

use super::QueueError;

/// Entries fetched per XRANGE round trip: large enough that a big dead-letter
/// stream takes few round trips, small enough that no single reply (payloads
/// included) stalls Redis or the client.
pub(super) const PAGE: usize = 500;

/// Keys asked for per SCAN step: a hint to Redis, which may return more or
/// fewer; enough that a large keyspace takes few round trips.
const SCAN_COUNT: usize = 1000;

/// Walks a stream in pages of [`PAGE`] entries, oldest first.
pub(super) struct Pages {
    key: String,
    start: String,
    done: bool,
}

impl Pages {
    /// From the stream's first entry.
    pub(super) fn new(key: String) -> Pages {
        Pages {
            key,
            start: "-".to_owned(),
            done: false,
        }
    }

    /// From the first entry after `entry_id`, exclusive.
    pub(super) fn after(key: String, entry_id: &str) -> Pages {
        Pages {
            key,
            start: exclusive(entry_id),
            done: false,
        }
    }

    /// The next page, or `None` once the stream's end was reached.
    pub(super) async fn next(
        &mut self,
        conn: &mut impl ConnectionLike,
    ) -> Result<Option<Vec<StreamId>>, QueueError> {
        if self.done {
            return Ok(None);
        }
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(&self.start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        match reply.ids.last() {
            Some(last) if reply.ids.len() == PAGE => self.start = exclusive(&last.id),
            _ => self.done = true,
        }
        Ok(if reply.ids.is_empty() {
            None
        } else {
            Some(reply.ids)
        })
    }
}

/// A range bound that excludes `entry_id` (Redis 6.2+), so a page never
/// repeats the last entry of the one before.
fn exclusive(entry_id: &str) -> String {
    format!("({entry_id}")
}

/// Entries of `stream` after `after` (exclusive), counted page by page.
pub(super) async fn count_after(
    conn: &mut impl ConnectionLike,
    stream: &str,
    after: &str,
) -> Result<u64, QueueError> {
    let mut pages = Pages::after(stream.to_owned(), after);
    let mut n = 0u64;
    while let Some(page) = pages.next(conn).await? {
        n += page.len() as u64;
    }
    Ok(n)
}

/// Every key matching the glob `pattern` whose type is `kind` (`stream`,
/// `hash`, ...). SCAN rather than KEYS: a large keyspace is walked a step at
/// a time instead of blocking Redis for the whole walk. A key may be
/// reported twice if the keyspace is rehashed meanwhile.
///
/// The scan runs on the node that owns `slot`, where every key of that
/// slot's tag lives (on a cluster a keyless `SCAN` would go anywhere).
pub(super) async fn scan_keys(
    conn: &mut impl crate::redis_conn::Routed,
    slot: u16,
    pattern: &str,
    kind: &str,
) -> Result<Vec<String>, QueueError> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .arg("TYPE")
            .arg(kind);
        let reply = conn.on_slot(&cmd, slot).await?;
        let (next, batch): (u64, Vec<String>) =
            redis::from_redis_value(reply).map_err(redis::RedisError::from)?;
        out.extend(batch);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// The millisecond part of a stream entry id (`1763792262123-0`): when
/// Redis appended the entry, by Redis's clock.
pub(super) fn entry_id_ms(entry_id: &str) -> Option<i64> {
    entry_id.split('-').next()?.parse().ok()
}

/// Takes over up to `count` entries of `stream` that `group` delivered
/// longer than `min_idle_ms` ago and nobody acknowledged, for `consumer`:
/// the one takeover of the workers' leases and the webhook dispatchers'.
pub(super) async fn autoclaim(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle_ms: u64,
    count: usize,
) -> Result<Vec<StreamId>, QueueError> {
    let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg("0-0")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(reply.claimed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_id_time_is_the_millisecond_part() {
        assert_eq!(entry_id_ms("1763792262123-7"), Some(1_763_792_262_123));
        assert_eq!(entry_id_ms("0-1"), Some(0));
        assert_eq!(entry_id_ms("x-1"), None);
    }

    #[test]
    fn a_cursor_after_an_entry_excludes_it() {
        let p = Pages::after("s".into(), "5-1");
        assert_eq!(p.start, "(5-1");
        assert_eq!(Pages::new("s".into()).start, "-");
    }
}
