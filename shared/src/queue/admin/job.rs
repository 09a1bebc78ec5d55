//! A job record as stored, for `jobctl dead show`: every field, including
//! ones this version does not know, and its remaining time to live.

use std::collections::BTreeMap;

use redis::aio::ConnectionLike;
use uuid::Uuid;

use crate::queue::QueueError;
use crate::queue::keys::Keys;

/// A job record's raw fields and remaining time to live, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSnapshot {
    pub fields: BTreeMap<String, String>,
    /// Seconds until the record expires; `None` when it does not expire.
    pub ttl_secs: Option<i64>,
}

/// The job record as stored (every field, including ones this version does
/// not know), or `None` when it is gone.
pub async fn job_snapshot(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    id: &Uuid,
) -> Result<Option<JobSnapshot>, QueueError> {
    let key = keys.job(id);
    // Values as bytes: a job waiting for a retry parks its binary payload in
    // the hash.
    let (raw, ttl): (BTreeMap<String, Vec<u8>>, i64) = redis::pipe()
        .cmd("HGETALL")
        .arg(&key)
        .cmd("TTL")
        .arg(&key)
        .query_async(conn)
        .await?;
    let fields: BTreeMap<String, String> = raw
        .into_iter()
        .map(|(k, v)| match String::from_utf8(v) {
            Ok(text) => (k, text),
            Err(e) => (k, format!("<{} binary bytes>", e.as_bytes().len())),
        })
        .collect();
    Ok((!fields.is_empty()).then(|| JobSnapshot {
        fields,
        ttl_secs: (ttl >= 0).then_some(ttl),
    }))
}
