//! The job as clients and operators see it: kind, status, error and the record
//! kept in Redis. The queue protocol that moves jobs lives in [`crate::queue`].

use std::collections::HashMap;

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
    pub const FIELDS: [&'static str; 14] = first(&Self::ALL_FIELDS);

    /// Every hash field a job record may hold: [`JobRecord::FIELDS`] first,
    /// then the fields only the scripts use (the payload size the usage release
    /// reads, the worker of the attempt, a retry's parked payload, due time
    /// and last error, a cancel's TTL). The one list of record fields: a test
    /// in `queue::scripts` keeps every Lua literal a script uses as a record
    /// field in it.
    pub const ALL_FIELDS: [&'static str; 20] = [
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
        "bytes",
        "worker",
        "payload",
        "retry_at",
        "last_error",
        "cancel_ttl",
    ];

    /// Builds the record from the hash fields; `None` when the hash is empty
    /// (unknown or expired job). Unknown extra fields are ignored so newer
    /// writers do not break older readers.
    pub fn from_fields(
        id: Uuid,
        mut fields: HashMap<String, String>,
    ) -> Result<Option<JobRecord>, String> {
        if fields.is_empty() {
            return Ok(None);
        }
        let mut take = |k: &str| fields.remove(k).filter(|v| !v.is_empty());
        let kind = take("kind")
            .and_then(|s| JobKind::parse(&s))
            .ok_or("job record has no valid kind")?;
        let status = take("status")
            .and_then(|s| JobStatus::parse(&s))
            .ok_or("job record has no valid status")?;
        let model = take("model").ok_or("job record has no model")?;
        let int = |v: Option<String>| v.and_then(|s| s.parse::<i64>().ok());
        let error = match take("error") {
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
            model_version: take("model_version"),
            status,
            attempts: int(take("attempts"))
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            created_at_ms: int(take("created_at")).unwrap_or(0),
            started_at_ms: int(take("started_at")),
            finished_at_ms: int(take("finished_at")),
            deadline_ms: int(take("deadline")),
            result_json: take("result"),
            error,
            traceparent: take("traceparent"),
            progress_json: take("progress"),
            cancel_requested_at_ms: int(take("cancel_requested")),
        }))
    }
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

    #[test]
    fn record_from_fields_parses_and_rejects_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(JobRecord::from_fields(id, HashMap::new()), Ok(None));
        let fields: HashMap<String, String> = [
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
            ("future_field", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let rec = JobRecord::from_fields(id, fields).unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Failed);
        assert_eq!(rec.attempts, 2);
        assert_eq!(rec.started_at_ms, Some(1500));
        assert_eq!(rec.deadline_ms, Some(1800));
        assert_eq!(rec.error.unwrap().code, "inference_error");
        assert_eq!(rec.result_json, None);
        assert!(rec.traceparent.is_some_and(|t| t.starts_with("00-4bf92f")));

        let bad: HashMap<String, String> = [("kind", "predict"), ("status", "weird")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(JobRecord::from_fields(id, bad).is_err());
    }
}
