//! Stream entry format. Each entry of `{ns}:stream:{model}` has two fields:
//!
//! * `id`: the job id as text, readable even if the payload is not, so a
//!   worker can fail the right job instead of dropping an undecodable entry;
//! * `job`: a [`JobEnvelope`] encoded as MessagePack (rmp-serde, struct as
//!   map so fields can be added without breaking older readers).
//!
//! The dead-letter stream `{ns}:dead` carries the same two fields plus the
//! ones named in [`dead`], so a replay puts the exact original payload back.

use std::collections::HashMap;

use redis::Value;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::job::JobKind;
use crate::tensor::Tensor;

pub const FIELD_ID: &str = "id";
pub const FIELD_JOB: &str = "job";

/// Extra fields of a dead-letter entry (besides `id` and `job`).
pub mod dead {
    /// The model, so dead letters can be filtered without decoding payloads.
    pub const MODEL: &str = "model";
    /// The last error, as `{"code", "message"}` JSON.
    pub const ERROR: &str = "error";
    /// Attempts made before giving up.
    pub const ATTEMPTS: &str = "attempts";
    /// When the job was dead-lettered (Unix ms).
    pub const FAILED_AT: &str = "failed_at";
}

/// What a worker needs to run a job, carried on the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEnvelope {
    pub id: Uuid,
    pub kind: JobKind,
    pub model: String,
    pub inputs: Vec<Tensor>,
    pub submitted_at_ms: i64,
    /// Latest start time (Unix ms); a job not started by then fails with
    /// `deadline_exceeded` instead of running late.
    #[serde(default)]
    pub deadline_ms: Option<i64>,
    /// W3C `traceparent` of the API's submit span (see [`crate::trace`]):
    /// the worker's span continues it. Absent in entries written before it
    /// existed.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The registry version to run on (a pinned predict), or the version a
    /// `validate` job checks; `None`: the model's current version.
    #[serde(default)]
    pub model_version: Option<u32>,
    /// What a `retrain` job trains on and how; `None` for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrain: Option<RetrainSpec>,
}

/// A retrain request as the worker needs it. The API has checked it
/// (parameters, dataset presence, target column); the worker checks again,
/// since a dataset can change while the job waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainSpec {
    pub data: TrainingData,
    /// The training parameters as JSON (the `trainer` crate's
    /// `TrainParams`): opaque to the queue protocol.
    pub params_json: String,
    pub promote: PromotePolicy,
    pub trainer: TrainerKind,
    /// The tenant's registry quota as the API knew it at submit (the
    /// worker has no tenants file): the new version is registered within
    /// it or not at all. Absent in jobs from before quotas: unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<RegistryLimits>,
}

/// Bounds of a tenant's registry (see [`super::registry::Quota`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryLimits {
    pub max_versions: Option<u32>,
    pub max_models: Option<u32>,
}

/// Where a retrain job's rows come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainingData {
    /// A dataset stored with `PUT /v1/datasets/{name}` (tenant-qualified
    /// name), read when the job starts.
    Dataset(String),
    /// Rows sent inline in the request, as CSV text with a header.
    InlineCsv(String),
}

/// When a retrained version becomes current.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotePolicy {
    /// If the model has no current version, or the new version scores at
    /// least as well as the current one on the same holdout rows.
    #[default]
    IfNotWorse,
    Always,
    Never,
}

impl PromotePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PromotePolicy::IfNotWorse => "if_not_worse",
            PromotePolicy::Always => "always",
            PromotePolicy::Never => "never",
        }
    }
}

/// Which program trains.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainerKind {
    /// The worker's own trainer (the `trainer` crate).
    #[default]
    Builtin,
    /// The command configured with the worker's `--external-trainer`.
    External,
}

impl TrainerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainerKind::Builtin => "builtin",
            TrainerKind::External => "external",
        }
    }
}

