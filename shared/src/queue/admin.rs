//! Operator operations on the queue, as `jobctl` runs them: listing dead
//! letters, replaying them onto their work streams, and per-model queue
//! statistics. Everything here only reads, except [`replay`], whose writes
//! all happen inside one Lua script so a replay is all-or-nothing.
//!
//! Dead letters are written by the workers (see [`super::consume`]) in the
//! format of [`super::wire::dead`]; this module parses them leniently, so one
//! malformed entry shows up as such instead of hiding the rest of the queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use redis::Value;
use redis::aio::ConnectionLike;
use redis::streams::{StreamId, StreamRangeReply};
use uuid::Uuid;

use super::QueueError;
use super::keys::{GROUP, Keys};
use super::stats;
use super::wire::{EntryJob, JobEnvelope, dead};
use crate::job::JobError;
use crate::model::valid_internal_model_name;

/// Entries fetched per XRANGE round trip: large enough that a big dead-letter
/// stream takes few round trips, small enough that no single reply (payloads
/// included) stalls Redis or the client.
const PAGE: usize = 500;

/// Per-model dead-letter counts need every entry read once; above this many
/// dead letters [`queue_stats`] reports only the total.
const DEAD_COUNT_LIMIT: u64 = 10_000;

/// Errors of the operator operations.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("dead letter {entry_id} cannot be replayed: {reason}")]
    NotReplayable { entry_id: String, reason: String },
}

impl From<redis::RedisError> for AdminError {
    fn from(e: redis::RedisError) -> AdminError {
        AdminError::Queue(QueueError::Redis(e))
    }
}

impl AdminError {
    /// Whether Redis could not be reached (retrying other entries is futile).
    pub fn is_unavailable(&self) -> bool {
        match self {
            AdminError::Queue(e) => e.is_unavailable(),
            AdminError::NotReplayable { .. } => false,
        }
    }
}

// ------------------------------------------------------------ time arguments

/// A time argument that is neither RFC 3339 nor a relative age.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid time {input:?}: {reason}; use RFC 3339 (2026-11-22T06:40:00Z) \
     or an age such as 90s, 30m, 1h, 2d, 1h30m"
)]
pub struct TimeArgError {
    pub input: String,
    pub reason: String,
}

/// Parses an operator's time argument into Unix ms: an RFC 3339 timestamp,
/// or an age counted back from `now_ms` made of number+unit parts (`ms`, `s`,
/// `m`, `h`, `d`, `w`), e.g. `30m` or `1h30m`.
pub fn parse_time_arg(input: &str, now_ms: i64) -> Result<i64, TimeArgError> {
    let err = |reason: &str| TimeArgError {
        input: input.to_owned(),
        reason: reason.to_owned(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    // Ages are digits and letters only; anything with a date or time
    // separator is meant as a timestamp and gets the RFC 3339 diagnosis.
    if s.contains(['-', ':', '+']) {
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|e| err(&format!("not RFC 3339 ({e})")))?;
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| err("out of range"));
    }
    let age = parse_age_ms(s).map_err(|r| err(&r))?;
    now_ms.checked_sub(age).ok_or_else(|| err("out of range"))
}

/// `1h30m` → 5 400 000. Every number needs a unit, so a bare `5` (seconds?
/// minutes?) is rejected rather than guessed.
fn parse_age_ms(s: &str) -> Result<i64, String> {
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let n: i64 = rest[..digits]
            .parse()
            .map_err(|_| "number too large".to_owned())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: i64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "" => return Err(format!("{n} has no unit")),
            other => return Err(format!("unknown unit {other:?}")),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit_ms)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| "age too large".to_owned())?;
    }
    Ok(total)
}

/// The millisecond part of a stream entry id (`1763792262123-0`).
pub fn entry_id_ms(entry_id: &str) -> Option<i64> {
    entry_id.split('-').next()?.parse().ok()
}

// -------------------------------------------------------------- dead letters

/// One entry of the dead-letter stream, parsed leniently: a missing or
/// malformed field gets a neutral value and, where it matters for a replay,
/// an explanation (see [`DeadLetter::envelope`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The entry's id in `{ns}:dead`.
    pub entry_id: String,
    /// From the `id` field; `None` if missing or not a UUID.
    pub job_id: Option<Uuid>,
    /// From the `model` field, else the payload's model, else empty.
    pub model: String,
    /// The last error; a non-JSON `error` field is kept as the message with
    /// code `unknown`.
    pub error: JobError,
    pub attempts: u32,
    /// From the `failed_at` field, else the entry id's time.
    pub failed_at_ms: i64,
    /// The original `job` bytes, exactly as they were on the work stream.
    pub payload: Vec<u8>,
    /// The payload decoded, or why it could not be.
    pub envelope: Result<JobEnvelope, String>,
}

