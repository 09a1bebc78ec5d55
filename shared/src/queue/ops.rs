//! The API's side of the protocol: submitting and canceling jobs, reading job
//! records and model signatures. One function per step, each a single Redis
//! round trip. Functions take any async connection (`&mut impl
//! ConnectionLike`), so callers choose between a pooled and a dedicated one.
//!
//! Submitting and canceling are Lua scripts because each is a decision plus
//! writes that must not interleave with another client's: "is this
//! idempotency key taken, is the queue full, else write the job" and "is the
//! job still queued, then cancel it".

use redis::aio::ConnectionLike;
use std::collections::HashMap;
use uuid::Uuid;

use super::QueueError;
use super::index;
use super::keys::{GROUP, Keys, WebhookKey, partition_of};
use super::scripts::{self, CANCEL, Durability, SUBMIT};
use super::usage::{JobQuota, OverQuota};
use super::webhooks::Subscription;
use super::wire::{FIELD_ID, FIELD_JOB, JobEnvelope};
use crate::job::{JobKind, JobRecord, JobStatus};
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
    /// Whether the 202 waits for a replica's copy.
    pub durability: Durability,
    /// How long the job's index bucket outlives its hour, in seconds (see
    /// [`super::index`]): at least the longest record TTL, so an entry
    /// outlives its record.
    pub index_ttl_secs: u64,
    /// The jobs' webhook, if any (see [`super::webhooks`]).
    pub webhook: Option<&'a Subscription>,
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
    /// The job was written: record, stream entry, index entry and
    /// idempotency key.
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

/// One job's submit script call, its keys and arguments (see [`submit`]).
struct Call {
    job_key: String,
    payload: Vec<u8>,
    id: String,
    p: super::keys::Partition,
    idem_key: Option<String>,
    index_key: String,
    index_expires_at: i64,
    /// The subscription's JSON and its flags, or empty.
    webhook: (String, String),
}

impl Call {
    fn new(keys: &Keys, job: &JobEnvelope, opts: &SubmitOptions<'_>) -> Result<Call, QueueError> {
        let p = partition_of(&job.id);
        let bucket = index::bucket_of(index::id_ms(&job.id));
        Ok(Call {
            job_key: keys.job(&job.id),
            payload: job.encode()?,
            id: job.id.to_string(),
            p,
            idem_key: opts
                .idempotency
                .map(|i| keys.idempotency(p, &job.model, job.kind(), i.key_hash)),
            index_key: keys.job_index(tenant_of(&job.model), p, bucket),
            index_expires_at: index::expires_at_secs(bucket, opts.index_ttl_secs),
            webhook: match opts.webhook {
                Some(w) => (
                    serde_json::to_string(w).map_err(|e| QueueError::Corrupt(e.to_string()))?,
                    w.flags(),
                ),
                None => Default::default(),
            },
        })
    }

    fn invocation(
        &self,
        keys: &Keys,
        job: &JobEnvelope,
        opts: &SubmitOptions<'_>,
        replaceable: &str,
        role: Role<'_>,
    ) -> redis::ScriptInvocation<'static> {
        let parts = keys.partitions();
        let p = self.p;
        let mut inv = SUBMIT.key(&self.job_key);
        inv.key(keys.stream_of(job.kind(), &job.model, &job.id))
            .key(keys.job_usage(tenant_of(&job.model), p))
            .key(&self.index_key);
        match role {
            Role::Next { previous } => {
                inv.key(previous);
            }
            Role::Alone | Role::First { .. } => {
                if let Some(k) = &self.idem_key {
                    inv.key(k);
                }
            }
        }
        inv.arg(&self.id)
            .arg(&self.payload)
            .arg(job.kind().as_str())
            .arg(&job.model)
            .arg(job.submitted_at_ms)
            .arg(job.deadline_ms.map(|ms| ms.to_string()).unwrap_or_default())
            .arg(share(opts.max_queue_depth, parts, p))
            .arg(GROUP)
            .arg(opts.idempotency.map_or("", |i| i.body_hash))
            .arg(opts.idempotency.map_or(1, |i| i.ttl_secs.max(1)))
            .arg(FIELD_ID)
            .arg(FIELD_JOB)
            .arg(job.traceparent.as_deref().unwrap_or_default())
            .arg(share(opts.quota.max_jobs, parts, p))
            .arg(share(opts.quota.max_bytes, parts, p))
            .arg(replaceable)
            .arg(self.index_expires_at);
        match role {
            Role::Alone => inv.arg("").arg("").arg(""),
            Role::First { jobs, bytes } => inv.arg("first").arg(jobs).arg(bytes),
            Role::Next { .. } => inv.arg("next").arg("").arg(""),
        };
        inv.arg(&self.webhook.0).arg(&self.webhook.1);
        inv
    }
}

