//! The worker's side of the protocol: publishing model signatures, joining
//! the consumer groups, reading and reclaiming entries, the start/finish
//! transitions of a job, lease renewal, delayed retries and trimming. One
//! function per step, each a single Redis round trip.
//!
//! # Leases
//!
//! A delivered entry sits in the group's pending list under the consumer that
//! read it; its idle time is the lease clock. A worker renews the lease of
//! the entries it is running ([`renew`]) every fraction of `--lease-ms`;
//! any worker reclaims entries idle longer than the lease ([`reclaim`], i.e.
//! XAUTOCLAIM), which is how the jobs of a killed or stalled worker move on.
//! The attempt number taken by [`start`] makes the move safe: [`finish`]
//! only writes if the job is still on the caller's attempt.
//!
//! # Retries and dead letters
//!
//! A transient failure goes back to the queue through `{ns}:delayed` (a
//! sorted set of job ids by due time, payload parked in the job record) and
//! [`promote_due`] moves due jobs back onto their stream. A job whose last
//! allowed attempt fails, or which keeps losing its worker, ends `failed` and
//! is copied to the dead-letter stream before it is acknowledged.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use uuid::Uuid;

use super::QueueError;
use super::keys::{CONTROL, GROUP, Keys, TRAIN};
use super::scripts::invoke_all;
use super::usage::RELEASE_LUA;
use super::wire::{EntryJob, JobEnvelope};
use crate::job::JobError;
use crate::model::{ModelInfo, tenant_of};

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

impl Delivery {
    fn from_entry(stream: &str, entry: StreamId) -> Delivery {
        let EntryJob { job_id, job, .. } = EntryJob::read(&entry.map);
        Delivery {
            stream: stream.to_owned(),
            entry_id: entry.id,
            job_id,
            job,
        }
    }

    /// The model of the entry, from its stream key, readable even when the
    /// payload is not.
    pub fn model<'a>(&'a self, keys: &Keys) -> &'a str {
        keys.model_of_stream(&self.stream).unwrap_or("")
    }

    /// The tenant whose usage the job counts against: its model's. Control
    /// and training streams carry every tenant's jobs, so the payload's
    /// model decides; an undecodable payload falls back to the stream's.
    pub fn tenant<'a>(&'a self, keys: &Keys) -> &'a str {
        let model = match &self.job {
            Ok(job) => job.model.as_str(),
            Err(_) => self.model(keys),
        };
        tenant_of(model)
    }
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
    Ok(reply
        .map(|r| r.keys)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|key| {
            let stream = key.key;
            key.ids
                .into_iter()
                .map(move |entry| Delivery::from_entry(&stream, entry))
        })
        .collect())
}

/// Takes over up to `count` entries of `stream` whose lease ran out (idle
/// longer than `lease_ms`), whoever held them. Entries whose payload was
/// deleted meanwhile are dropped from the pending list by Redis itself.
pub async fn reclaim(
    conn: &mut impl ConnectionLike,
    stream: &str,
    consumer: &str,
    lease_ms: u64,
    count: usize,
) -> Result<Vec<Delivery>, QueueError> {
    let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(GROUP)
        .arg(consumer)
        .arg(lease_ms)
        .arg("0-0")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(reply
        .claimed
        .into_iter()
        .map(|entry| Delivery::from_entry(stream, entry))
        .collect())
}