impl DeadLetter {
    fn from_entry(entry: StreamId) -> DeadLetter {
        let text = |field: &str| match entry.map.get(field) {
            Some(v) => value_string(v),
            None => None,
        };
        let EntryJob {
            job_id,
            payload,
            job: envelope,
        } = EntryJob::read(&entry.map);
        let model = text(dead::MODEL)
            .filter(|m| !m.is_empty())
            .or_else(|| envelope.as_ref().ok().map(|e| e.model.clone()))
            .unwrap_or_default();
        let error = match text(dead::ERROR) {
            Some(raw) => serde_json::from_str::<JobError>(&raw).unwrap_or(JobError {
                code: "unknown".to_owned(),
                message: raw,
            }),
            None => JobError {
                code: "unknown".to_owned(),
                message: String::new(),
            },
        };
        DeadLetter {
            job_id,
            model,
            error,
            attempts: text(dead::ATTEMPTS)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            failed_at_ms: text(dead::FAILED_AT)
                .and_then(|s| s.parse().ok())
                .or_else(|| entry_id_ms(&entry.id))
                .unwrap_or(0),
            payload,
            envelope,
            entry_id: entry.id,
        }
    }

    /// Why this entry cannot be put back on a work stream, if it cannot.
    pub fn replay_blocker(&self) -> Option<String> {
        let env = match &self.envelope {
            Ok(env) => env,
            Err(e) => return Some(e.clone()),
        };
        if self.job_id != Some(env.id) {
            return Some(format!(
                "the id field ({}) does not match the payload's job id {}",
                self.job_id
                    .map_or_else(|| "missing".to_owned(), |id| id.to_string()),
                env.id
            ));
        }
        if self.model != env.model {
            return Some(format!(
                "the model field ({}) does not match the payload's model {}",
                self.model, env.model
            ));
        }
        if !valid_internal_model_name(&env.model) {
            return Some(format!("invalid model name {:?}", env.model));
        }
        None
    }
}

/// Which dead letters to select. Every set criterion must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub model: Option<String>,
    /// Failed at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Failed strictly before (Unix ms).
    pub until_ms: Option<i64>,
    /// Only these jobs; empty means any job.
    pub job_ids: Vec<Uuid>,
    /// At most this many (the oldest ones).
    pub limit: Option<usize>,
}

impl DeadLetterFilter {
    /// Whether a dead letter is selected (the limit aside).
    pub fn matches(&self, dl: &DeadLetter) -> bool {
        self.model.as_ref().is_none_or(|m| *m == dl.model)
            && self.since_ms.is_none_or(|t| dl.failed_at_ms >= t)
            && self.until_ms.is_none_or(|t| dl.failed_at_ms < t)
            && (self.job_ids.is_empty() || dl.job_id.is_some_and(|id| self.job_ids.contains(&id)))
    }
}

