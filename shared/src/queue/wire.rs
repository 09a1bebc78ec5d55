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
///
/// What the job does is its [`JobSpec`]; [`JobEnvelope::kind`] is derived
/// from it (the job record and the stream a job travels on are chosen by
/// kind). Payloads written before the spec existed (with top-level `kind`,
/// `inputs`, `model_version` and `retrain` fields) still decode: dead
/// letters outlive upgrades, and a replay puts their bytes back as they
/// were.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireEnvelope")]
pub struct JobEnvelope {
    pub id: Uuid,
    pub model: String,
    pub submitted_at_ms: i64,
    /// Latest start time (Unix ms); a job not started by then fails with
    /// `deadline_exceeded` instead of running late.
    pub deadline_ms: Option<i64>,
    /// W3C `traceparent` of the API's submit span (see [`crate::trace`]):
    /// the worker's span continues it. Absent in entries written before it
    /// existed.
    pub traceparent: Option<String>,
    pub spec: JobSpec,
}

/// What a job does, with exactly what that kind of job needs.
///
/// Adjacently tagged (`{"kind": "predict", "args": {...}}`) rather than
/// internally tagged: serde reads the tag first and then the arguments
/// straight into their type, where an internally tagged enum would first
/// buffer every tensor element of a prediction in an intermediate form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "args", rename_all = "snake_case")]
pub enum JobSpec {
    Predict {
        inputs: Vec<Tensor>,
        /// The registry version to run on instead of the model's current
        /// one.
        #[serde(default)]
        pinned_version: Option<u32>,
    },
    /// Check an uploaded registry version (a control job).
    Validate {
        version: u32,
    },
    Retrain(RetrainSpec),
}

impl JobSpec {
    pub fn kind(&self) -> JobKind {
        match self {
            JobSpec::Predict { .. } => JobKind::Predict,
            JobSpec::Validate { .. } => JobKind::Validate,
            JobSpec::Retrain(_) => JobKind::Retrain,
        }
    }
}

/// The envelope as it may arrive: the current form (`spec`) or the one
/// before it (`kind` plus the fields every kind shared).
#[derive(Deserialize)]
struct WireEnvelope {
    id: Uuid,
    model: String,
    submitted_at_ms: i64,
    #[serde(default)]
    deadline_ms: Option<i64>,
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default)]
    spec: Option<JobSpec>,
    #[serde(default)]
    kind: Option<JobKind>,
    #[serde(default)]
    inputs: Vec<Tensor>,
    #[serde(default)]
    model_version: Option<u32>,
    #[serde(default)]
    retrain: Option<RetrainSpec>,
}

impl TryFrom<WireEnvelope> for JobEnvelope {
    type Error = String;

    fn try_from(w: WireEnvelope) -> Result<JobEnvelope, String> {
        let spec = match (w.spec, w.kind) {
            (Some(spec), _) => spec,
            (None, Some(JobKind::Predict)) => JobSpec::Predict {
                inputs: w.inputs,
                pinned_version: w.model_version,
            },
            (None, Some(JobKind::Validate)) => JobSpec::Validate {
                version: w
                    .model_version
                    .ok_or("a validate job must name its model_version")?,
            },
            (None, Some(JobKind::Retrain)) => JobSpec::Retrain(
                w.retrain
                    .ok_or("a retrain job must carry its retrain request")?,
            ),
            (None, None) => return Err("the job has neither a spec nor a kind".to_owned()),
        };
        Ok(JobEnvelope {
            id: w.id,
            model: w.model,
            submitted_at_ms: w.submitted_at_ms,
            deadline_ms: w.deadline_ms,
            traceparent: w.traceparent,
            spec,
        })
    }
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
    /// The job's kind, from its spec.
    pub fn kind(&self) -> JobKind {
        self.spec.kind()
    }

    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        // Sized up front: grown from empty, the buffer was reallocated as
        // it filled (callgrind: a third of the encode's instructions).
        let tensors: usize = match &self.spec {
            JobSpec::Predict { inputs, .. } => inputs
                .iter()
                .map(|t| t.name.len() + 8 * (t.shape.len() + t.data.len()) + 16)
                .sum(),
            JobSpec::Validate { .. } | JobSpec::Retrain(_) => 0,
        };
        let mut buf = Vec::with_capacity(256 + self.model.len() + tensors);
        rmp_serde::encode::write_named(&mut buf, self)?;
        Ok(buf)
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

    fn inputs() -> Vec<Tensor> {
        vec![
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
        ]
    }

    fn envelope(spec: JobSpec) -> JobEnvelope {
        JobEnvelope {
            id: Uuid::now_v7(),
            model: "two_input".into(),
            submitted_at_ms: 1_763_792_262_123,
            deadline_ms: Some(1_763_792_263_000),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            spec,
        }
    }

    fn predict() -> JobEnvelope {
        envelope(JobSpec::Predict {
            inputs: inputs(),
            pinned_version: Some(3),
        })
    }