/// Lua: the `job` field of a pending entry. The entry is still in its stream
/// (trimming never touches unacknowledged entries), so the payload need not
/// travel with every start and finish; only a retry or a dead letter reads it.
const ENTRY_PAYLOAD_LUA: &str = r#"
local function entry_payload(stream, id)
  local e = redis.call('XRANGE', stream, id, id)
  if not e[1] then return nil end
  local f = e[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'job' then return f[i + 1] end
  end
  return nil
end
"#;

fn with_entry_payload(body: &str) -> redis::Script {
    redis::Script::new(&format!("{ENTRY_PAYLOAD_LUA}{RELEASE_LUA}{body}"))
}

/// Takes a new attempt for each delivered job, or settles jobs that must not
/// run: a record that is gone or already terminal (e.g. canceled) is just
/// acknowledged; a job past its deadline fails with `deadline_exceeded`; a
/// job that already used every attempt (its workers kept dying) fails with
/// `attempts_exhausted` and is dead-lettered.
static START: LazyLock<redis::Script> = LazyLock::new(|| {
    with_entry_payload(
        r#"
-- One call starts every job of a batch read from one stream: a script call
-- costs Redis ~12 us on top of its commands, so one per job was a third of
-- Redis's time per job.
-- KEYS: stream, dead, then for each job: its record, its tenant's usage
-- ARGV: now, consumer, group, max_attempts, failed_ttl, channel, model, then
--       for each job: entry, job id, deadline ('' = none)
local now, consumer, group = ARGV[1], ARGV[2], ARGV[3]
local max_attempts, failed_ttl = tonumber(ARGV[4]), ARGV[5]
local channel, model = ARGV[6], ARGV[7]
local stream, dead = KEYS[1], KEYS[2]

local function start(job, usage, entry, id, deadline)
  local st = redis.call('HGET', job, 'status')
  if not st then
    redis.call('XACK', stream, group, entry)
    return -1
  end
  if st ~= 'queued' and st ~= 'running' then
    redis.call('XACK', stream, group, entry)
    return -2
  end
  local attempts = tonumber(redis.call('HGET', job, 'attempts') or '0')
  local function fail(code, message, to_dead)
    local err = cjson.encode({code = code, message = message})
    redis.call('HSET', job, 'status', 'failed', 'finished_at', now, 'error', err)
    redis.call('HDEL', job, 'payload', 'retry_at')
    redis.call('EXPIRE', job, failed_ttl)
    usage_release(usage, 'jobs', 1)
    usage_release(usage, 'bytes', redis.call('HGET', job, 'bytes'))
    if to_dead then
      redis.call('XADD', dead, '*', 'id', id, 'job', entry_payload(stream, entry) or '',
        'model', model, 'error', err, 'attempts', attempts, 'failed_at', now)
    end
    redis.call('XACK', stream, group, entry)
    redis.call('PUBLISH', channel, id)
  end
  if deadline ~= '' and tonumber(now) > tonumber(deadline) then
    fail('deadline_exceeded', 'the job was not started before its deadline', false)
    return -3
  end
  if attempts >= max_attempts then
    fail('attempts_exhausted', 'gave up after ' .. attempts ..
      ' attempts: the workers running it stopped or lost their lease each time', true)
    return -4
  end
  local n = redis.call('HINCRBY', job, 'attempts', 1)
  redis.call('HSET', job, 'status', 'running', 'started_at', now, 'worker', consumer)
  return n
end

local out = {}
for i = 3, #KEYS, 2 do
  local a = 7 + (i - 3) / 2 * 3
  out[#out + 1] = start(KEYS[i], KEYS[i + 1], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
end
return out
"#,
    )
});

/// What [`start`] decided for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Run it; this is attempt number `n` (1-based).
    Run(u32),
    /// The record is gone (expired or deleted); the entry was acknowledged.
    Gone,
    /// Already terminal (e.g. canceled); the entry was acknowledged.
    NotRunnable,
    /// Not started before its deadline; failed with `deadline_exceeded`.
    DeadlineExceeded,
    /// Every attempt was used up; failed and dead-lettered.
    Exhausted,
}

/// Policy for [`start`] and [`finish`].
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_attempts: u32,
    pub succeeded_ttl_secs: u64,
    pub failed_ttl_secs: u64,
}