/// Dead letters matching `filter`, oldest first. Pages through the stream
/// with XRANGE COUNT so a huge dead-letter queue never becomes one huge
/// reply. The whole stream is scanned: `failed_at` comes from a worker's
/// clock, so entry ids (Redis's clock) cannot safely narrow a time range.
pub async fn list_dead(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, QueueError> {
    let mut out = Vec::new();
    if filter.limit == Some(0) {
        return Ok(out);
    }
    let mut pages = Pages::new(keys.dead_letters(0));
    while let Some(page) = pages.next(conn).await? {
        for entry in page {
            let dl = DeadLetter::from_entry(entry);
            if filter.matches(&dl) {
                out.push(dl);
                if filter.limit.is_some_and(|n| out.len() >= n) {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// Walks a stream from its start in pages of [`PAGE`] entries.
struct Pages {
    key: String,
    start: String,
    done: bool,
}

impl Pages {
    fn new(key: String) -> Pages {
        Pages {
            key,
            start: "-".to_owned(),
            done: false,
        }
    }

    async fn next(
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
            // `(` makes the next page start after the last entry seen
            // (exclusive ranges, Redis 6.2+), so nothing is read twice.
            Some(last) if reply.ids.len() == PAGE => self.start = format!("({}", last.id),
            _ => self.done = true,
        }
        Ok(if reply.ids.is_empty() {
            None
        } else {
            Some(reply.ids)
        })
    }
}

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

// -------------------------------------------------------------------- replay

/// What [`replay`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Back on the work stream under this new entry id.
    Replayed { stream_entry_id: String },
    /// The dead-letter entry was already gone (replayed concurrently);
    /// nothing was written.
    AlreadyReplayed,
    /// The job is `queued` or `running` again already; nothing was written
    /// and the dead-letter entry was kept.
    JobActive { status: String },
}

/// Replays one dead letter; see [`REPLAY`] for the exact steps. Entries
/// whose payload does not decode, or disagrees with the entry's `id` or
/// `model` fields, are refused with [`AdminError::NotReplayable`] because a
/// worker could not run them either.
pub async fn replay(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    dl: &DeadLetter,
) -> Result<ReplayOutcome, AdminError> {
    let not_replayable = |reason: String| AdminError::NotReplayable {
        entry_id: dl.entry_id.clone(),
        reason,
    };
    if let Some(reason) = dl.replay_blocker() {
        return Err(not_replayable(reason));
    }
    let env = dl
        .envelope
        .as_ref()
        .map_err(|e| not_replayable(e.clone()))?;
    let reply: Vec<String> = super::scripts::REPLAY
        .key(keys.dead_letters(0))
        .key(keys.job(&env.id))
        .key(keys.stream_of(env.kind, &env.model, &env.id))
        .key(keys.delayed_of(env.kind, &env.model, &env.id))
        .key(keys.job_usage(
            crate::model::tenant_of(&env.model),
            super::keys::partition_of(&env.id),
        ))
        .arg(&dl.entry_id)
        .arg(env.id.to_string())
        .arg(&dl.payload)
        .arg(env.kind.as_str())
        .arg(&env.model)
        .arg(env.submitted_at_ms)
        .arg(GROUP)
        .invoke_async(conn)
        .await?;
    match reply.as_slice() {
        [tag, id] if tag == "replayed" => Ok(ReplayOutcome::Replayed {
            stream_entry_id: id.clone(),
        }),
        [tag] if tag == "gone" => Ok(ReplayOutcome::AlreadyReplayed),
        [tag, status] if tag == "active" => Ok(ReplayOutcome::JobActive {
            status: status.clone(),
        }),
        other => {
            Err(QueueError::Corrupt(format!("unexpected replay script reply {other:?}")).into())
        }
    }
}

// --------------------------------------------------------------------- stats

/// One consumer of a model's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStats {
    pub name: String,
    /// Entries delivered to it and not yet acknowledged.
    pub pending: u64,
    /// Milliseconds since it last read or claimed.
    pub idle_ms: u64,
}

/// The oldest entry delivered but not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldestPending {
    pub entry_id: String,
    pub consumer: String,
    /// Time since it was enqueued (Redis clock: now − the entry id's time).
    pub age_ms: u64,
    /// Time since it was last delivered (its lease clock).
    pub idle_ms: u64,
    pub deliveries: u64,
}

/// One model's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    pub model: String,
    pub stream: String,
    /// Entries in the stream (XLEN), acknowledged ones included until
    /// trimmed.
    pub stream_length: u64,
    /// Whether the `workers` group exists (a worker for it ever started).
    pub group_exists: bool,
    /// Entries not yet delivered to any consumer.
    pub lag: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    pub consumers: Vec<ConsumerStats>,
    pub oldest_pending: Option<OldestPending>,
    /// Dead letters of this model; `None` when the dead-letter stream is
    /// too long to count per model (see [`QueueOverview::dead_letters`]).
    pub dead_letters: Option<u64>,
}

impl QueueStats {
    /// Jobs waiting or running: what scaling decisions look at.
    pub fn depth(&self) -> u64 {
        self.lag + self.pending
    }
}

/// Every model's queue and the dead-letter total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOverview {
    /// Sorted by model name.
    pub queues: Vec<QueueStats>,
    /// Entries in `{ns}:dead`, all models.
    pub dead_letters: u64,
}

