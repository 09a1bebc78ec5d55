//! The job as clients and operators see it: kind, status, error and the record
//! kept in Redis. The queue protocol that moves jobs lives in [`crate::queue`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a job asks for.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Predict,
    /// Load an uploaded model version in ONNX Runtime and record whether it
    /// is servable (see [`crate::queue::registry`]).
    Validate,
    /// Train a new version of a model on a dataset, evaluate it against the
    /// current version and maybe promote it (see
    /// [`crate::queue::wire::RetrainSpec`]).
    Retrain,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Predict => "predict",
            JobKind::Validate => "validate",
            JobKind::Retrain => "retrain",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "predict" => Some(JobKind::Predict),
            "validate" => Some(JobKind::Validate),
            "retrain" => Some(JobKind::Retrain),
            _ => None,
        }
    }
}

/// Life cycle: `queued → running → succeeded | failed | canceled`, or
/// `queued → canceled`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Canceled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// A terminal job never changes again (until its record expires).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled
        )
    }
}

/// Why a job failed: a stable snake_case `code` for programs and a sentence
/// for people.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// A job's record as stored in its Redis hash (see [`crate::queue::keys`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: Uuid,
    pub kind: JobKind,
    pub model: String,
    pub model_version: Option<String>,
    pub status: JobStatus,
    pub attempts: u32,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// Latest start time (Unix ms) the client asked for, if any.
    pub deadline_ms: Option<i64>,
    /// The result exactly as the worker encoded it (JSON text), so the API can
    /// serve it without decoding and re-encoding.
    pub result_json: Option<String>,
    pub error: Option<JobError>,
    /// W3C `traceparent` stored at submission (see [`crate::trace`]).
    pub traceparent: Option<String>,
    /// A running job's progress as the worker last wrote it (JSON text,
    /// retrain jobs only; see [`crate::queue::consume::write_progress`]).
    pub progress_json: Option<String>,
    /// When a client asked to cancel the job while it ran (Unix ms); its
    /// worker stops it at its next check.
    pub cancel_requested_at_ms: Option<i64>,
    /// The job's webhook subscription (JSON, see
    /// [`crate::queue::webhooks::Subscription`]).
    pub webhook_json: Option<String>,
    /// What became of its webhook calls (JSON, event →
    /// [`crate::queue::webhooks::DeliveryState`]).
    pub webhook_deliveries_json: Option<String>,
}

/// The first `N` of `all`, at compile time: [`JobRecord::FIELDS`] is a
/// prefix of [`JobRecord::ALL_FIELDS`], written once.
const fn first<const N: usize>(all: &[&'static str]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = all[i];
        i += 1;
    }
    out
}