pub async fn start(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    consumer: &str,
    policy: &Policy,
    deliveries: &[&Delivery],
    now_ms: i64,
) -> Result<Vec<Start>, QueueError> {
    if deliveries.is_empty() {
        return Ok(Vec::new());
    }
    let channel = keys.job_finished_channel();
    let dead = keys.dead_letters();
    let groups = by_stream(deliveries.iter().map(|d| d.stream.as_str()));
    let invocations: Vec<_> = groups
        .iter()
        .map(|(stream, members)| {
            let mut inv = START.key(*stream);
            inv.key(&dead)
                .arg(now_ms)
                .arg(consumer)
                .arg(GROUP)
                .arg(policy.max_attempts.max(1))
                .arg(policy.failed_ttl_secs.max(1))
                .arg(&channel)
                .arg(keys.model_of_stream(stream).unwrap_or(""));
            for &i in members {
                let d = deliveries[i];
                let id = d.job_id.unwrap_or_default();
                let deadline = d
                    .job
                    .as_ref()
                    .ok()
                    .and_then(|j| j.deadline_ms)
                    .map(|ms| ms.to_string())
                    .unwrap_or_default();
                inv.key(keys.job(&id))
                    .key(keys.usage(d.tenant(keys)))
                    .arg(&d.entry_id)
                    .arg(id.to_string())
                    .arg(deadline);
            }
            inv
        })
        .collect();
    let codes: Vec<Vec<i64>> = invoke_all(conn, &START, &invocations).await?;
    let codes = scatter(&groups, codes, deliveries.len())?;
    Ok(codes
        .into_iter()
        .map(|c| match c {
            -1 => Start::Gone,
            -3 => Start::DeadlineExceeded,
            -4 => Start::Exhausted,
            n if n > 0 => Start::Run(u32::try_from(n).unwrap_or(u32::MAX)),
            _ => Start::NotRunnable,
        })
        .collect())
}

/// Positions of the items of each stream, streams in first-seen order: one
/// batched script call per stream (a script may only touch its stream).
fn by_stream<'a>(streams: impl Iterator<Item = &'a str>) -> Vec<(&'a str, Vec<usize>)> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, s) in streams.enumerate() {
        match groups.iter_mut().find(|(g, _)| *g == s) {
            Some((_, members)) => members.push(i),
            None => groups.push((s, vec![i])),
        }
    }
    groups
}

/// Puts the per-stream answers back in item order.
fn scatter(
    groups: &[(&str, Vec<usize>)],
    answers: Vec<Vec<i64>>,
    len: usize,
) -> Result<Vec<i64>, QueueError> {
    let mut out = vec![0; len];
    if answers.len() != groups.len() {
        return Err(QueueError::Corrupt(format!(
            "{} script answers for {} streams",
            answers.len(),
            groups.len()
        )));
    }
    for ((_, members), codes) in groups.iter().zip(answers) {
        if codes.len() != members.len() {
            return Err(QueueError::Corrupt(format!(
                "{} script answers for {} jobs",
                codes.len(),
                members.len()
            )));
        }
        for (&i, c) in members.iter().zip(codes) {
            out[i] = c;
        }
    }
    Ok(out)
}