/// Statistics of every model known from published signatures, from existing
/// work streams (a model whose workers are all gone still has a queue) or
/// from dead letters. Read-only; a few round trips per model.
pub async fn queue_stats(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
) -> Result<QueueOverview, QueueError> {
    let mut models: BTreeSet<String> = redis::cmd("HKEYS")
        .arg(keys.models())
        .query_async::<Vec<String>>(conn)
        .await?
        .into_iter()
        .collect();
    models.extend(scan_stream_models(conn, keys).await?);

    let dead_total: u64 = redis::cmd("XLEN")
        .arg(keys.dead_letters(0))
        .query_async(conn)
        .await?;
    let dead_by_model = if dead_total <= DEAD_COUNT_LIMIT {
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut pages = Pages::new(keys.dead_letters(0));
        while let Some(page) = pages.next(conn).await? {
            for entry in page {
                *counts
                    .entry(DeadLetter::from_entry(entry).model)
                    .or_default() += 1;
            }
        }
        models.extend(counts.keys().filter(|m| !m.is_empty()).cloned());
        Some(counts)
    } else {
        None
    };

    let now_ms = redis_now_ms(conn).await?;
    let mut queues = Vec::with_capacity(models.len());
    for model in models {
        let mut q = stream_stats(conn, keys, &model, now_ms).await?;
        q.dead_letters = dead_by_model
            .as_ref()
            .map(|c| c.get(&model).copied().unwrap_or(0));
        queues.push(q);
    }
    Ok(QueueOverview {
        queues,
        dead_letters: dead_total,
    })
}

/// Models that have a work stream in this namespace (SCAN, so a large
/// keyspace is walked incrementally instead of blocking Redis like KEYS).
async fn scan_stream_models(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
) -> Result<Vec<String>, QueueError> {
    let pattern = keys.stream_pattern(0);
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("stream")
            .query_async(conn)
            .await?;
        out.extend(
            batch
                .iter()
                .filter_map(|k| keys.model_of_stream(k))
                .filter(|m| !m.is_empty())
                .map(str::to_owned),
        );
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Redis's clock, the one stream entry ids are made from, so ages do not
/// depend on the operator's machine's clock.
async fn redis_now_ms(conn: &mut impl ConnectionLike) -> Result<i64, QueueError> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs * 1000 + micros / 1000)
}

async fn stream_stats(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    model: &str,
    now_ms: i64,
) -> Result<QueueStats, QueueError> {
    let stream = keys.stream(model, 0);
    let mut q = QueueStats {
        model: model.to_owned(),
        stream: stream.clone(),
        stream_length: 0,
        group_exists: false,
        lag: 0,
        pending: 0,
        consumers: Vec::new(),
        oldest_pending: None,
        dead_letters: None,
    };
    let kind: String = redis::cmd("TYPE").arg(&stream).query_async(conn).await?;
    if kind != "stream" {
        // No stream yet (or a foreign key): an empty queue, not an error.
        return Ok(q);
    }
    q.stream_length = redis::cmd("XLEN").arg(&stream).query_async(conn).await?;

    let groups: Vec<Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(conn)
        .await?;
    let Some(group) = stats::workers_group(groups) else {
        // No worker ever joined: nothing was delivered, everything waits.
        q.lag = q.stream_length;
        return Ok(q);
    };
    q.group_exists = true;
    q.pending = group.pending;
    q.lag = stats::lag(conn, &stream, &group).await?;

    let consumers: Vec<Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg(GROUP)
        .query_async(conn)
        .await?;
    q.consumers = consumers
        .into_iter()
        .map(field_map)
        .map(|c| ConsumerStats {
            name: c.get("name").and_then(value_string).unwrap_or_default(),
            pending: c.get("pending").and_then(value_u64).unwrap_or(0),
            idle_ms: c.get("idle").and_then(value_u64).unwrap_or(0),
        })
        .collect();

    if q.pending > 0 {
        // Extended form, first entry only: the smallest pending id is the
        // oldest pending job.
        let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(1)
            .query_async(conn)
            .await?;
        q.oldest_pending =
            rows.into_iter()
                .next()
                .map(|(entry_id, consumer, idle_ms, deliveries)| OldestPending {
                    age_ms: entry_id_ms(&entry_id)
                        .and_then(|t| u64::try_from(now_ms - t).ok())
                        .unwrap_or(0),
                    entry_id,
                    consumer,
                    idle_ms,
                    deliveries,
                });
    }
    Ok(q)
}

/// Entries of `stream` after `after` (exclusive), counted page by page.
pub(super) async fn count_after(
    conn: &mut impl ConnectionLike,
    stream: &str,
    after: &str,
) -> Result<u64, QueueError> {
    let mut pages = Pages::new(stream.to_owned());
    pages.start = format!("({after}");
    let mut n = 0u64;
    while let Some(page) = pages.next(conn).await? {
        n += page.len() as u64;
    }
    Ok(n)
}

