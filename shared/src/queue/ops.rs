//! The API's side of the protocol: submitting and canceling jobs, reading job
//! records and model signatures. One function per step, each a single Redis
//! round trip. Functions take any async connection (`&mut impl
//! ConnectionLike`), so callers choose between a pooled and a dedicated one.
//!
//! Submitting and canceling are Lua scripts because each is a decision plus
//! writes that must not interleave with another client's: "is this
//! idempotency key taken, is the queue full, else write the job" and "is the
//! job still queued, then cancel it".

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use uuid::Uuid;

use super::QueueError;
use super::keys::{GROUP, Keys, queue_of};
use super::usage::{JobQuota, OverQuota, RELEASE_LUA};
use super::wire::{FIELD_ID, FIELD_JOB, JobEnvelope};
use crate::job::{JobRecord, JobStatus};
use crate::model::{ModelInfo, tenant_of};

/// How a submission is bounded and deduplicated.
#[derive(Debug, Clone, Copy)]
pub struct SubmitOptions<'a> {
    /// Refuse the job when the model's queue holds this many unfinished
    /// entries or more; 0 means unbounded.
    pub max_queue_depth: u64,
    /// Deduplicate on a client's `Idempotency-Key`.
    pub idempotency: Option<Idempotency<'a>>,
    /// The tenant's bounds on unfinished jobs (see [`super::usage`]).
    pub quota: JobQuota,
}

/// A client's idempotency key, reduced to digests so arbitrary header bytes
/// never end up in a key name or a comparison.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    /// Hex digest of the key (names the Redis key, see [`Keys::idempotency`]).
    pub key_hash: &'a str,
    /// Hex digest of the request body, to tell a retry from a key reused
    /// for a different request.
    pub body_hash: &'a str,
    /// How long the key is remembered.
    pub ttl_secs: u64,
}

/// What [`submit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// The job was written: record, stream entry and idempotency key.
    Created,
    /// The same key with the same body was accepted before as job `id`,
    /// now in `status`; nothing was written.
    Duplicate { id: Uuid, status: JobStatus },
    /// The key was used before for a different body (by this job).
    KeyReused(Uuid),
    /// The model's queue holds `depth` unfinished entries, at or over the
    /// limit; nothing was written.
    QueueFull { depth: u64 },
    /// The tenant holds as many unfinished jobs (or payload bytes) as its
    /// quota allows; nothing was written.
    OverQuota(OverQuota),
}

/// Checks the idempotency key, then the queue depth, then the tenant's
/// quota, then writes the job record, its stream entry and the idempotency
/// key and counts the job in the tenant's usage, atomically.
///
/// Depth is what the consumer group still owes: `lag` (entries not yet
/// delivered) plus `pending` (delivered, not yet acknowledged). Without a
/// group (no worker ever started) or when Redis cannot compute the lag
/// (entries deleted mid-stream), XLEN stands in: an over-estimate, never an
/// under-estimate, since acknowledged entries are only ever trimmed.
static SUBMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
-- KEYS: job, stream, tenant usage[, idempotency]
-- ARGV: job id, payload, kind, model, created_at, deadline ('' = none),
--       max depth (0 = unbounded), group, body hash, idempotency ttl,
--       job key prefix, id field, job field, traceparent ('' = none),
--       max unfinished jobs, max unfinished bytes (0 = unbounded)
if KEYS[4] then
  local v = redis.call('GET', KEYS[4])
  local sp = v and string.find(v, ' ', 1, true)
  if sp then
    local id = string.sub(v, 1, sp - 1)
    -- A job whose record is gone (expired, e.g. under a short canceled TTL)
    -- has nothing left to return: the key is treated as new.
    local st = redis.call('HGET', ARGV[11] .. id, 'status')
    if st then
      if string.sub(v, sp + 1) == ARGV[9] then return {'duplicate', id, st} end
      return {'reused', id}
    end
  end
end
local max = tonumber(ARGV[7])
if max > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  local depth
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
    local t = {}
    for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
    if t['name'] == ARGV[8] and t['lag'] then depth = t['lag'] + t['pending'] end
  end
  if not depth then depth = redis.call('XLEN', KEYS[2]) end
  if depth >= max then return {'full', tostring(depth)} end
end
local size = string.len(ARGV[2])
local max_jobs, max_bytes = tonumber(ARGV[15]), tonumber(ARGV[16])
if max_jobs > 0 or max_bytes > 0 then
  local u = redis.call('HMGET', KEYS[3], 'jobs', 'bytes')
  local jobs, bytes = tonumber(u[1]) or 0, tonumber(u[2]) or 0
  if max_jobs > 0 and jobs + 1 > max_jobs then
    return {'quota', 'jobs', tostring(jobs), ARGV[15]}
  end
  if max_bytes > 0 and bytes + size > max_bytes then
    return {'quota', 'bytes', tostring(bytes), ARGV[16]}
  end
