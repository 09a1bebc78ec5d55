//! The API's side of the protocol: submitting jobs, reading job records and
//! model signatures. One function per step, each a single Redis round trip.
//! Functions take any async connection (`&mut impl ConnectionLike`), so
//! callers choose between a pooled and a dedicated one.

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use uuid::Uuid;

use super::QueueError;
use super::keys::Keys;
use super::wire::{FIELD_ID, FIELD_JOB, JobEnvelope};
use crate::job::{JobRecord, JobStatus};
use crate::model::ModelInfo;

// ---------------------------------------------------------------- API side

/// Writes the job record and its stream entry atomically (MULTI/EXEC): the
/// job exists in both places or in neither.
pub async fn submit(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    job: &JobEnvelope,
) -> Result<(), QueueError> {
    let payload = job.encode()?;
    let id = job.id.to_string();
    redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(keys.job(&job.id))
        .arg("kind")
        .arg(job.kind.as_str())
        .arg("model")
        .arg(&job.model)
        .arg("status")
        .arg(JobStatus::Queued.as_str())
        .arg("attempts")
        .arg(0)
        .arg("created_at")
        .arg(job.submitted_at_ms)
        .ignore()
        .cmd("XADD")
        .arg(keys.stream(&job.model))
        .arg("*")
        .arg(FIELD_ID)
        .arg(&id)
        .arg(FIELD_JOB)
        .arg(payload)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Reads a job's record; `None` for an unknown or expired id.
pub async fn get_job(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    id: &Uuid,
) -> Result<Option<JobRecord>, QueueError> {
    let fields: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.job(id))
        .query_async(conn)
        .await?;
    JobRecord::from_fields(*id, fields).map_err(QueueError::Corrupt)
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
