//! The dispatcher's and the operator's side of a partition's webhook
//! outbox: reading calls, taking over a dead dispatcher's, settling each
//! attempt, releasing due retries, and listing and replaying dead letters
//! (see the protocol in [`super`]).

use std::collections::HashMap;

use redis::Value;
use redis::aio::ConnectionLike;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use uuid::Uuid;

use super::{Call, DeliveryState, Event, GROUP};
use crate::queue::QueueError;
use crate::queue::keys::{Keys, Partition, WebhookKey};
use crate::queue::scripts::{WEBHOOK_RELEASE, WEBHOOK_REPLAY, WEBHOOK_SETTLE};

/// One outbox entry: its call, or why it could not be read (such an entry
/// is dropped by [`drop_unreadable`]).
#[derive(Debug)]
pub struct Queued {
    pub entry_id: String,
    pub call: Result<Call, String>,
}

fn field(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    match map.get(name)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl Queued {
    fn from_entry(entry: StreamId) -> Queued {
        let map = &entry.map;
        let call = if let Some(json) = field(map, "call") {
            serde_json::from_str::<Call>(&json).map_err(|e| format!("call: {e}"))
        } else {
            let id = field(map, "id").and_then(|s| Uuid::parse_str(&s).ok());
            let event = field(map, "event").and_then(|s| Event::parse(&s));
            let attempt = field(map, "attempt").and_then(|s| s.parse().ok());
            match (id, event, attempt) {
                (Some(id), Some(event), Some(attempt)) => Ok(Call {
                    id,
                    event,
                    attempt,
                    progress: field(map, "progress"),
                    wid: entry.id.clone(),
                    tries: 0,
                }),
                _ => Err("missing or invalid id, event or attempt".to_owned()),
            }
        };
        Queued {
            entry_id: entry.id,
            call,
        }
    }
}

/// Creates the dispatchers' group on partition `p`'s outbox (and the
/// stream), from its first entry, so calls queued before any dispatcher
/// ran are delivered too. An existing group is left as it is.
pub async fn ensure_group(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    p: Partition,
) -> Result<(), QueueError> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys.webhooks(p, WebhookKey::Outbox))
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => Ok(other?),
    }
}

/// New calls of partition `p`, blocking up to `block_ms` for the first.
pub async fn read_new(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    p: Partition,
    consumer: &str,
    count: usize,
    block_ms: u64,
) -> Result<Vec<Queued>, QueueError> {
    let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(keys.webhooks(p, WebhookKey::Outbox))
        .arg(">")
        .query_async(conn)
        .await?;
    Ok(reply
        .map(|r| r.keys)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|k| k.ids)
        .map(Queued::from_entry)
        .collect())
}

/// Takes over calls whose dispatcher held them longer than `lease_ms`
/// without settling them (it died, or hung past its request timeout).
pub async fn reclaim(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    p: Partition,
    consumer: &str,
    lease_ms: u64,
    count: usize,
) -> Result<Vec<Queued>, QueueError> {
    let outbox = keys.webhooks(p, WebhookKey::Outbox);
    let claimed =
        crate::queue::paging::autoclaim(conn, &outbox, GROUP, consumer, lease_ms, count).await?;
    Ok(claimed.into_iter().map(Queued::from_entry).collect())
}

/// Acknowledges and deletes an entry no dispatcher can read.
pub async fn drop_unreadable(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    p: Partition,
    entry_id: &str,
) -> Result<(), QueueError> {
    let outbox = keys.webhooks(p, WebhookKey::Outbox);
    redis::pipe()
        .cmd("XACK")
        .arg(&outbox)
        .arg(GROUP)
        .arg(entry_id)
        .ignore()
        .cmd("XDEL")
        .arg(&outbox)
        .arg(entry_id)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// What to do with a call after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Try again at this Unix ms.
    RetryAt(i64),
    /// Give up: into the dead letters, with this error.
    Dead(String),
}

/// Settles one attempt (see `webhook_settle.lua`): `call` is the call with
/// this attempt counted in its `tries`. `false` when another dispatcher
/// settled it first.
pub async fn settle(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    entry_id: &str,
    call: &Call,
    state: &DeliveryState,
    next: &Next,
    now_ms: i64,
) -> Result<bool, QueueError> {
    let p = crate::queue::keys::partition_of(&call.id);
    let (mode, extra) = match next {
        Next::Delivered => ("delivered", String::new()),
        Next::RetryAt(at) => ("retry", at.to_string()),
        Next::Dead(e) => ("dead", e.clone()),
    };
    let state = serde_json::to_string(state).map_err(|e| QueueError::Corrupt(e.to_string()))?;
    let done: i64 = WEBHOOK_SETTLE
        .key(keys.webhooks(p, WebhookKey::Outbox))
        .key(keys.webhooks(p, WebhookKey::Retries))
        .key(keys.webhooks(p, WebhookKey::Dead))
        .key(keys.job(&call.id))
        .arg(GROUP)
        .arg(entry_id)
        .arg(mode)
        .arg(call.event.as_str())
        .arg(state)
        .arg(call.to_json())
        .arg(extra)
        .arg(now_ms)
        .invoke_async(conn)
        .await?;
    Ok(done == 1)
}

/// Moves up to `limit` due retries of partition `p` back into its outbox;
/// how many it moved.
pub async fn release_due(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    p: Partition,
    now_ms: i64,
    limit: usize,
) -> Result<usize, QueueError> {
    let n: usize = WEBHOOK_RELEASE
        .key(keys.webhooks(p, WebhookKey::Retries))
        .key(keys.webhooks(p, WebhookKey::Outbox))
        .arg(now_ms)
        .arg(limit)
        .invoke_async(conn)
        .await?;
    Ok(n)
}

/// A dead webhook call, as `jobctl webhooks list` shows it.
#[derive(Debug, Clone)]
pub struct DeadCall {
    pub partition: Partition,
    pub entry_id: String,
    pub call: Result<Call, String>,
    pub error: String,
    pub failed_at_ms: Option<i64>,
}

/// Up to `limit` dead calls, oldest first, over every partition.
pub async fn dead(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    limit: usize,
) -> Result<Vec<DeadCall>, QueueError> {
    let mut out = Vec::new();
    for p in keys.all_partitions() {
        if out.len() >= limit {
            break;
        }
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys.webhooks(p, WebhookKey::Dead))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit - out.len())
            .query_async(conn)
            .await?;
        for entry in reply.ids {
            let call = field(&entry.map, "call")
                .ok_or_else(|| "no call".to_owned())
                .and_then(|j| serde_json::from_str::<Call>(&j).map_err(|e| e.to_string()));
            out.push(DeadCall {
                partition: p,
                error: field(&entry.map, "error").unwrap_or_default(),
                failed_at_ms: field(&entry.map, "failed_at").and_then(|s| s.parse().ok()),
                entry_id: entry.id,
                call,
            });
        }
    }
    Ok(out)
}

/// Puts a dead call back in its outbox with its tries reset, keeping its
/// `webhook-id`; `false` when it was replayed already (or is unreadable).
pub async fn replay(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    dead: &DeadCall,
) -> Result<bool, QueueError> {
    let Ok(call) = &dead.call else {
        return Ok(false);
    };
    let fresh = Call {
        tries: 0,
        ..call.clone()
    };
    let done: i64 = WEBHOOK_REPLAY
        .key(keys.webhooks(dead.partition, WebhookKey::Dead))
        .key(keys.webhooks(dead.partition, WebhookKey::Outbox))
        .arg(&dead.entry_id)
        .arg(fresh.to_json())
        .invoke_async(conn)
        .await?;
    Ok(done == 1)
}