end
redis.call('HSET', KEYS[1], 'kind', ARGV[3], 'model', ARGV[4], 'status', 'queued',
  'attempts', 0, 'created_at', ARGV[5], 'bytes', size)
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'deadline', ARGV[6]) end
if ARGV[14] ~= '' then redis.call('HSET', KEYS[1], 'traceparent', ARGV[14]) end
redis.call('XADD', KEYS[2], '*', ARGV[12], ARGV[1], ARGV[13], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'jobs', 1)
redis.call('HINCRBY', KEYS[3], 'bytes', size)
if KEYS[4] then
  redis.call('SET', KEYS[4], ARGV[1] .. ' ' .. ARGV[9], 'EX', ARGV[10])
end
return {'created', ARGV[1]}
"#,
    )
});

/// Submits a job (see [`SUBMIT`]'s rules): the record and the stream entry
/// are written together or not at all, so there is never one without the
/// other. The stream follows from the job's kind ([`queue_of`]): control and
/// training jobs name their model but travel on their own streams. The
/// job's tenant is its model's ([`crate::model::tenant_of`]).
pub async fn submit(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    job: &JobEnvelope,
    opts: &SubmitOptions<'_>,
) -> Result<Submitted, QueueError> {
    let payload = job.encode()?;
    let id = job.id.to_string();
    let mut inv = SUBMIT.key(keys.job(&job.id));
    inv.key(keys.stream(queue_of(job.kind, &job.model)))
        .key(keys.usage(tenant_of(&job.model)));
    if let Some(idem) = &opts.idempotency {
        inv.key(keys.idempotency(&job.model, job.kind, idem.key_hash));
    }
    let job_key_prefix = keys.job(&job.id);
    let job_key_prefix = job_key_prefix.strip_suffix(id.as_str()).unwrap_or("");
    inv.arg(&id)
        .arg(payload)
        .arg(job.kind.as_str())
        .arg(&job.model)
        .arg(job.submitted_at_ms)
        .arg(job.deadline_ms.map(|ms| ms.to_string()).unwrap_or_default())
        .arg(opts.max_queue_depth)
        .arg(GROUP)
        .arg(opts.idempotency.map_or("", |i| i.body_hash))
        .arg(opts.idempotency.map_or(1, |i| i.ttl_secs.max(1)))
        .arg(job_key_prefix)
        .arg(FIELD_ID)
        .arg(FIELD_JOB)
        .arg(job.traceparent.as_deref().unwrap_or_default())
        .arg(opts.quota.max_jobs)
        .arg(opts.quota.max_bytes);
    let reply: Vec<String> = inv.invoke_async(conn).await?;
    let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or_default();
    let existing = || {
        Uuid::parse_str(field(1)).map_err(|_| {
            QueueError::Corrupt(format!("idempotency record names job {:?}", field(1)))
        })
    };
    match field(0) {
        "created" => Ok(Submitted::Created),
        "duplicate" => Ok(Submitted::Duplicate {
            id: existing()?,
            status: JobStatus::parse(field(2)).ok_or_else(|| {
                QueueError::Corrupt(format!("job {} has status {:?}", field(1), field(2)))
            })?,
        }),
        "reused" => Ok(Submitted::KeyReused(existing()?)),
        "full" => Ok(Submitted::QueueFull {
            depth: field(1).parse().unwrap_or(u64::MAX),
        }),
        "quota" => Ok(Submitted::OverQuota(OverQuota::from_reply(
            field(1),
            field(2),
            field(3),
        )?)),
        other => Err(QueueError::Corrupt(format!(
            "submit script answered {other:?}"
        ))),
    }
}

fn record_from(id: Uuid, fields: HashMap<String, String>) -> Result<Option<JobRecord>, QueueError> {
    JobRecord::from_fields(id, fields).map_err(QueueError::Corrupt)
}

/// Reads a job's record; `None` for an unknown or expired id.
pub async fn get_job(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    id: &Uuid,
) -> Result<Option<JobRecord>, QueueError> {
    let values: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(keys.job(id))
        .arg(&JobRecord::FIELDS[..])
        .query_async(conn)
        .await?;
    let fields = JobRecord::FIELDS
        .iter()
        .zip(values)
        .filter_map(|(k, v)| Some(((*k).to_owned(), v?)))
        .collect();
    record_from(*id, fields)
}