/// Ends an attempt, atomically and only if the job is still `running` under
/// the caller's attempt: writes the outcome, acknowledges the entry and
/// publishes the job id when it became terminal.
static FINISH: LazyLock<redis::Script> = LazyLock::new(|| {
    with_entry_payload(
        r#"
-- One call per stream finishes every job of a batch (see START).
-- KEYS: stream, dead, delayed, then for each job: its record, its tenant's
--       usage
-- ARGV: group, now, channel, model, then for each job: entry, attempt,
--       mode (succeeded|failed|dead|retry|canceled), ttl, model_version,
--       result, error, job id, retry_at
local group, now, channel, model = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local stream, dead, delayed = KEYS[1], KEYS[2], KEYS[3]

local function finish(job, usage, entry, attempt, mode, ttl, version, result, err, id, retry_at)
  local f = redis.call('HMGET', job, 'attempts', 'status', 'bytes', 'cancel_ttl',
    'cancel_requested')
  if not f[1] then
    redis.call('XACK', stream, group, entry)
    return -1
  end
  if f[1] ~= attempt or f[2] ~= 'running' then
    return 0
  end
  -- A client canceled the job while it ran: it is not retried, whatever
  -- the worker saw of the cancel before the failure.
  if mode == 'retry' and f[5] then mode = 'canceled' end
  local payload
  if mode == 'retry' or mode == 'dead' then
    payload = entry_payload(stream, entry)
    -- Without its entry (deleted by hand) a job cannot be re-queued: end it.
    if not payload then mode = 'dead' end
  end
  if version ~= '' then redis.call('HSET', job, 'model_version', version) end
  if mode == 'retry' then
    redis.call('HSET', job, 'status', 'queued', 'last_error', err,
      'retry_at', retry_at, 'payload', payload)
    redis.call('ZADD', delayed, retry_at, id)
    redis.call('XACK', stream, group, entry)
    return 1
  end
  local status = 'failed'
  if mode == 'succeeded' then status = 'succeeded' elseif mode == 'canceled' then
    status = 'canceled'
    -- The TTL the API chose when the client asked.
    if f[4] then ttl = f[4] end
  end
  redis.call('HSET', job, 'status', status, 'finished_at', now)
  if result ~= '' then redis.call('HSET', job, 'result', result) end
  if err ~= '' then redis.call('HSET', job, 'error', err) end
  redis.call('HDEL', job, 'payload', 'retry_at', 'last_error')
  redis.call('EXPIRE', job, ttl)
  usage_release(usage, 'jobs', 1)
  usage_release(usage, 'bytes', f[3])
  if mode == 'dead' then
    redis.call('XADD', dead, '*', 'id', id, 'job', payload or '', 'model', model,
      'error', err, 'attempts', attempt, 'failed_at', now)
  end
  redis.call('XACK', stream, group, entry)
  redis.call('PUBLISH', channel, id)
  return 1
end

local out = {}
for i = 4, #KEYS, 2 do
  local a = 4 + (i - 4) / 2 * 9
  out[#out + 1] = finish(KEYS[i], KEYS[i + 1], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9])
end
return out
"#,
    )
});

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The result as JSON text, stored as is and served as is.
    Succeeded { result_json: String },
    /// A permanent failure: terminal at once.
    Failed(JobError),
    /// A transient failure with attempts left: back to the queue at
    /// `retry_at_ms`.
    Retry { error: JobError, retry_at_ms: i64 },
    /// A transient failure on the last allowed attempt: terminal, and copied
    /// to the dead-letter stream.
    DeadLetter(JobError),
    /// Stopped because a client canceled the job while it ran.
    Canceled,
}

impl Outcome {
    /// The job status this outcome leaves behind.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Failed(_) | Outcome::DeadLetter(_) => "failed",
            Outcome::Retry { .. } => "queued",
            Outcome::Canceled => "canceled",
        }
    }
}

/// One attempt's end for [`finish`].
#[derive(Debug, Clone)]
pub struct Finish<'a> {
    pub delivery: &'a Delivery,
    pub job_id: Uuid,
    pub attempt: u32,
    pub model_version: &'a str,
    pub outcome: Outcome,
}

/// What [`finish`] did with one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Written,
    /// Another attempt owns the job now; this outcome was discarded.
    Stale,
    /// The record was gone; the entry was acknowledged and dropped.
    Gone,
}

pub async fn finish(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    policy: &Policy,
    items: &[Finish<'_>],
    now_ms: i64,
) -> Result<Vec<Finished>, QueueError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let channel = keys.job_finished_channel();
    let dead = keys.dead_letters();
    let delayed = keys.delayed();
    let groups = by_stream(items.iter().map(|f| f.delivery.stream.as_str()));
    let invocations: Vec<_> = groups
        .iter()
        .map(|(stream, members)| {
            let mut inv = FINISH.key(*stream);
            inv.key(&dead)
                .key(&delayed)
                .arg(GROUP)
                .arg(now_ms)
                .arg(&channel)
                .arg(keys.model_of_stream(stream).unwrap_or(""));
            for &i in members {
                finish_args(&mut inv, keys, policy, &items[i]);
            }
            inv
        })
        .collect();
    let codes: Vec<Vec<i64>> = invoke_all(conn, &FINISH, &invocations).await?;
    let codes = scatter(&groups, codes, items.len())?;
    Ok(codes
        .into_iter()
        .map(|c| match c {
            1 => Finished::Written,
            -1 => Finished::Gone,
            _ => Finished::Stale,
        })
        .collect())
}

