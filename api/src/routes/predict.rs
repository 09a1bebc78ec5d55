//! `POST /v1/models/{model}/predict`: validate a request against the model's
//! signature and queue it as a job.
//!
//! Submitting is one Redis round trip ([`ops::submit`]) that also enforces
//! the per-model queue bound and the optional `Idempotency-Key`: a client
//! that lost a 202 can send the same request with the same key and gets the
//! same job back instead of a second one.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::SharedString;
use serde::Serialize;
use sha2::{Digest, Sha256};
use shared::job::{JobKind, JobStatus};
use shared::model::{ModelInfo, valid_model_name};
use shared::queue::ops::{self, Idempotency, SubmitOptions, Submitted};
use shared::queue::wire::JobEnvelope;
use shared::telemetry::{self, spans};
use shared::tensor::Tensor;
use shared::trace::{TRACEPARENT, TraceContext};
use tracing::Instrument;
use uuid::Uuid;

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::extract::{self, JsonBody, PathParam};
use crate::metrics::{
    JOBS_DEDUPLICATED, JOBS_SUBMITTED, UNKNOWN_MODEL, count_rejection, redis_failed, redis_op,
};
use crate::routes::clip;
use crate::state::AppState;
use crate::validate::{self, Deadline, PredictRequest};

/// Bodies up to this size are parsed on the async executor; larger ones (up
/// to `--max-body-bytes`) take tens of milliseconds and go to the blocking
/// pool so they cannot stall other requests.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on an answer that returns an earlier job for a repeated key.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Longest accepted `Idempotency-Key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// The 202 body.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted<'a> {
    job_id: Uuid,
    /// `queued`, or for a replayed `Idempotency-Key` the job's current status.
    #[schema(value_type = crate::openapi::JobStatusDoc)]
    status: &'static str,
    /// Where to poll the job: `/v1/jobs/{job_id}`.
    status_url: &'a str,
}

/// Extraction failures (content type, body size) come in as values rather
/// than early rejections, so every refused submission is counted here.
pub async fn predict(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    path: Result<PathParam, ApiError>,
    headers: HeaderMap,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let mut model_label = SharedString::const_str(UNKNOWN_MODEL);
    let res = submit(&state, &tenant, path, &headers, body, &mut model_label).await;
    if let Err(e) = &res {
        count_rejection(model_label, e);
    }
    res
}

async fn submit(
    state: &AppState,
    tenant: &Tenant,
    path: Result<PathParam, ApiError>,
    headers: &HeaderMap,
    body: Result<JsonBody, ApiError>,
    model_label: &mut SharedString,
) -> Result<Response, ApiError> {
    let PathParam(public) = path?;
    if !valid_model_name(&public) {
        return Err(ApiError::ModelNotFound(clip(&public)));
    }
    // From here on the model is named as Redis and the workers know it.
    let model = tenant.model_key(&public);
    let Some(info) = state
        .models()
        .get(&model)
        .await
        .map_err(redis_failed(redis_op::GET_MODEL))?
    else {
        return Err(ApiError::ModelNotFound(public));
    };
    *model_label = SharedString::from(model.clone());
    // The job's span starts here, so an exported trace covers validation too.
    let id = Uuid::now_v7();
    let client = client_trace(headers);
    // Without export the ids are made here, so the span gets its trace id at
    // creation: recording it afterwards re-encodes the span's JSON fields.
    let local = (!telemetry::otlp_enabled()).then(|| TraceContext::child_of(client.as_ref()));
    let span = tracing::info_span!(
        spans::SUBMIT,
        job_id = %id,
        model = %model,
        attempt = 0u32,
        trace_id = local.as_ref().map(|t| tracing::field::display(t.trace_id)),
    );
    let trace = local.unwrap_or_else(|| {
        let t = telemetry::submit_trace(&span, client.as_ref());
        span.record("trace_id", tracing::field::display(t.trace_id));
        t
    });
    let key_hash = idempotency_key(headers)?;
    let JsonBody(body) = body?;
    let pinned = pinned_version(&body)?;
    let info = match pinned {
        None => info,
        Some(v) => pinned_signature(state, &model, &public, v).await?,
    };
    let hash_body = key_hash.is_some();
    let decoded = if body.len() <= INLINE_PARSE_BYTES {
        decode(&body, &info, hash_body)?
    } else {
        tokio::task::spawn_blocking(move || decode(&body, &info, hash_body))
            .await
            .map_err(|e| ApiError::Internal(e.into()))??
    };
    let now = shared::time::now_ms();
    let deadline_ms = decoded
        .deadline
        .as_ref()
        .map(|d| validate::resolve_deadline(d, now))
        .transpose()?;
    let job = JobEnvelope {
        id,
        kind: JobKind::Predict,
        model,
        inputs: decoded.inputs,
        submitted_at_ms: now,
        deadline_ms,
        traceparent: Some(trace.to_string()),
        model_version: pinned,
        retrain: None,
    };
    let policy = state.queue_policy();
    let opts = SubmitOptions {
        max_queue_depth: policy.max_queue_depth,
        idempotency: key_hash.as_deref().zip(decoded.body_hash.as_deref()).map(
            |(key_hash, body_hash)| Idempotency {
                key_hash,
                body_hash,
                ttl_secs: policy.idempotency_ttl_secs,
            },
        ),
    };
    let outcome = async {
        let mut conn = state.conn();
        let outcome = ops::submit(&mut conn, state.keys(), &job, &opts)
            .await
            .map_err(redis_failed(redis_op::SUBMIT))?;
        match outcome {
            // Debug: the worker's "job finished" is the one info line per job.
            Submitted::Created => tracing::debug!("job queued"),
            // The line is about the earlier job, not the one never created.
            Submitted::Duplicate { id, .. } => {
                tracing::Span::current().record("job_id", tracing::field::display(id));
                tracing::info!("idempotent retry, answered with the earlier job");
            }
            Submitted::KeyReused(id) => {
                tracing::Span::current().record("job_id", tracing::field::display(id));
                tracing::info!("idempotency key reused for another body");
            }
            // Debug: under overload this fires per request; the metric counts it.
            Submitted::QueueFull { depth } => tracing::debug!(depth, "queue full, job refused"),
        }
        Ok::<_, ApiError>(outcome)
    }
    .instrument(span)
    .await?;

    match outcome {
        Submitted::Created => {
            metrics::counter!(JOBS_SUBMITTED, "model" => model_label.clone(), "kind" => job.kind.as_str())
                .increment(1);
            Ok(accepted(job.id, JobStatus::Queued, false))
        }
        Submitted::Duplicate { id, status } => {
            metrics::counter!(JOBS_DEDUPLICATED, "model" => model_label.clone()).increment(1);
            Ok(accepted(id, status, true))
        }
        Submitted::KeyReused(_) => Err(ApiError::IdempotencyKeyReused),
        Submitted::QueueFull { .. } => Err(ApiError::QueueFull(public)),
    }
}