impl JobEnvelope {
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<JobEnvelope, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// The `id` and `job` fields of a work or dead-letter entry, read as far as
/// they go: an entry with a bad payload still names its job.
#[derive(Debug)]
pub struct EntryJob {
    /// The `id` field, if it is a UUID.
    pub job_id: Option<Uuid>,
    /// The raw `job` field (empty when missing), kept to re-enqueue or
    /// dead-letter the exact bytes.
    pub payload: Vec<u8>,
    /// The decoded payload, or why it could not be decoded.
    pub job: Result<JobEnvelope, String>,
}

impl EntryJob {
    pub fn read(fields: &HashMap<String, Value>) -> EntryJob {
        let job_id = match fields.get(FIELD_ID) {
            Some(Value::BulkString(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| Uuid::parse_str(s).ok()),
            _ => None,
        };
        let payload = match fields.get(FIELD_JOB) {
            Some(Value::BulkString(b)) => b.clone(),
            _ => Vec::new(),
        };
        let job = if payload.is_empty() {
            Err("the entry has no job payload".to_owned())
        } else {
            JobEnvelope::decode(&payload).map_err(|e| format!("undecodable payload: {e}"))
        };
        EntryJob {
            job_id,
            payload,
            job,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    fn envelope() -> JobEnvelope {
        JobEnvelope {
            id: Uuid::now_v7(),
            kind: JobKind::Predict,
            model: "two_input".into(),
            inputs: vec![
                Tensor {
                    name: "x".into(),
                    shape: vec![1, 4],
                    data: TensorData::Fp32(vec![0.1, -2.5, f32::MIN_POSITIVE, 3.0e38]),
                },
                Tensor {
                    name: "k".into(),
                    shape: vec![1, 1],
                    data: TensorData::Int64(vec![i64::MIN]),
                },
                Tensor {
                    name: "b".into(),
                    shape: vec![2],
                    data: TensorData::Bool(vec![true, false]),
                },
            ],
            submitted_at_ms: 1_763_792_262_123,
            deadline_ms: Some(1_763_792_263_000),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            model_version: Some(3),
            retrain: None,
        }
    }

    #[test]
    fn retrain_envelope_round_trips() {
        let mut env = envelope();
        env.kind = JobKind::Retrain;
        env.inputs.clear();
        env.retrain = Some(RetrainSpec {
            data: TrainingData::InlineCsv("x,target\n1,0\n2,1\n".into()),
            params_json: r#"{"epochs":5}"#.into(),
            promote: PromotePolicy::Never,
            trainer: TrainerKind::External,
            quota: Some(RegistryLimits {
                max_versions: Some(3),
                max_models: None,
            }),
        });
        let bytes = env.encode().unwrap();
        assert_eq!(JobEnvelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn envelope_round_trips_bit_exact() {
        let env = envelope();
        let bytes = env.encode().unwrap();
        assert_eq!(JobEnvelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn envelope_is_messagepack_not_json() {
        let bytes = envelope().encode().unwrap();
        // A named-field struct starts with a MessagePack fixmap marker.
        assert_eq!(bytes[0] & 0xf0, 0x80);
        assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_err());
    }

    #[test]
    fn envelopes_without_newer_fields_still_decode() {
        #[derive(Serialize)]
        struct Old<'a> {
            id: Uuid,
            kind: JobKind,
            model: &'a str,
            inputs: Vec<Tensor>,
            submitted_at_ms: i64,
        }
        let id = Uuid::now_v7();
        let bytes = rmp_serde::to_vec_named(&Old {
            id,
            kind: JobKind::Predict,
            model: "m",
            inputs: vec![],
            submitted_at_ms: 1,
        })
        .unwrap();
        let env = JobEnvelope::decode(&bytes).unwrap();
        assert_eq!(env.id, id);
        assert_eq!(env.deadline_ms, None);
        assert_eq!(env.traceparent, None);
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(JobEnvelope::decode(b"").is_err());
        assert!(JobEnvelope::decode(b"\xc1\xff\x00").is_err());
        assert!(JobEnvelope::decode(br#"{"id":"x"}"#).is_err());
    }
}