/// A call's part in an atomic batch (see `lua/submit.lua`).
#[derive(Clone, Copy)]
enum Role<'a> {
    /// Not in one: checked and counted on its own.
    Alone,
    /// Checks the bounds for the whole batch.
    First { jobs: usize, bytes: usize },
    /// Runs only if the job before it (`previous`, its record key) was
    /// written.
    Next { previous: &'a str },
}

/// The script's answer, before an `exists` is resolved.
enum Reply {
    Done(Submitted),
    /// `{'exists', id, same body, value}`: the key names an earlier job.
    Exists {
        earlier: Uuid,
        same_body: bool,
        value: String,
    },
}

fn parse_reply(reply: &[String]) -> Result<Reply, QueueError> {
    let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or_default();
    match field(0) {
        "created" => Ok(Reply::Done(Submitted::Created)),
        "exists" => Ok(Reply::Exists {
            earlier: Uuid::parse_str(field(1)).map_err(|_| {
                QueueError::Corrupt(format!("idempotency record names job {:?}", field(1)))
            })?,
            same_body: field(2) == "1",
            value: field(3).to_owned(),
        }),
        "full" => Ok(Reply::Done(Submitted::QueueFull {
            depth: field(1).parse().unwrap_or(u64::MAX),
        })),
        "quota" => Ok(Reply::Done(Submitted::OverQuota(OverQuota::from_reply(
            field(1),
            field(2),
            field(3),
        )?))),
        other => Err(QueueError::Corrupt(format!(
            "submit script answered {other:?}"
        ))),
    }
}

/// Checks the idempotency key, then the queue depth, then the tenant's
/// quota, then writes the job record, its stream entry, its entry in the
/// tenant's job index ([`super::index`]) and the idempotency key and counts
/// the job in the tenant's usage, atomically (`lua/submit.lua`): the record
/// and the stream entry are written together or not at all, so there is
/// never one without the other.
///
/// Everything lives in the partition the job's id names
/// ([`Keys::new_job_id`]); the queue-depth and quota bounds are the
/// partition's share of them ([`share`]). The stream follows from the job's
/// kind ([`super::keys::queue_of`]): control and training jobs name their
/// model but travel on their own streams. The job's tenant is its model's
/// ([`crate::model::tenant_of`]).
///
/// Depth is what the consumer group still owes: `lag` (entries not yet
/// delivered) plus `pending` (delivered, not yet acknowledged). Without a
/// group (no worker ever started) or when Redis cannot compute the lag
/// (entries deleted mid-stream), XLEN stands in: an over-estimate, never an
/// under-estimate, since acknowledged entries are only ever trimmed.
///
/// An idempotency key that names an earlier job is resolved here: the
/// earlier record (same partition, but a key the script could not have
/// been given) is read, and if it has expired the key is taken over with a
/// compare-and-set on its old value, so two racing retries still make one
/// job.
pub async fn submit(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    job: &JobEnvelope,
    opts: &SubmitOptions<'_>,
) -> Result<Submitted, QueueError> {
    let call = Call::new(keys, job, opts)?;
    let mut replaceable = String::new();
    for _ in 0..3 {
        let inv = call.invocation(keys, job, opts, &replaceable, Role::Alone);
        let reply: Vec<String> =
            scripts::invoke(conn, &SUBMIT, &call.job_key, &inv, opts.durability).await?;
        let (earlier, same_body, value) = match parse_reply(&reply)? {
            Reply::Done(done) => return Ok(done),
            Reply::Exists {
                earlier,
                same_body,
                value,
            } => (earlier, same_body, value),
        };
        let status: Option<String> = redis::cmd("HGET")
            .arg(keys.job(&earlier))
            .arg("status")
            .query_async(conn)
            .await?;
        return match status {
            Some(st) if same_body => Ok(Submitted::Duplicate {
                id: earlier,
                status: JobStatus::parse(&st).ok_or_else(|| {
                    QueueError::Corrupt(format!("job {earlier} has status {st:?}"))
                })?,
            }),
            Some(_) => Ok(Submitted::KeyReused(earlier)),
            // The earlier job's record is gone (expired, e.g. under a
            // short canceled TTL): nothing is left to return, so the key is
            // taken over.
            None => {
                replaceable = value;
                continue;
            }
        };
    }
    Err(QueueError::Corrupt(
        "an idempotency key kept changing while it was taken over".into(),
    ))
}