/// 202 with `Location`. `status` is the job's status now: for a replayed
/// key the job may have run already.
pub(crate) fn accepted(id: Uuid, status: JobStatus, replayed: bool) -> Response {
    let status_url = format!("/v1/jobs/{id}");
    let body = axum::Json(Accepted {
        job_id: id,
        status: status.as_str(),
        status_url: &status_url,
    })
    .into_response();
    let mut res = (StatusCode::ACCEPTED, [(header::LOCATION, status_url)], body).into_response();
    if replayed {
        res.headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    res
}

/// The hex SHA-256 of the `Idempotency-Key` header, if sent. Any bytes a
/// header may carry are accepted; only the digest is used from here on.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |m: &str| Err(ApiError::InvalidIdempotencyKey(m.to_owned()));
    if values.next().is_some() {
        return invalid("send at most one Idempotency-Key header");
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return invalid("Idempotency-Key must not be empty");
    }
    if bytes.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return invalid("Idempotency-Key must be at most 256 bytes");
    }
    Ok(Some(sha256_hex(bytes)))
}

/// The client's W3C `traceparent`, if it sent exactly one valid header. An
/// invalid or repeated one is ignored (the spec says to start a new trace),
/// never an error.
pub(crate) fn client_trace(headers: &HeaderMap) -> Option<TraceContext> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    TraceContext::parse(value.to_str().ok()?)
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

struct Decoded {
    inputs: Vec<Tensor>,
    deadline: Option<Deadline>,
    /// Of the raw body bytes, computed only when an idempotency key needs it.
    body_hash: Option<String>,
}

/// The `model_version` a request pins, if any. Only bodies that mention the
/// field pay for this second parse.
fn pinned_version(body: &[u8]) -> Result<Option<u32>, ApiError> {
    const FIELD: &[u8] = b"\"model_version\"";
    if !body.windows(FIELD.len()).any(|w| w == FIELD) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct Pin {
        #[serde(default)]
        model_version: Option<u32>,
    }
    Ok(extract::parse::<Pin>(body)?.model_version)
}

/// The signature of a pinned version, which must exist and be `ready`.
async fn pinned_signature(
    state: &AppState,
    model: &str,
    public: &str,
    version: u32,
) -> Result<std::sync::Arc<ModelInfo>, ApiError> {
    let mut conn = state.conn();
    let found = shared::queue::registry::version(&mut conn, state.keys(), model, version)
        .await
        .map_err(redis_failed(shared::metric_names::redis_op::REGISTRY))?;
    match found {
        None => Err(ApiError::VersionNotFound {
            model: public.to_owned(),
            version,
        }),
        Some(v) if v.status != shared::queue::registry::VersionStatus::Ready => {
            Err(ApiError::VersionNotReady {
                version,
                status: v.status.as_str(),
            })
        }
        Some(v) => Ok(std::sync::Arc::new(v.info(model))),
    }
}

fn decode(body: &[u8], info: &ModelInfo, hash_body: bool) -> Result<Decoded, ApiError> {
    let mut req: PredictRequest = extract::parse(body)?;
    let deadline = req.deadline.take();
    let inputs = validate::to_tensors(req, info)?;
    Ok(Decoded {
        inputs,
        deadline,
        body_hash: hash_body.then(|| sha256_hex(body)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(IDEMPOTENCY_KEY, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn only_one_valid_traceparent_is_taken() {
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(TRACEPARENT, HeaderValue::from_str(v).unwrap());
            }
            client_trace(&h)
        };
        let tc = with(&[TP]).unwrap();
        assert_eq!(tc.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(with(&[]), None);
        assert_eq!(with(&[TP, TP]), None);
        assert_eq!(with(&["00-garbage"]), None);
    }

    #[test]
    fn idempotency_keys_are_hashed_and_bounded() {
        assert_eq!(idempotency_key(&headers(&[])).unwrap(), None);
        let a = idempotency_key(&headers(&[b"order-1"])).unwrap().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(Some(a), idempotency_key(&headers(&[b"order-2"])).unwrap());
        // Opaque bytes (obs-text) are fine: they only feed the digest.
        assert!(idempotency_key(&headers(&[b"\xff\x80 key"])).is_ok());
        assert!(idempotency_key(&headers(&[&[b'k'; 256]])).is_ok());
        for bad in [
            headers(&[&[b'k'; 257]]),
            headers(&[b""]),
            headers(&[b"a", b"b"]),
        ] {
            assert_eq!(
                idempotency_key(&bad).unwrap_err().code(),
                "invalid_idempotency_key"
            );
        }
    }
}