/// What [`cancel`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Canceled {
    /// The job was queued and is now canceled; its record after the change.
    Canceled(Box<JobRecord>),
    /// The job is running: the cancel is recorded on it, and its worker
    /// stops it at its next check (see [`super::consume::renew`]); the record
    /// after the change.
    Requested(Box<JobRecord>),
    /// Unknown or expired id.
    NotFound,
    /// The job is already terminal; nothing changed.
    NotCancelable(JobStatus),
}

/// Cancels a job. A `queued` one is canceled at once: marked canceled, its
/// record's TTL started, a parked retry dropped, its usage released, and
/// the id published so long-polls wake; its stream entry stays until a
/// worker reads it, whose start step sees a terminal job and just
/// acknowledges the entry. A `running` one gets `cancel_requested` (the
/// time) and `cancel_ttl`: its worker sees them when it renews the lease,
/// stops the run and ends the attempt `canceled` with that TTL. A job that
/// ends before its worker looks ends as it ended.
static CANCEL: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{RELEASE_LUA}{}",
        r#"
-- KEYS: job, delayed, tenant usage; ARGV: now, ttl, channel, job id
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing'} end
local tag
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  -- A job waiting out a retry back-off must not be put back on its stream.
  redis.call('HDEL', KEYS[1], 'payload', 'retry_at')
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  usage_release(KEYS[3], 'jobs', 1)
  usage_release(KEYS[3], 'bytes', redis.call('HGET', KEYS[1], 'bytes'))
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  tag = 'canceled'
elseif st == 'running' then
  if redis.call('HSETNX', KEYS[1], 'cancel_requested', ARGV[1]) == 1 then
    redis.call('HSET', KEYS[1], 'cancel_ttl', ARGV[2])
  end
  tag = 'requested'
else
  return {'not_cancelable', st}
end
local r = redis.call('HGETALL', KEYS[1])
table.insert(r, 1, tag)
return r
"#
    ))
});

pub async fn cancel(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    id: &Uuid,
    model: &str,
    ttl_secs: u64,
    now_ms: i64,
) -> Result<Canceled, QueueError> {
    let mut inv = CANCEL.key(keys.job(id));
    inv.key(keys.delayed())
        .key(keys.usage(tenant_of(model)))
        .arg(now_ms)
        .arg(ttl_secs.max(1))
        .arg(keys.job_finished_channel())
        .arg(id.to_string());
    let reply: Vec<String> = inv.invoke_async(conn).await?;
    let mut reply = reply.into_iter();
    let tag = reply.next();
    let record = |reply: std::vec::IntoIter<String>| {
        let mut reply = reply;
        let mut fields = HashMap::new();
        while let (Some(k), Some(v)) = (reply.next(), reply.next()) {
            fields.insert(k, v);
        }
        match record_from(*id, fields)? {
            Some(job) => Ok(Box::new(job)),
            None => Err(QueueError::Corrupt(format!(
                "job {id} vanished while being canceled"
            ))),
        }
    };
    match tag.as_deref() {
        Some("missing") => Ok(Canceled::NotFound),
        Some("not_cancelable") => {
            let status = reply.next().unwrap_or_default();
            JobStatus::parse(&status)
                .map(Canceled::NotCancelable)
                .ok_or_else(|| QueueError::Corrupt(format!("job {id} has status {status:?}")))
        }
        Some("canceled") => Ok(Canceled::Canceled(record(reply)?)),
        Some("requested") => Ok(Canceled::Requested(record(reply)?)),
        other => Err(QueueError::Corrupt(format!(
            "cancel script answered {other:?}"
        ))),
    }
}

/// Every model a worker has published, sorted by name.
pub async fn list_models(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
) -> Result<Vec<ModelInfo>, QueueError> {
    let raw: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.models())
        .query_async(conn)
        .await?;
    let mut models = raw
        .values()
        .map(|json| parse_model(json))
        .collect::<Result<Vec<_>, _>>()?;
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// One model's published description.
pub async fn get_model(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    name: &str,
) -> Result<Option<ModelInfo>, QueueError> {
    let raw: Option<String> = redis::cmd("HGET")
        .arg(keys.models())
        .arg(name)
        .query_async(conn)
        .await?;
    raw.as_deref().map(parse_model).transpose()
}

fn parse_model(json: &str) -> Result<ModelInfo, QueueError> {
    serde_json::from_str(json).map_err(|e| QueueError::Corrupt(format!("model signature: {e}")))
}
