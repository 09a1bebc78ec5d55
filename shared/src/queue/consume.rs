//! The worker's side of the protocol: publishing model signatures, joining
//! the consumer groups, reading entries, and the start/finish transitions of
//! a job. One function per step, each a single Redis round trip.

use std::sync::LazyLock;

use redis::Value;
use redis::aio::ConnectionLike;
use redis::streams::StreamReadReply;
use uuid::Uuid;

use super::QueueError;
use super::keys::{GROUP, Keys};
use super::scripts::invoke_all;
use super::wire::{FIELD_ID, FIELD_JOB, JobEnvelope};
use crate::job::{JobError, JobStatus};
use crate::model::ModelInfo;

/// Publishes a model's signature and tells API processes to refresh it.
pub async fn publish_model(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    info: &ModelInfo,
) -> Result<(), QueueError> {
    let json = serde_json::to_string(info)
        .map_err(|e| QueueError::Corrupt(format!("model signature: {e}")))?;
    redis::pipe()
        .cmd("HSET")
        .arg(keys.models())
        .arg(&info.name)
        .arg(json)
        .ignore()
        .cmd("PUBLISH")
        .arg(keys.models_channel())
        .arg(&info.name)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Creates the consumer group of a model's stream (and the stream) if missing.
/// The group starts at `0`, not `$`, so jobs enqueued before the first worker
/// ever started are still delivered.
pub async fn ensure_group(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
) -> Result<(), QueueError> {
    let res = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys.stream(model))
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(conn)
        .await;
    match res {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => Ok(other?),
    }
}

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
    let mut out = Vec::new();
    for key in reply.map(|r| r.keys).unwrap_or_default() {
        for entry in key.ids {
            let job_id = match entry.map.get(FIELD_ID) {
                Some(Value::BulkString(b)) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| Uuid::parse_str(s).ok()),
                _ => None,
            };
            let job = match entry.map.get(FIELD_JOB) {
                Some(Value::BulkString(b)) => JobEnvelope::decode(b).map_err(|e| e.to_string()),
                _ => Err("stream entry has no job payload".to_owned()),
            };
            out.push(Delivery {
                stream: key.key.clone(),
                entry_id: entry.id,
                job_id,
                job,
            });
        }
    }
    Ok(out)
}

/// Marks jobs `running` and takes a new attempt number for each, in one
/// pipelined round trip.
static START: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= 'queued' and st ~= 'running' then return -2 end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[2])
return n
"#,
    )
});

/// What [`start`] decided for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Run it; this is attempt number `n` (1-based).
    Run(u32),
    /// The record is gone (expired or deleted): nothing to run or report.
    Gone,
    /// Already terminal (e.g. canceled): must not run.
    NotRunnable,
}

pub async fn start(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    consumer: &str,
    job_ids: &[Uuid],
    now_ms: i64,
) -> Result<Vec<Start>, QueueError> {
    if job_ids.is_empty() {
        return Ok(Vec::new());
    }
    let invocations: Vec<_> = job_ids
        .iter()
        .map(|id| {
            let mut inv = START.key(keys.job(id));
            inv.arg(now_ms).arg(consumer);
            inv
        })
        .collect();
    let codes: Vec<i64> = invoke_all(conn, &START, &invocations).await?;
    Ok(codes
        .into_iter()
        .map(|c| match c {
            -1 => Start::Gone,
            n if n > 0 => Start::Run(u32::try_from(n).unwrap_or(u32::MAX)),
            _ => Start::NotRunnable,
        })
        .collect())
}

/// Writes a terminal state and acknowledges the entry in one atomic step, if
/// and only if the job is still `running` under the caller's attempt.
static FINISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local att = redis.call('HGET', KEYS[1], 'attempts')
if not att then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  return -1
end
if att ~= ARGV[3] or redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'finished_at', ARGV[5])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'model_version', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[9]) end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[10], ARGV[11])
return 1
"#,
    )
});

/// A job's terminal outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The result as JSON text, stored as is and served as is.
    Succeeded {
        result_json: String,
    },
    Failed(JobError),
}

/// One terminal write for [`finish`].
#[derive(Debug, Clone)]
pub struct Finish<'a> {
    pub job_id: Uuid,
    pub stream: &'a str,
    pub entry_id: &'a str,
    pub attempt: u32,
    pub model_version: &'a str,
    pub outcome: Outcome,
    pub ttl_secs: u64,
}

/// What [`finish`] did with one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Written,
    /// Another attempt owns the job now; this result was discarded.
    Stale,
    /// The record was gone; the entry was acknowledged and dropped.
    Gone,
}

pub async fn finish(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    items: &[Finish<'_>],
    now_ms: i64,
) -> Result<Vec<Finished>, QueueError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let channel = keys.job_finished_channel();
    let invocations: Vec<_> = items
        .iter()
        .map(|f| {
            let (status, result, error) = match &f.outcome {
                Outcome::Succeeded { result_json } => {
                    (JobStatus::Succeeded, result_json.clone(), String::new())
                }
                Outcome::Failed(e) => (
                    JobStatus::Failed,
                    String::new(),
                    serde_json::to_string(e).unwrap_or_default(),
                ),
            };
            let mut inv = FINISH.key(keys.job(&f.job_id));
            inv.key(f.stream)
                .arg(GROUP)
                .arg(f.entry_id)
                .arg(f.attempt)
                .arg(status.as_str())
                .arg(now_ms)
                .arg(f.ttl_secs.max(1))
                .arg(f.model_version)
                .arg(result)
                .arg(error)
                .arg(&channel)
                .arg(f.job_id.to_string());
            inv
        })
        .collect();
    let codes: Vec<i64> = invoke_all(conn, &FINISH, &invocations).await?;
    Ok(codes
        .into_iter()
        .map(|c| match c {
            1 => Finished::Written,
            -1 => Finished::Gone,
            _ => Finished::Stale,
        })
        .collect())
}

/// Acknowledges entries that carry no runnable job (undecodable, or whose
/// record is gone or already terminal).
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
