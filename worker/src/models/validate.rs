//! `validate` jobs: what this module owns is settling an uploaded version
//! `ready` or `invalid` exactly once, from the verdict of a validation child
//! process ([`crate::sandbox`]): static checks, the session built as
//! serving builds it, one trial run, all under memory, CPU and time limits.

use std::sync::Arc;

use shared::queue::registry::{self, Rejection, VersionStatus};
use shared::redis_conn::Pool;

use super::{LoadError, ModelStore, sha256_hex};
use crate::JobFailure;

/// Runs a `validate` job of version `number`: loads its bytes in ONNX
/// Runtime and settles the version `ready` (with its signature) or
/// `invalid`. Returns the version label and the job's result JSON or
/// failure (`invalid_model` for bytes ONNX Runtime refuses). A redelivered
/// job whose version is already settled reports that outcome again without
/// loading anything.
pub async fn validate_job(
    store: &Arc<ModelStore>,
    pool: &Pool,
    job: &shared::queue::wire::JobEnvelope,
    number: u32,
) -> (String, Result<String, crate::JobFailure>) {
    let label = number.to_string();
    let unavailable = |e: &dyn std::fmt::Display| {
        JobFailure::ModelUnavailable(format!("{} (registry unavailable: {e})", job.model))
    };
    let meta = async {
        let mut conn = pool.get();
        registry::version(&mut conn, &store.keys, &job.model, number).await
    }
    .await;
    let v = match meta {
        Ok(Some(v)) => v,
        Ok(None) => {
            return (
                label,
                Err(JobFailure::InvalidPayload(format!(
                    "model {} has no version {number}",
                    job.model
                ))),
            );
        }
        Err(e) => return (label, Err(unavailable(&e))),
    };
    let checked = match v.status {
        VersionStatus::Ready => Ok((v.inputs.clone(), v.outputs.clone())),
        VersionStatus::Invalid | VersionStatus::Quarantined => Err(v
            .error_code
            .as_deref()
            .and_then(|c| JobFailure::model_rejection(c, v.error.clone().unwrap_or_default()))
            .unwrap_or_else(|| JobFailure::InvalidModel(v.error.clone().unwrap_or_default()))),
        VersionStatus::Validating => {
            let bytes = match store.bytes(pool, &v.sha256).await {
                Ok(b) => b,
                Err(LoadError::Queue(e)) => return (label, Err(unavailable(&e))),
                Err(e) => return (label, Err(JobFailure::InvalidModel(e.to_string()))),
            };
            let s = Arc::clone(store);
            let sha = v.sha256.clone();
            let checked = tokio::task::spawn_blocking(move || {
                if sha256_hex(&bytes) != sha {
                    return Err(JobFailure::InvalidModel(
                        "the stored bytes do not match the version's hash".to_owned(),
                    ));
                }
                let res = s.validate_untrusted(&bytes);
                if res.is_ok() {
                    s.cache_put(&sha, &bytes);
                }
                res
            })
            .await
            .unwrap_or_else(|e| {
                Err(JobFailure::ValidatorUnavailable(format!(
                    "validation panicked: {e}"
                )))
            });
            // A validator that could not run says nothing about the model:
            // leave the version validating and let the job be retried.
            if let Err(f @ JobFailure::ValidatorUnavailable(_)) = &checked {
                return (label, Err(f.clone()));
            }
            let mut settled = v.clone();
            settled.job_id = Some(job.id);
            let res = async {
                let mut conn = pool.get();
                let outcome = checked.clone().map_err(|f| Rejection {
                    code: f.code().to_owned(),
                    message: f.detail(),
                });
                registry::settle(&mut conn, &store.keys, &job.model, settled, outcome).await
            }
            .await;
            if let Err(e) = res {
                return (label, Err(unavailable(&e)));
            }
            checked
        }
    };
    match checked {
        Ok((inputs, outputs)) => {
            tracing::info!(model = %job.model, version = number, "model version validated: ready");
            let result = serde_json::json!({
                "model_version": number,
                "status": VersionStatus::Ready.as_str(),
                "sha256": v.sha256,
                "inputs": inputs,
                "outputs": outputs,
            });
            (label, Ok(result.to_string()))
        }
        Err(failure) => {
            tracing::warn!(model = %job.model, version = number, code = failure.code(), error = %failure, "model version is invalid");
            (label, Err(failure))
        }
    }
}
