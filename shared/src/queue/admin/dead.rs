//! Dead letters: reading the entries of every partition's `{ns}:{P}:dead`
//! leniently, selecting them
//! ([`DeadLetterFilter`]) and counting them per model. Putting one back on
//! its work stream, which also deletes it, is [`super::replay`].
//!
//! Dead letters are written by the workers (see [`crate::queue::consume`])
//! in the format of [`crate::queue::wire::dead`]; a malformed entry shows up
//! as such instead of hiding the rest of the queue.

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use redis::streams::StreamId;
use uuid::Uuid;

use crate::job::JobError;
use crate::model::valid_internal_model_name;
use crate::queue::QueueError;
use crate::queue::keys::{Keys, Partition};
use crate::queue::paging::{Pages, entry_id_ms};
use crate::queue::wire::{EntryJob, JobEnvelope, dead};

/// One entry of the dead-letter stream, parsed leniently: a missing or
/// malformed field gets a neutral value and, where it matters for a replay,
/// an explanation (see [`DeadLetter::envelope`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The partition whose dead-letter stream holds it (`{ns}:{P}:dead`).
    pub partition: Partition,
    /// The entry's id in that stream.
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
    pub(super) fn from_entry(entry: StreamId, partition: Partition) -> DeadLetter {
        // A field that is missing or does not convert reads as absent.
        let text = |field: &str| entry.get::<String>(field);
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
            partition,
            job_id,
            model,
            error,
            attempts: entry.get(dead::ATTEMPTS).unwrap_or(0),
            failed_at_ms: entry
                .get(dead::FAILED_AT)
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

/// Dead letters matching `filter`, oldest first (by entry id, Redis's
/// clock, across the partitions). Pages through each partition's stream
/// with XRANGE COUNT so a huge dead-letter queue never becomes one huge
/// reply. The whole stream is scanned: `failed_at` comes from a worker's
/// clock, so entry ids cannot safely narrow a time range.
pub async fn list_dead(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, QueueError> {
    let mut out = Vec::new();
    if filter.limit == Some(0) {
        return Ok(out);
    }
    for p in keys.all_partitions() {
        let mut taken = 0;
        let mut pages = Pages::new(keys.dead_letters(p));
        'pages: while let Some(page) = pages.next(conn).await? {
            for entry in page {
                let dl = DeadLetter::from_entry(entry, p);
                if filter.matches(&dl) {
                    out.push(dl);
                    taken += 1;
                    // Each partition is in order: past `limit` of its own,
                    // none of its later entries can make the merged cut.
                    if filter.limit.is_some_and(|n| taken >= n) {
                        break 'pages;
                    }
                }
            }
        }
    }
    out.sort_by_key(|dl| (entry_id_ms(&dl.entry_id).unwrap_or(0), dl.partition));
    if let Some(n) = filter.limit {
        out.truncate(n);
    }
    Ok(out)
}

/// Entries in every partition's dead-letter stream.
pub(super) async fn total(conn: &mut impl ConnectionLike, keys: &Keys) -> Result<u64, QueueError> {
    let mut total = 0;
    for p in keys.all_partitions() {
        let n: u64 = redis::cmd("XLEN")
            .arg(keys.dead_letters(p))
            .query_async(conn)
            .await?;
        total += n;
    }
    Ok(total)
}

/// Dead letters per model (empty for an entry that names none), or `None`
/// when there are more than `limit`: counting reads every entry once.
pub(super) async fn count_by_model(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    total: u64,
    limit: u64,
) -> Result<Option<HashMap<String, u64>>, QueueError> {
    if total > limit {
        return Ok(None);
    }
    let mut counts: HashMap<String, u64> = HashMap::new();
    for p in keys.all_partitions() {
        let mut pages = Pages::new(keys.dead_letters(p));
        while let Some(page) = pages.next(conn).await? {
            for entry in page {
                *counts
                    .entry(DeadLetter::from_entry(entry, p).model)
                    .or_default() += 1;
            }
        }
    }
    Ok(Some(counts))
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;
    use crate::queue::wire::{FIELD_ID, FIELD_JOB, JobSpec};

    const NOW: i64 = 1_763_792_262_123;

    fn letter(model: &str, failed_at_ms: i64) -> DeadLetter {
        let env = JobEnvelope {
            id: Uuid::now_v7(),
            model: model.to_owned(),
            submitted_at_ms: failed_at_ms - 10,
            deadline_ms: None,
            traceparent: None,
            spec: JobSpec::Predict {
                inputs: vec![],
                pinned_version: None,
            },
        };
        DeadLetter {
            partition: 0,
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
        let dl = DeadLetter::from_entry(
            entry(
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
            ),
            0,
        );
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
        let dl = DeadLetter::from_entry(
            entry(
                "1763792262999-0",
                &[(FIELD_ID, b"not-a-uuid"), (dead::ERROR, b"plain text")],
            ),
            0,
        );
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
    fn numeric_fields_may_arrive_as_integers() {
        // RESP3 or a Lua-written entry may carry numbers as integers; the
        // typed read takes both.
        let mut e = entry("7-0", &[(FIELD_ID, b"x")]);
        e.map.insert(dead::ATTEMPTS.into(), Value::Int(4));
        e.map.insert(dead::FAILED_AT.into(), Value::Int(1_234));
        let dl = DeadLetter::from_entry(e, 0);
        assert_eq!((dl.attempts, dl.failed_at_ms), (4, 1_234));
        let junk = DeadLetter::from_entry(
            entry(
                "7-0",
                &[(dead::ATTEMPTS, b"many"), (dead::FAILED_AT, b"soon")],
            ),
            0,
        );
        assert_eq!((junk.attempts, junk.failed_at_ms), (0, 7), "neutral values");
    }
}
