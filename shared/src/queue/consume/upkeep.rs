//! A worker's periodic upkeep of its streams: due retries back onto their
//! streams, acknowledged entries and old dead letters trimmed.

use redis::aio::ConnectionLike;
use uuid::Uuid;

use crate::queue::QueueError;
use crate::queue::keys::{GROUP, Keys};
use crate::queue::scripts::{Durability, RELEASE_DUE, TRIM, invoke_all};
use crate::queue::wire::{FIELD_ID, FIELD_JOB};

/// Releases the due retries of `streams` (up to `limit` per stream) from
/// their delayed sets back onto the streams; returns how many were moved.
/// The due ids of the streams of one slot are read in one pipeline, then
/// each stream with due jobs is released by one script call
/// (`lua/release_due.lua`), which skips a job canceled or moved meanwhile.
pub async fn release_due(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    streams: &[String],
    now_ms: i64,
    limit: usize,
) -> Result<usize, QueueError> {
    let mut moved = 0;
    for group in by_slot(streams) {
        let delayed: Vec<String> = group
            .iter()
            .map(|s| {
                let (queue, p) = keys.parse_stream(s).unwrap_or(("", 0));
                keys.delayed(queue, p)
            })
            .collect();
        let mut pipe = redis::pipe();
        for d in &delayed {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(d)
                .arg("-inf")
                .arg(now_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
        }
        let due: Vec<Vec<String>> = pipe.query_async(conn).await?;
        let mut first_keys = Vec::new();
        let mut invocations = Vec::new();
        for ((stream, set), ids) in group.iter().zip(&delayed).zip(due) {
            if ids.is_empty() {
                continue;
            }
            let mut inv = RELEASE_DUE.key(set);
            inv.key(*stream).arg(FIELD_ID).arg(FIELD_JOB);
            for id in &ids {
                let Ok(uuid) = Uuid::parse_str(id) else {
                    continue;
                };
                inv.key(keys.job(&uuid)).arg(id);
            }
            first_keys.push(set.as_str());
            invocations.push(inv);
        }
        let counts: Vec<i64> = invoke_all(
            conn,
            &RELEASE_DUE,
            &first_keys,
            &invocations,
            Durability::Async,
        )
        .await?;
        moved += counts
            .iter()
            .map(|&c| usize::try_from(c).unwrap_or(0))
            .sum::<usize>();
    }
    Ok(moved)
}

/// `streams` grouped by hash slot, in first-seen order.
fn by_slot(streams: &[String]) -> Vec<Vec<&str>> {
    let mut groups: Vec<(redis::cluster_routing::Slot, Vec<&str>)> = Vec::new();
    for s in streams {
        let slot = redis::cluster_routing::Slot::for_key(s);
        match groups.iter_mut().find(|(g, _)| *g == slot) {
            Some((_, members)) => members.push(s),
            None => groups.push((slot, vec![s])),
        }
    }
    groups.into_iter().map(|(_, m)| m).collect()
}

/// Trims a work stream of acknowledged entries only: everything older than
/// both the oldest pending entry and the group's last delivered entry. Entries
/// not yet delivered or not yet acknowledged are never touched.
///
/// Trims acknowledged entries from `stream`; returns how many were removed.
pub async fn trim_acked(conn: &mut impl ConnectionLike, stream: &str) -> Result<usize, QueueError> {
    let mut inv = TRIM.key(stream);
    inv.arg(GROUP);
    let n: Vec<i64> = invoke_all(conn, &TRIM, &[stream], &[inv], Durability::Async).await?;
    Ok(n.first()
        .and_then(|&m| usize::try_from(m).ok())
        .unwrap_or(0))
}

/// Caps each partition's dead-letter stream at about `max_len / P`
/// entries (oldest dropped), so all of them hold about `max_len`.
pub async fn trim_dead_letters(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    max_len: usize,
) -> Result<(), QueueError> {
    let each = max_len.div_ceil(usize::from(keys.partitions()));
    for p in keys.all_partitions() {
        redis::cmd("XTRIM")
            .arg(keys.dead_letters(p))
            .arg("MAXLEN")
            .arg("~")
            .arg(each)
            .query_async::<()>(conn)
            .await?;
    }
    Ok(())
}