/// One job's keys and arguments of the FINISH script.
fn finish_args(
    inv: &mut redis::ScriptInvocation<'_>,
    keys: &Keys,
    policy: &Policy,
    f: &Finish<'_>,
) {
    let error_json = |e: &JobError| serde_json::to_string(e).unwrap_or_default();
    let (mode, ttl, result, error, retry_at) = match &f.outcome {
        Outcome::Succeeded { result_json } => (
            "succeeded",
            policy.succeeded_ttl_secs,
            result_json.as_str(),
            String::new(),
            0,
        ),
        Outcome::Failed(e) => ("failed", policy.failed_ttl_secs, "", error_json(e), 0),
        Outcome::DeadLetter(e) => ("dead", policy.failed_ttl_secs, "", error_json(e), 0),
        Outcome::Retry { error, retry_at_ms } => (
            "retry",
            policy.failed_ttl_secs,
            "",
            error_json(error),
            *retry_at_ms,
        ),
        Outcome::Canceled => ("canceled", policy.failed_ttl_secs, "", String::new(), 0),
    };
    inv.key(keys.job(&f.job_id))
        .key(keys.usage(f.delivery.tenant(keys)))
        .arg(&f.delivery.entry_id)
        .arg(f.attempt)
        .arg(mode)
        .arg(ttl.max(1))
        .arg(f.model_version)
        .arg(result)
        .arg(error)
        .arg(f.job_id.to_string())
        .arg(retry_at);
}

/// Renews the lease of entries this consumer still owns by resetting their
/// idle time (XCLAIM JUSTID, which does not count as a delivery), and tells
/// whether a client asked to cancel each job meanwhile: the renewal is the
/// worker's periodic look at its running jobs, so a cancel costs no extra
/// round trip. An entry another consumer has taken over is left alone:
/// stealing it back would only make the two workers fight over it.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
-- KEYS: stream, then each entry's job record; ARGV: group, consumer, then
-- the entry ids in the order of their records
-- Answers per entry: 0 lost, 1 held, 2 held and a cancel was asked for.
local out = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    if redis.call('HEXISTS', KEYS[i - 1], 'cancel_requested') == 1 then
      out[#out + 1] = 2
    else
      out[#out + 1] = 1
    end
  else
    out[#out + 1] = 0
  end
end
return out
"#,
    )
});

/// One running job whose lease [`renew`] keeps.
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub stream: &'a str,
    pub entry_id: &'a str,
    pub job_id: Uuid,
}

/// What [`renew`] found for one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// Still this consumer's; renewed.
    Held,
    /// Renewed, and a client asked to cancel the job: stop it.
    CancelRequested,
    /// Another consumer took the entry over (or it was acknowledged).
    Lost,
}