    fn round_trips(env: &JobEnvelope) {
        let bytes = env.encode().unwrap();
        assert_eq!(&JobEnvelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn predict_envelope_round_trips_bit_exact() {
        let env = predict();
        assert_eq!(env.kind(), JobKind::Predict);
        round_trips(&env);
        let mut unpinned = predict();
        unpinned.spec = JobSpec::Predict {
            inputs: inputs(),
            pinned_version: None,
        };
        unpinned.deadline_ms = None;
        unpinned.traceparent = None;
        round_trips(&unpinned);
    }

    #[test]
    fn validate_envelope_round_trips() {
        let env = envelope(JobSpec::Validate { version: 7 });
        assert_eq!(env.kind(), JobKind::Validate);
        round_trips(&env);
    }

    #[test]
    fn retrain_envelope_round_trips() {
        for (data, quota) in [
            (
                TrainingData::InlineCsv("x,target\n1,0\n2,1\n".into()),
                Some(RegistryLimits {
                    max_versions: Some(3),
                    max_models: None,
                }),
            ),
            (TrainingData::Dataset("acme~bc".into()), None),
        ] {
            let env = envelope(JobSpec::Retrain(RetrainSpec {
                data,
                params_json: r#"{"epochs":5}"#.into(),
                promote: PromotePolicy::Never,
                trainer: TrainerKind::External,
                quota,
            }));
            assert_eq!(env.kind(), JobKind::Retrain);
            round_trips(&env);
        }
    }

    #[test]
    fn the_spec_is_tagged_with_the_kind_ahead_of_its_arguments() {
        let bytes = envelope(JobSpec::Validate { version: 7 }).encode().unwrap();
        // Only these fields: the id is MessagePack bin, which JSON has not.
        #[derive(Deserialize)]
        struct Peek {
            spec: serde_json::Value,
            kind: Option<String>,
        }
        let v: Peek = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            v.spec,
            serde_json::json!({"kind": "validate", "args": {"version": 7}})
        );
        assert_eq!(v.kind, None);
    }

    #[test]
    fn envelope_is_messagepack_not_json() {
        let bytes = predict().encode().unwrap();
        // A named-field struct starts with a MessagePack fixmap marker.
        assert_eq!(bytes[0] & 0xf0, 0x80);
        assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_err());
    }

    /// The envelope before [`JobSpec`]: one shape for every kind.
    #[derive(Serialize)]
    struct Legacy<'a> {
        id: Uuid,
        kind: JobKind,
        model: &'a str,
        inputs: Vec<Tensor>,
        submitted_at_ms: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        model_version: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retrain: Option<RetrainSpec>,
    }

    fn legacy(kind: JobKind, model_version: Option<u32>, retrain: Option<RetrainSpec>) -> Vec<u8> {
        rmp_serde::to_vec_named(&Legacy {
            id: Uuid::nil(),
            kind,
            model: "m",
            inputs: if kind == JobKind::Predict {
                inputs()
            } else {
                vec![]
            },
            submitted_at_ms: 1,
            model_version,
            retrain,
        })
        .unwrap()
    }

    #[test]
    fn envelopes_from_before_the_spec_still_decode() {
        let env = JobEnvelope::decode(&legacy(JobKind::Predict, None, None)).unwrap();
        assert_eq!(
            (env.id, env.deadline_ms, env.traceparent),
            (Uuid::nil(), None, None)
        );
        assert_eq!(
            env.spec,
            JobSpec::Predict {
                inputs: inputs(),
                pinned_version: None
            }
        );
        let env = JobEnvelope::decode(&legacy(JobKind::Predict, Some(2), None)).unwrap();
        assert!(matches!(
            env.spec,
            JobSpec::Predict {
                pinned_version: Some(2),
                ..
            }
        ));
        let env = JobEnvelope::decode(&legacy(JobKind::Validate, Some(4), None)).unwrap();
        assert_eq!(env.spec, JobSpec::Validate { version: 4 });
        let spec = RetrainSpec {
            data: TrainingData::Dataset("bc".into()),
            params_json: "{}".into(),
            promote: PromotePolicy::IfNotWorse,
            trainer: TrainerKind::Builtin,
            quota: None,
        };
        let env = JobEnvelope::decode(&legacy(JobKind::Retrain, None, Some(spec.clone()))).unwrap();
        assert_eq!(env.spec, JobSpec::Retrain(spec));
        // The shapes the worker used to refuse at run time do not decode.
        for bad in [
            legacy(JobKind::Validate, None, None),
            legacy(JobKind::Retrain, None, None),
        ] {
            assert!(JobEnvelope::decode(&bad).is_err());
        }
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(JobEnvelope::decode(b"").is_err());
        assert!(JobEnvelope::decode(b"\xc1\xff\x00").is_err());
        assert!(JobEnvelope::decode(br#"{"id":"x"}"#).is_err());
        // A spec of an unknown kind.
        #[derive(Serialize)]
        struct Spec {
            kind: &'static str,
            args: (),
        }
        #[derive(Serialize)]
        struct Env {
            id: Uuid,
            model: &'static str,
            submitted_at_ms: i64,
            spec: Spec,
        }
        let bytes = rmp_serde::to_vec_named(&Env {
            id: Uuid::nil(),
            model: "m",
            submitted_at_ms: 0,
            spec: Spec {
                kind: "explain",
                args: (),
            },
        })
        .unwrap();
        assert!(JobEnvelope::decode(&bytes).is_err());
    }
}
