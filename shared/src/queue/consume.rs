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

use redis::aio::ConnectionLike;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use uuid::Uuid;

use super::QueueError;
use super::keys::{GROUP, Keys, partition_of};
use super::scripts::{Durability, FINISH, PROGRESS, PROMOTE, RENEW, START, TRIM, invoke_all};
use super::wire::{EntryJob, FIELD_ID, FIELD_JOB, JobEnvelope};
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

/// Creates the consumer group of a stream (and the stream) if missing.
/// The group starts at `0`, not `$`, so jobs enqueued before the first worker
/// ever started are still delivered.
pub async fn ensure_group(conn: &mut impl ConnectionLike, stream: &str) -> Result<(), QueueError> {
    let res = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
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
    /// Whether a finish waits for a replica's copy before the worker moves
    /// on (see [`Durability`]).
    pub durability: Durability,
}

/// Takes a new attempt for each delivered job, or settles jobs that must not
/// run: a record that is gone or already terminal (e.g. canceled) is just
/// acknowledged; a job past its deadline fails with `deadline_exceeded`; a
/// job that already used every attempt (its workers kept dying) fails with
/// `attempts_exhausted` and is dead-lettered.
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
    let groups = by_stream(deliveries.iter().map(|d| d.stream.as_str()));
    let invocations: Vec<_> = groups
        .iter()
        .map(|(stream, members)| {
            let (model, p) = keys.parse_stream(stream).unwrap_or(("", 0));
            let mut inv = START.key(*stream);
            inv.key(keys.dead_letters(p))
                .arg(now_ms)
                .arg(consumer)
                .arg(GROUP)
                .arg(policy.max_attempts.max(1))
                .arg(policy.failed_ttl_secs.max(1))
                .arg(&channel)
                .arg(model);
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
                    .key(keys.job_usage(d.tenant(keys), partition_of(&id)))
                    .arg(&d.entry_id)
                    .arg(id.to_string())
                    .arg(deadline);
            }
            inv
        })
        .collect();
    let streams: Vec<&str> = groups.iter().map(|(s, _)| *s).collect();
    let codes: Vec<Vec<i64>> =
        invoke_all(conn, &START, &streams, &invocations, Durability::Async).await?;
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

/// Ends an attempt, atomically and only if the job is still `running` under
/// the caller's attempt: writes the outcome, acknowledges the entry and
/// publishes the job id when it became terminal.
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
    let groups = by_stream(items.iter().map(|f| f.delivery.stream.as_str()));
    let invocations: Vec<_> = groups
        .iter()
        .map(|(stream, members)| {
            let (model, p) = keys.parse_stream(stream).unwrap_or(("", 0));
            let mut inv = FINISH.key(*stream);
            inv.key(keys.dead_letters(p))
                .key(keys.delayed(model, p))
                .arg(GROUP)
                .arg(now_ms)
                .arg(&channel)
                .arg(model);
            for &i in members {
                finish_args(&mut inv, keys, policy, &items[i]);
            }
            inv
        })
        .collect();
    let streams: Vec<&str> = groups.iter().map(|(s, _)| *s).collect();
    let codes: Vec<Vec<i64>> =
        invoke_all(conn, &FINISH, &streams, &invocations, policy.durability).await?;
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
        .key(keys.job_usage(f.delivery.tenant(keys), partition_of(&f.job_id)))
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

/// Renews the lease of entries this consumer still owns by resetting their
/// idle time (XCLAIM JUSTID, which does not count as a delivery), and tells
/// whether a client asked to cancel each job meanwhile: the renewal is the
/// worker's periodic look at its running jobs, so a cancel costs no extra
/// round trip. An entry another consumer has taken over is left alone:
/// stealing it back would only make the two workers fight over it.
///
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
    let streams: Vec<&str> = groups.iter().map(|(s, _)| *s).collect();
    let answers: Vec<Vec<i64>> =
        invoke_all(conn, &RENEW, &streams, &invocations, Durability::Async).await?;
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
///
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

/// Re-queues due retries of `streams` (up to `limit` per stream) from
/// their delayed sets; returns how many were moved. The due ids of the
/// streams of one slot are read in one pipeline, then each stream with due
/// jobs is promoted by one script call (`lua/promote.lua`), which skips a
/// job canceled or moved meanwhile.
pub async fn promote_due(
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
            let mut inv = PROMOTE.key(set);
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
        let counts: Vec<i64> =
            invoke_all(conn, &PROMOTE, &first_keys, &invocations, Durability::Async).await?;
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