/// [`submit`] for many jobs at once (bulk submit): the same script, the
/// calls pipelined in one round trip per partition
/// ([`scripts::invoke_all`]). Answers come back in `jobs` order.
///
/// Not `atomic`: each job is checked and written on its own, as by
/// [`submit`] (its queue bound and its tenant's quota apply per job, in
/// order). A job whose idempotency key named an earlier job (nothing was
/// written for it) is resolved by [`submit`] afterwards.
///
/// `atomic`: every job must be in one partition (else
/// [`QueueError::Corrupt`], nothing sent). The first call checks the bounds
/// for the whole batch; every later one runs only if the one before it
/// wrote its job. So either every job is written or none is, and then every
/// answer is the first one's refusal. Idempotency keys are not checked.
/// Each call counts its own job in the tenant's usage, so a pipeline cut
/// short (a dropped connection) leaves counted exactly the jobs written.
/// Another client's submit may run between two calls of the batch, and its
/// own bound check sees only the part of the batch written so far: the
/// queue bound and the quota may be passed by less than the batch's size
/// while it is written.
pub async fn submit_many(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    jobs: &[JobEnvelope],
    opts: &SubmitOptions<'_>,
    atomic: bool,
) -> Result<Vec<Submitted>, QueueError> {
    let calls = jobs
        .iter()
        .map(|job| Call::new(keys, job, opts))
        .collect::<Result<Vec<_>, _>>()?;
    if atomic && calls.windows(2).any(|w| w[0].p != w[1].p) {
        return Err(QueueError::Corrupt(
            "an atomic batch spans partitions".into(),
        ));
    }
    let first = Role::First {
        jobs: calls.len(),
        bytes: calls.iter().map(|c| c.payload.len()).sum(),
    };
    let invocations: Vec<_> = calls
        .iter()
        .zip(jobs)
        .enumerate()
        .map(|(i, (call, job))| {
            let role = match (atomic, i.checked_sub(1)) {
                (false, _) => Role::Alone,
                (true, None) => first,
                (true, Some(prev)) => Role::Next {
                    previous: &calls[prev].job_key,
                },
            };
            call.invocation(keys, job, opts, "", role)
        })
        .collect();
    let first_keys: Vec<&str> = calls.iter().map(|c| c.job_key.as_str()).collect();
    let replies: Vec<Vec<String>> =
        scripts::invoke_all(conn, &SUBMIT, &first_keys, &invocations, opts.durability).await?;
    let mut out = Vec::with_capacity(jobs.len());
    for (reply, job) in replies.iter().zip(jobs) {
        if reply.first().map(String::as_str) == Some("aborted") {
            // Only ever after a refused first call.
            match out.first() {
                Some(refused) if *refused != Submitted::Created => out.push(*refused),
                _ => {
                    return Err(QueueError::Corrupt(
                        "an atomic batch was cut after its first job".into(),
                    ));
                }
            }
            continue;
        }
        out.push(match parse_reply(reply)? {
            Reply::Done(done) => done,
            Reply::Exists { .. } => submit(conn, keys, job, opts).await?,
        });
    }
    Ok(out)
}

/// Partition `p`'s share of a bound over `parts` partitions: the bound
/// divided evenly, the remainder to the first partitions, so the shares add
/// up to the bound exactly. 0 stays "unbounded"; a partition whose share
/// would be 0 (a bound below P) gets 1, so a tiny bound never refuses
/// everything.
pub fn share(bound: u64, parts: u16, p: u16) -> u64 {
    if bound == 0 || parts <= 1 {
        return bound;
    }
    let (n, p) = (u64::from(parts), u64::from(p));
    (bound / n + u64::from(p < bound % n)).max(1)
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
    JobRecord::from_values(*id, values).map_err(QueueError::Corrupt)
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

/// Cancels a job (`lua/cancel.lua`). A `queued` one is canceled at once:
/// marked canceled, its record's TTL started, a parked retry dropped, its
/// usage released, and the id published so long-polls wake; its stream
/// entry stays until a worker reads it, whose start step sees a terminal
/// job and just acknowledges the entry. A `running` one gets
/// `cancel_requested` (the time) and `cancel_ttl`: its worker sees them
/// when it renews the lease, stops the run and ends the attempt `canceled`
/// with that TTL. A job that ends before its worker looks ends as it ended.
pub async fn cancel(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    id: &Uuid,
    kind: JobKind,
    model: &str,
    ttl_secs: u64,
    now_ms: i64,
) -> Result<Canceled, QueueError> {
    let mut inv = CANCEL.key(keys.job(id));
    inv.key(keys.delayed_of(kind, model, id))
        .key(keys.job_usage(tenant_of(model), partition_of(id)))
        .key(keys.webhooks(partition_of(id), WebhookKey::Outbox))
        .arg(now_ms)
        .arg(ttl_secs.max(1))
        .arg(keys.job_finished_channel())
        .arg(id.to_string());
    let reply: Vec<String> = inv.invoke_async(conn).await?;
    let mut reply = reply.into_iter();
    let tag = reply.next();
    let record = |reply: std::vec::IntoIter<String>| {
        let mut reply = reply;
        let pairs = std::iter::from_fn(|| Some((reply.next()?, reply.next()?)));
        match JobRecord::from_pairs(*id, pairs).map_err(QueueError::Corrupt)? {
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