/// An XINFO reply (alternating names and values, or a RESP3 map) as a map.
pub(super) fn field_map(v: Value) -> HashMap<String, Value> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Map(m) => m,
        Value::Array(items) => {
            let mut it = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| value_string(&k).map(|k| (k, v)))
        .collect()
}

pub(super) fn value_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => value_string(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobKind;
    use crate::queue::wire::{FIELD_ID, FIELD_JOB};

    const NOW: i64 = 1_763_792_262_123;

    #[test]
    fn relative_ages_count_back_from_now() {
        assert_eq!(parse_time_arg("30m", NOW), Ok(NOW - 30 * 60_000));
        assert_eq!(parse_time_arg("1h", NOW), Ok(NOW - 3_600_000));
        assert_eq!(parse_time_arg("2d", NOW), Ok(NOW - 2 * 86_400_000));
        assert_eq!(parse_time_arg("90s", NOW), Ok(NOW - 90_000));
        assert_eq!(parse_time_arg("250ms", NOW), Ok(NOW - 250));
        assert_eq!(parse_time_arg("1w", NOW), Ok(NOW - 7 * 86_400_000));
        assert_eq!(
            parse_time_arg(" 1h30m ", NOW),
            Ok(NOW - 90 * 60_000),
            "parts add up, surrounding blanks ignored"
        );
        assert_eq!(parse_time_arg("0s", NOW), Ok(NOW));
    }

    #[test]
    fn rfc3339_timestamps_are_absolute() {
        assert_eq!(
            parse_time_arg("2025-11-22T06:17:42.123Z", NOW),
            Ok(1_763_792_262_123)
        );
        assert_eq!(
            parse_time_arg("2025-11-22T07:17:42.123+01:00", 0),
            Ok(1_763_792_262_123),
            "offsets are honoured and now is irrelevant"
        );
        assert_eq!(parse_time_arg("1970-01-01T00:00:00Z", NOW), Ok(0));
    }

    #[test]
    fn malformed_time_arguments_are_rejected_with_the_accepted_forms() {
        for bad in [
            "",
            "5",
            "1x",
            "h",
            "1h30",
            "-1h",
            "yesterday",
            "2025-11-22",
            "2025-11-22T06:17:42",
            "2025-13-22T06:17:42Z",
            "99999999999999999999s",
            "9223372036854775807w",
        ] {
            let e = parse_time_arg(bad, NOW).expect_err(bad);
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains("RFC 3339"), "{e}");
        }
    }

    #[test]
    fn entry_id_time_is_the_millisecond_part() {
        assert_eq!(entry_id_ms("1763792262123-7"), Some(1_763_792_262_123));
        assert_eq!(entry_id_ms("0-1"), Some(0));
        assert_eq!(entry_id_ms("x-1"), None);
    }

    fn letter(model: &str, failed_at_ms: i64) -> DeadLetter {
        let env = JobEnvelope {
            id: Uuid::now_v7(),
            kind: JobKind::Predict,
            model: model.to_owned(),
            inputs: vec![],
            submitted_at_ms: failed_at_ms - 10,
            deadline_ms: None,
            traceparent: None,
            model_version: None,
            retrain: None,
        };
        DeadLetter {
            entry_id: format!("{failed_at_ms}-0"),
            job_id: Some(env.id),
            model: model.to_owned(),
            error: JobError {
                code: "inference_error".into(),
                message: "boom".into(),
            },
            attempts: 3,
            failed_at_ms,
            payload: env.encode().unwrap(),
            envelope: Ok(env),
        }
    }

    #[test]
    fn empty_filter_selects_everything() {
        assert!(DeadLetterFilter::default().matches(&letter("a", 1)));
    }

    #[test]
    fn filter_by_model_time_range_and_ids() {
        let a = letter("a", 1_000);
        let b = letter("b", 2_000);
        let by_model = DeadLetterFilter {
            model: Some("a".into()),
            ..Default::default()
        };
        assert!(by_model.matches(&a) && !by_model.matches(&b));

        // since is inclusive, until exclusive: adjacent ranges never
        // select one dead letter twice.
        let range = |since, until| DeadLetterFilter {
            since_ms: since,
            until_ms: until,
            ..Default::default()
        };
        assert!(range(Some(1_000), None).matches(&a));
        assert!(!range(Some(1_001), None).matches(&a));
        assert!(!range(None, Some(1_000)).matches(&a));
        assert!(range(None, Some(1_001)).matches(&a));
        assert!(range(Some(500), Some(1_500)).matches(&a));
        assert!(!range(Some(500), Some(1_500)).matches(&b));

        let by_id = DeadLetterFilter {
            job_ids: vec![b.job_id.unwrap()],
            ..Default::default()
        };
        assert!(!by_id.matches(&a) && by_id.matches(&b));
        let mut no_id = b.clone();
        no_id.job_id = None;
        assert!(
            !by_id.matches(&no_id),
            "an entry without id never matches ids"
        );

        let all_of = DeadLetterFilter {
            model: Some("b".into()),
            since_ms: Some(1_500),
            job_ids: vec![a.job_id.unwrap()],
            ..Default::default()
        };
        assert!(
            !all_of.matches(&a) && !all_of.matches(&b),
            "criteria are ANDed"
        );
    }

    fn entry(id: &str, fields: &[(&str, &[u8])]) -> StreamId {
        StreamId {
            id: id.to_owned(),
            map: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::BulkString(v.to_vec())))
                .collect(),
            milliseconds_elapsed_from_delivery: None,
            delivered_count: None,
        }
    }

    #[test]
    fn dead_letter_entries_parse_in_the_documented_format() {
        let want = letter("mlp128", NOW);
        let id = want.job_id.unwrap().to_string();
        let dl = DeadLetter::from_entry(entry(
            "1763792262999-0",
            &[
                (FIELD_ID, id.as_bytes()),
                (FIELD_JOB, &want.payload),
                (dead::MODEL, b"mlp128"),
                (
                    dead::ERROR,
                    br#"{"code":"inference_error","message":"boom"}"#,
                ),
                (dead::ATTEMPTS, b"3"),
                (dead::FAILED_AT, NOW.to_string().as_bytes()),
            ],
        ));
        assert_eq!(
            dl,
            DeadLetter {
                entry_id: "1763792262999-0".into(),
                ..want
            }
        );
        assert_eq!(dl.replay_blocker(), None);
    }

    #[test]
    fn malformed_dead_letters_parse_but_are_not_replayable() {
        let dl = DeadLetter::from_entry(entry(
            "1763792262999-0",
            &[(FIELD_ID, b"not-a-uuid"), (dead::ERROR, b"plain text")],
        ));
        assert_eq!(dl.job_id, None);
        assert_eq!(
            dl.failed_at_ms, 1_763_792_262_999,
            "falls back to entry time"
        );
        assert_eq!(dl.error.code, "unknown");
        assert_eq!(dl.error.message, "plain text");
        assert!(
            dl.replay_blocker()
                .is_some_and(|r| r.contains("no job payload"))
        );

        // A payload for another job than the id field names is refused: a
        // replay would reset one job's record and enqueue another job.
        let a = letter("m", 1);
        let mut mixed = letter("m", 1);
        mixed.payload = a.payload.clone();
        mixed.envelope = a.envelope.clone();
        assert!(
            mixed
                .replay_blocker()
                .is_some_and(|r| r.contains("does not match"))
        );

        let mut wrong_model = letter("m", 1);
        wrong_model.model = "other".into();
        assert!(
            wrong_model
                .replay_blocker()
                .is_some_and(|r| r.contains("model"))
        );
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(
            super::super::keys::glob_escape("a*b?[c]\\"),
            "a\\*b\\?\\[c\\]\\\\"
        );
        assert_eq!(
            super::super::keys::glob_escape("infer:stream:"),
            "infer:stream:"
        );
    }

    #[test]
    fn xinfo_replies_become_maps_in_both_protocols() {
        let resp2 = Value::Array(vec![
            Value::BulkString(b"name".to_vec()),
            Value::BulkString(b"workers".to_vec()),
            Value::BulkString(b"lag".to_vec()),
            Value::Nil,
            Value::BulkString(b"pending".to_vec()),
            Value::Int(4),
        ]);
        let m = field_map(resp2);
        assert_eq!(
            m.get("name").and_then(value_string).as_deref(),
            Some("workers")
        );
        assert_eq!(m.get("lag").and_then(value_u64), None);
        assert_eq!(m.get("pending").and_then(value_u64), Some(4));
        let resp3 = Value::Map(vec![(
            Value::SimpleString("pending".into()),
            Value::BulkString(b"7".to_vec()),
        )]);
        assert_eq!(field_map(resp3).get("pending").and_then(value_u64), Some(7));
    }
}