/// Renews the leases of `leases` held by `consumer`; answers in their order.
pub async fn renew(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    consumer: &str,
    leases: &[Lease<'_>],
) -> Result<Vec<Renewed>, QueueError> {
    let groups = by_stream(leases.iter().map(|l| l.stream));
    let invocations: Vec<_> = groups
        .iter()
        .map(|(stream, members)| {
            let mut inv = RENEW.key(*stream);
            inv.arg(GROUP).arg(consumer);
            for &i in members {
                inv.key(keys.job(&leases[i].job_id)).arg(leases[i].entry_id);
            }
            inv
        })
        .collect();
    let answers: Vec<Vec<i64>> = invoke_all(conn, &RENEW, &invocations).await?;
    Ok(scatter(&groups, answers, leases.len())?
        .into_iter()
        .map(|c| match c {
            2 => Renewed::CancelRequested,
            1 => Renewed::Held,
            _ => Renewed::Lost,
        })
        .collect())
}

/// Writes a running job's progress, only while `attempt` is the job's
/// current attempt and it is still running: a worker that lost the job to a
/// takeover cannot overwrite the new attempt's progress.
static PROGRESS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
-- KEYS: job; ARGV: attempt, progress JSON
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts')
if f[1] == 'running' and f[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'progress', ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// Stores `progress_json` as the job's `progress` field (served by
/// `GET /v1/jobs/{id}`); false when the attempt is no longer current.
pub async fn write_progress(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    job_id: &Uuid,
    attempt: u32,
    progress_json: &str,
) -> Result<bool, QueueError> {
    let written: i64 = PROGRESS
        .key(keys.job(job_id))
        .arg(attempt)
        .arg(progress_json)
        .invoke_async(conn)
        .await?;
    Ok(written == 1)
}

/// Moves retries that are due from `{ns}:delayed` back onto their streams.
/// A job canceled while it waited is dropped from the set, not re-queued.
static PROMOTE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
-- KEYS: delayed; ARGV: now, namespace, limit, control stream model,
-- training stream model (keys::queue_of, which this mirrors)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local moved = 0
for _, id in ipairs(ids) do
  local job = ARGV[2] .. ':job:' .. id
  local f = redis.call('HMGET', job, 'status', 'model', 'payload', 'kind')
  redis.call('ZREM', KEYS[1], id)
  if f[1] == 'queued' and f[2] and f[3] then
    local queue = f[2]
    if f[4] == 'validate' then queue = ARGV[4] elseif f[4] == 'retrain' then queue = ARGV[5] end
    redis.call('XADD', ARGV[2] .. ':stream:' .. queue, '*', 'id', id, 'job', f[3])
    redis.call('HDEL', job, 'payload', 'retry_at')
    moved = moved + 1
  end
end
return moved
"#,
    )
});

/// Re-queues up to `limit` due retries; returns how many were moved.
pub async fn promote_due(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    now_ms: i64,
    limit: usize,
) -> Result<usize, QueueError> {
    let mut inv = PROMOTE.key(keys.delayed());
    inv.arg(now_ms)
        .arg(keys.namespace())
        .arg(limit)
        .arg(CONTROL)
        .arg(TRAIN);
    let moved: Vec<i64> = invoke_all(conn, &PROMOTE, &[inv]).await?;
    Ok(moved
        .first()
        .and_then(|&m| usize::try_from(m).ok())
        .unwrap_or(0))
}

/// Trims a work stream of acknowledged entries only: everything older than
/// both the oldest pending entry and the group's last delivered entry. Entries
/// not yet delivered or not yet acknowledged are never touched.
static TRIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
-- KEYS: stream; ARGV: group
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local t = {}
  for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
  if t['name'] == ARGV[1] then last = t['last-delivered-id'] end
end
if not last or last == '0-0' then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
local minid = last
if tonumber(p[1]) > 0 then minid = p[2] end
return redis.call('XTRIM', KEYS[1], 'MINID', minid)
"#,
    )
});

/// Trims acknowledged entries from `stream`; returns how many were removed.
pub async fn trim_acked(conn: &mut impl ConnectionLike, stream: &str) -> Result<usize, QueueError> {
    let mut inv = TRIM.key(stream);
    inv.arg(GROUP);
    let n: Vec<i64> = invoke_all(conn, &TRIM, &[inv]).await?;
    Ok(n.first()
        .and_then(|&m| usize::try_from(m).ok())
        .unwrap_or(0))
}

/// Caps the dead-letter stream at about `max_len` entries (oldest dropped).
pub async fn trim_dead_letters(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    max_len: usize,
) -> Result<(), QueueError> {
    redis::cmd("XTRIM")
        .arg(keys.dead_letters())
        .arg("MAXLEN")
        .arg("~")
        .arg(max_len)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Acknowledges entries that carry no runnable job (no job id at all).
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