impl JobRecord {
    /// The hash fields a record is built from. Readers fetch only these
    /// (HMGET): the hash also holds worker-side fields, among them a binary
    /// payload parked while a retry waits, that are no reader's business.
    pub const FIELDS: [&'static str; 16] = first(&Self::ALL_FIELDS);

    /// Every hash field a job record may hold: [`JobRecord::FIELDS`] first,
    /// then the fields only the scripts use (the payload size the usage release
    /// reads, the worker of the attempt, a retry's parked payload, due time
    /// and last error, a cancel's TTL, the mark of a job an event stream
    /// follows, [`crate::queue::watch`]). The one list of record fields: a test
    /// in `queue::scripts` keeps every Lua literal a script uses as a record
    /// field in it.
    pub const ALL_FIELDS: [&'static str; 24] = [
        "kind",
        "model",
        "model_version",
        "status",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
        "deadline",
        "result",
        "error",
        "traceparent",
        "progress",
        "cancel_requested",
        "webhook",
        "webhook_deliveries",
        "bytes",
        "worker",
        "payload",
        "retry_at",
        "last_error",
        "cancel_ttl",
        "hook",
        "watched",
    ];

    /// Builds the record from `(field, value)` pairs as `HGETALL` answers
    /// them (fields [`JobRecord::FIELDS`] does not name are ignored).
    pub fn from_pairs(
        id: Uuid,
        pairs: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Option<JobRecord>, String> {
        let mut values = vec![None; Self::FIELDS.len()];
        for (k, v) in pairs {
            if let Some(i) = Self::FIELDS.iter().position(|f| *f == k) {
                values[i] = Some(v);
            }
        }
        Self::from_values(id, values)
    }

    /// Builds the record from the values of [`JobRecord::FIELDS`], in that
    /// order, as `HMGET` answers them; `None` when none is set (unknown or
    /// expired job). Read by position rather than gathered into a map: the
    /// job view reads a record per request, and hashing every field name
    /// cost more than the rest of the conversion.
    pub fn from_values(
        id: Uuid,
        mut values: Vec<Option<String>>,
    ) -> Result<Option<JobRecord>, String> {
        if values.len() != Self::FIELDS.len() {
            return Err(format!(
                "job record read with {} values for {} fields",
                values.len(),
                Self::FIELDS.len()
            ));
        }
        if values.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut take = |i: usize| values[i].take().filter(|v| !v.is_empty());
        let kind = take(field::KIND)
            .and_then(|s| JobKind::parse(&s))
            .ok_or("job record has no valid kind")?;
        let status = take(field::STATUS)
            .and_then(|s| JobStatus::parse(&s))
            .ok_or("job record has no valid status")?;
        let model = take(field::MODEL).ok_or("job record has no model")?;
        let int = |v: Option<String>| v.and_then(|s| s.parse::<i64>().ok());
        let error = match take(field::ERROR) {
            Some(s) => Some(
                serde_json::from_str::<JobError>(&s)
                    .map_err(|e| format!("job record has a corrupt error: {e}"))?,
            ),
            None => None,
        };
        Ok(Some(JobRecord {
            id,
            kind,
            model,
            model_version: take(field::MODEL_VERSION),
            status,
            attempts: int(take(field::ATTEMPTS))
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            created_at_ms: int(take(field::CREATED_AT)).unwrap_or(0),
            started_at_ms: int(take(field::STARTED_AT)),
            finished_at_ms: int(take(field::FINISHED_AT)),
            deadline_ms: int(take(field::DEADLINE)),
            result_json: take(field::RESULT),
            error,
            traceparent: take(field::TRACEPARENT),
            progress_json: take(field::PROGRESS),
            cancel_requested_at_ms: int(take(field::CANCEL_REQUESTED)),
            webhook_json: take(field::WEBHOOK),
            webhook_deliveries_json: take(field::WEBHOOK_DELIVERIES),
        }))
    }
}

/// Positions in [`JobRecord::FIELDS`], found by name at compile time: a
/// name missing from the list fails the build.
mod field {
    use super::JobRecord;

    const fn at(name: &str) -> usize {
        let fields = JobRecord::FIELDS;
        let mut i = 0;
        while i < fields.len() {
            if eq(fields[i].as_bytes(), name.as_bytes()) {
                return i;
            }
            i += 1;
        }
        panic!("not a field of JobRecord::FIELDS")
    }

    const fn eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    pub(super) const KIND: usize = at("kind");
    pub(super) const MODEL: usize = at("model");
    pub(super) const MODEL_VERSION: usize = at("model_version");
    pub(super) const STATUS: usize = at("status");
    pub(super) const ATTEMPTS: usize = at("attempts");
    pub(super) const CREATED_AT: usize = at("created_at");
    pub(super) const STARTED_AT: usize = at("started_at");
    pub(super) const FINISHED_AT: usize = at("finished_at");
    pub(super) const DEADLINE: usize = at("deadline");
    pub(super) const RESULT: usize = at("result");
    pub(super) const ERROR: usize = at("error");
    pub(super) const TRACEPARENT: usize = at("traceparent");
    pub(super) const PROGRESS: usize = at("progress");
    pub(super) const CANCEL_REQUESTED: usize = at("cancel_requested");
    pub(super) const WEBHOOK: usize = at("webhook");
    pub(super) const WEBHOOK_DELIVERIES: usize = at("webhook_deliveries");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip_and_terminality() {
        for st in [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Canceled,
        ] {
            assert_eq!(JobStatus::parse(st.as_str()), Some(st));
            assert_eq!(
                serde_json::to_string(&st).unwrap(),
                format!("\"{}\"", st.as_str())
            );
        }
        assert!(!JobStatus::Queued.is_terminal());
        assert!(!JobStatus::Running.is_terminal());
        assert!(JobStatus::Failed.is_terminal());
    }

    /// The values `HMGET` of [`JobRecord::FIELDS`] would answer for a hash
    /// holding `pairs` (fields the list does not name are not read).
    fn values(pairs: &[(&str, &str)]) -> Vec<Option<String>> {
        JobRecord::FIELDS
            .iter()
            .map(|f| {
                pairs
                    .iter()
                    .find(|(k, _)| k == f)
                    .map(|(_, v)| (*v).to_owned())
            })
            .collect()
    }

    #[test]
    fn record_from_values_parses_and_rejects_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(JobRecord::from_values(id, values(&[])), Ok(None));
        let fields = values(&[
            ("kind", "predict"),
            ("status", "failed"),
            ("model", "mlp128"),
            ("attempts", "2"),
            ("created_at", "1000"),
            ("started_at", "1500"),
            ("finished_at", "2000"),
            ("model_version", "abc"),
            ("deadline", "1800"),
            ("error", r#"{"code":"inference_error","message":"boom"}"#),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("progress", r#"{"epoch":1}"#),
            ("cancel_requested", "1900"),
            ("future_field", "x"),
        ]);
        let rec = JobRecord::from_values(id, fields).unwrap().unwrap();
        assert_eq!(rec.kind, JobKind::Predict);
        assert_eq!(rec.model, "mlp128");
        assert_eq!(rec.model_version.as_deref(), Some("abc"));
        assert_eq!(rec.status, JobStatus::Failed);
        assert_eq!(rec.attempts, 2);
        assert_eq!(rec.created_at_ms, 1000);
        assert_eq!(rec.started_at_ms, Some(1500));
        assert_eq!(rec.finished_at_ms, Some(2000));
        assert_eq!(rec.deadline_ms, Some(1800));
        assert_eq!(rec.error.unwrap().code, "inference_error");
        assert_eq!(rec.result_json, None);
        assert_eq!(rec.progress_json.as_deref(), Some(r#"{"epoch":1}"#));
        assert_eq!(rec.cancel_requested_at_ms, Some(1900));
        assert!(rec.traceparent.is_some_and(|t| t.starts_with("00-4bf92f")));
        let done = values(&[
            ("kind", "predict"),
            ("status", "succeeded"),
            ("model", "m"),
            ("result", "[1]"),
        ]);
        let rec = JobRecord::from_values(id, done).unwrap().unwrap();
        assert_eq!(rec.result_json.as_deref(), Some("[1]"));
        let pairs = [
            ("status", "queued"),
            ("payload", "x"),
            ("kind", "retrain"),
            ("model", "m"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let rec = JobRecord::from_pairs(id, pairs).unwrap().unwrap();
        assert_eq!(
            (rec.kind, rec.status),
            (JobKind::Retrain, JobStatus::Queued)
        );
        assert_eq!(JobRecord::from_pairs(id, []), Ok(None));

        let bad = values(&[("kind", "predict"), ("status", "weird")]);
        assert!(JobRecord::from_values(id, bad).is_err());
        assert!(JobRecord::from_values(id, vec![None; 3]).is_err());
    }
}
