//! An attempt's two transitions: [`start`] (a new attempt, or the job
//! settled unrun) and [`finish`] (its outcome, compare-and-set on the
//! attempt), each one script call per stream of a batch.

use redis::aio::ConnectionLike;
use uuid::Uuid;

use super::read::Delivery;
use super::{by_stream, scatter};
use crate::job::JobError;
use crate::queue::QueueError;
use crate::queue::keys::{GROUP, Keys, WebhookKey, partition_of};
use crate::queue::scripts::{Durability, FINISH, START, invoke_all};

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
                .key(keys.webhooks(p, WebhookKey::Outbox))
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
                .key(keys.webhooks(p, WebhookKey::Outbox))
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
