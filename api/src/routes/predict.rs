//! `POST /v1/models/{model}/predict`: validate a request against the model's
//! signature and queue it as a job.
//!
//! Submitting is one Redis round trip ([`ops::submit`]) that also enforces
//! the per-model queue bound and the optional `Idempotency-Key`: a client
//! that lost a 202 can send the same request with the same key and gets the
//! same job back instead of a second one.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use metrics::SharedString;
use shared::digest::sha256_hex;
use shared::model::ModelInfo;
use shared::queue::registry::{self, VersionStatus};

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::extract::{self, JsonBody, PathParam};
use crate::metrics::{UNKNOWN_MODEL, count_rejection, redis_failed};
use crate::models_cache::ModelCache;
use crate::paths;
use crate::queue::Queue;
use crate::submit::{Accepted, Submission, Work};
use crate::tenants::Policies;
use crate::text::clip;
use crate::validate::{self, PredictRequest};
use crate::webhooks::WebhookFields;

/// Bodies up to this size are parsed on the async executor; larger ones (up
/// to `--max-body-bytes`) take tens of milliseconds and go to the blocking
/// pool so they cannot stall other requests.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

/// Extraction failures (content type, body size) come in as values rather
/// than early rejections, so every refused submission is counted here.
#[utoipa::path(
    post,
    path = paths::PREDICT,
    tag = "jobs",
    summary = "Submit a job",
    description = "Validates the request against the model's published signature and queues it. One Redis round trip; the 202 is given only once the job's record and stream entry are written.",
    params(
        ("model" = String, Path, description = "A model some worker serves (see `GET /v1/models`)", example = "breast_cancer"),
        crate::submit::SubmitHeaders,
    ),
    request_body(content = crate::validate::PredictBody, content_type = "application/json",
        examples(
            ("features" = (summary = "One row of a model's single FP32 input", value = json!({"features": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}))),
            ("inputs" = (summary = "Open Inference Protocol inputs, with a deadline", value = json!({
                "inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP32", "data": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}],
                "deadline": 30
            }))),
        )),
    responses(
        (status = 202, description = "Queued (or, for a repeated `Idempotency-Key`, the earlier job in its current status)", body = crate::submit::AcceptedBody<'static>,
            headers(
                ("Location" = String, description = "The job's status URL, `/v1/jobs/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is an earlier job of the same `Idempotency-Key`"),
            )),
        (status = 400, description = "`malformed_json`, `non_finite_input`, `invalid_idempotency_key` or `ambiguous_credentials`", body = crate::error::Body<'static>),
        (status = 404, description = "`model_not_found`: no worker serves that model", body = crate::error::Body<'static>),
        (status = 413, description = "`payload_too_large`: the body is over `--max-body-bytes`", body = crate::error::Body<'static>),
        (status = 415, description = "`unsupported_media_type`: the content type is not JSON", body = crate::error::Body<'static>),
        (status = 422, description = "`invalid_input` (the message names what was expected), `idempotency_key_reused`, `invalid_webhook` or `webhook_not_allowed`", body = crate::error::Body<'static>),
        (status = 429, description = "`queue_full`: the model's queue holds `--max-queue-depth` unfinished jobs; `tenant_queue_full`: the tenant's unfinished jobs (or their payload bytes) are at its quota; `rate_limited` or `tenant_concurrency_limit` (see the admission rules above)", body = crate::error::Body<'static>,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(crate) async fn predict(
    State(queue): State<Queue>,
    State(models): State<Arc<ModelCache>>,
    State(policies): State<Arc<Policies>>,
    Extension(tenant): Extension<Tenant>,
    path: Result<PathParam, ApiError>,
    headers: HeaderMap,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let parts = Parts {
        queue: &queue,
        models: &models,
        policies: &policies,
    };
    match path {
        Ok(PathParam(public)) => {
            let body = body.map(|JsonBody(b)| b);
            submit_one(parts, &tenant, &public, &headers, body)
                .await
                .map(Accepted::into_response)
        }
        Err(e) => {
            count_rejection(SharedString::const_str(UNKNOWN_MODEL), &e);
            Err(e)
        }
    }
}

/// The parts of the state a predict uses.
#[derive(Clone, Copy)]
pub(crate) struct Parts<'a> {
    pub(crate) queue: &'a Queue,
    pub(crate) models: &'a ModelCache,
    pub(crate) policies: &'a Policies,
}

/// One predict of `public` with `body` (its JSON bytes), validated and
/// queued, its refusal counted: the HTTP route's work, which the WebSocket
/// session ([`super::ws`]) does per message.
pub(crate) async fn submit_one(
    parts: Parts<'_>,
    tenant: &Tenant,
    public: &str,
    headers: &HeaderMap,
    body: Result<Bytes, ApiError>,
) -> Result<Accepted, ApiError> {
    let mut model_label = SharedString::const_str(UNKNOWN_MODEL);
    let res = submit(parts, tenant, public, headers, body, &mut model_label).await;
    if let Err(e) = &res {
        count_rejection(model_label, e);
    }
    res
}

async fn submit(
    Parts {
        queue,
        models,
        policies,
    }: Parts<'_>,
    tenant: &Tenant,
    public: &str,
    headers: &HeaderMap,
    body: Result<Bytes, ApiError>,
    model_label: &mut SharedString,
) -> Result<Accepted, ApiError> {
    let (model, info) = published(models, tenant, public).await?;
    *model_label = SharedString::from(model.clone());
    // The job's span starts here, so an exported trace covers validation too.
    let mut submission = Submission::begin(queue.keys(), tenant, public, headers)?;
    let body = body?;
    let hash_body = submission.wants_body_hash();
    // One typed parse: the pin is the field serde decoded, escapes and all.
    let (mut req, body_hash) = off_executor_if_large(&body, move |b| {
        Ok((
            extract::parse::<PredictRequest>(b)?,
            hash_body.then(|| sha256_hex(b)),
        ))
    })
    .await?;
    submission.set_webhook(
        WebhookFields {
            webhook: req.webhook.take(),
            webhook_events_filter: req.webhook_events_filter.take(),
        }
        .subscription(queue.policy().webhook_allow_private)?,
    );
    let pinned = req.model_version;
    let info = match pinned {
        None => info,
        Some(v) => pinned_signature(queue, &model, public, v).await?,
    };
    let deadline = req.deadline.clone();
    let inputs = off_executor_if_large(&body, move |_| validate::to_tensors(req, &info)).await?;
    let deadline_ms = deadline
        .as_ref()
        .map(|d| validate::resolve_deadline(d, shared::time::now_ms()))
        .transpose()?;
    let work = Work::Predict {
        inputs,
        pinned,
        deadline_ms,
    };
    submission
        .enqueue(queue, policies, tenant, work, body_hash)
        .await
}

/// The model a tenant names, as Redis and the workers know it, and its
/// published signature; 404 `model_not_found` if no worker serves it.
pub(crate) async fn published(
    models: &ModelCache,
    tenant: &Tenant,
    public: &str,
) -> Result<(String, Arc<ModelInfo>), ApiError> {
    let model = tenant
        .qualify(public)
        .ok_or_else(|| ApiError::ModelNotFound(clip(public)))?;
    match models
        .get(&model)
        .await
        .map_err(redis_failed(shared::metric_names::redis_op::GET_MODEL))?
    {
        Some(info) => Ok((model, info)),
        None => Err(ApiError::ModelNotFound(public.to_owned())),
    }
}

/// Runs `f` on the body here when it is small, else on the blocking pool.
pub(crate) async fn off_executor_if_large<T: Send + 'static>(
    body: &Bytes,
    f: impl FnOnce(&[u8]) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if body.len() <= INLINE_PARSE_BYTES {
        return f(body);
    }
    let body = body.clone();
    tokio::task::spawn_blocking(move || f(&body))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
}

/// The signature of a pinned version, which must exist and be `ready`.
pub(crate) async fn pinned_signature(
    queue: &Queue,
    model: &str,
    public: &str,
    version: u32,
) -> Result<Arc<ModelInfo>, ApiError> {
    let mut conn = queue.conn();
    let found = registry::version(&mut conn, queue.keys(), model, version)
        .await
        .map_err(redis_failed(shared::metric_names::redis_op::REGISTRY))?;
    match found {
        None => Err(ApiError::VersionNotFound {
            model: public.to_owned(),
            version,
        }),
        Some(v) if v.status != VersionStatus::Ready => Err(ApiError::VersionNotReady {
            version,
            status: v.status.as_str(),
        }),
        Some(v) => Ok(Arc::new(v.info(model))),
    }
}
