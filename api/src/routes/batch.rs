//! `POST /v1/models/{model}/predict/batch`: many predictions of one model in
//! one request (bulk submit), each validated as a single predict is and
//! queued through the same submit path ([`crate::submit::enqueue_many`]:
//! the submit script once per job, pipelined, one Redis round trip per
//! partition).
//!
//! An item that fails validation is reported by its index and the others
//! are queued, unless the request says `"atomic": true`: then the first bad
//! item fails the whole request, answered as that item's single predict
//! would have been (its status and code, the message naming the item), and
//! nothing is queued. The queue bound and the tenant's quota are applied per
//! job, in order, exactly as for single submits: a bound reached mid-batch
//! refuses that job and the ones after it that do not fit, each reported by
//! index (`queue_full`, `tenant_queue_full`), while the jobs before it stay
//! queued. An atomic batch is written into one partition and checked
//! against the bounds as a whole (the partition's share of them): it fits
//! and is queued whole, or is refused whole (429) with nothing queued. An `Idempotency-Key` is refused (400): a retry of a batch that
//! was partly written cannot be told apart from a new one per item, so the
//! client retries the refused items it was told about, or lists its jobs.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics::SharedString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use shared::model::ModelInfo;
use uuid::Uuid;

use super::predict::{off_executor_if_large, pinned_signature, published};
use crate::auth::Tenant;
use crate::config::RequestLimits;
use crate::error::{ApiError, Detail};
use crate::extract::{self, JsonBody, PathParam};
use crate::metrics::{UNKNOWN_MODEL, count_rejection};
use crate::models_cache::ModelCache;
use crate::paths;
use crate::queue::Queue;
use crate::state::AppState;
use crate::submit::{self, Submission, Work};
use crate::tenants::Policies;
use crate::validate::{self, PredictRequest};
use crate::webhooks::WebhookFields;

/// The bulk body: the items, each a predict body, and whether one bad item
/// fails them all.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PredictBatchRequest)]
pub(crate) struct BatchRequest {
    /// 1 to `--max-bulk` predict bodies (each exactly what
    /// `POST /v1/models/{model}/predict` takes), queued in this order.
    #[schema(value_type = Vec<crate::validate::PredictBody>, min_items = 1)]
    items: Vec<Box<RawValue>>,
    /// `true`: one item that fails validation fails the whole request and
    /// nothing is queued. `false` (the default): bad items are reported by
    /// index and the rest are queued.
    #[serde(default)]
    atomic: Option<bool>,
    /// The webhook of every job of the batch (items may not name their
    /// own); as `webhook` of a single predict.
    #[serde(default)]
    #[schema(max_length = 2048)]
    webhook: Option<String>,
    /// As `webhook_events_filter` of a single predict.
    #[serde(default)]
    #[schema(min_items = 1)]
    webhook_events_filter: Option<Vec<shared::queue::webhooks::Event>>,
}

/// The 202 body of a bulk submit.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = BatchAccepted)]
pub(crate) struct BatchAnswer {
    /// Items queued.
    accepted: usize,
    /// Items refused (each with its `error`).
    refused: usize,
    /// One per item, in the request's order.
    items: Vec<BatchItem>,
}

/// One item's outcome: its job, or why it was refused.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = BatchItem)]
pub(crate) struct BatchItem {
    /// The item's position in `items`, from 0.
    index: usize,
    /// The queued job (absent when refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<Uuid>,
    /// `queued` (absent when refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<shared::job::JobStatus>)]
    status: Option<&'static str>,
    /// Where to poll the job, `/v1/jobs/{job_id}` (absent when refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    status_url: Option<String>,
    /// Why the item was refused: the code and message a single predict of
    /// it would have got (absent when queued).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Detail<'static>>,
}

#[utoipa::path(
    post,
    path = paths::PREDICT_BATCH,
    tag = "jobs",
    summary = "Submit many jobs of one model (bulk)",
    description = "Up to `--max-bulk` predict bodies in `items`, validated one by one as `POST /v1/models/{model}/predict` validates one, and queued in order through the same submit script, pipelined: one Redis round trip per partition. The answer lists every item by index: its job, or the error code a single predict would have got (`invalid_input`, `queue_full`, ...). The queue bound and the tenant's quota apply per job in order: when one is reached mid-batch, the jobs before stay queued and the ones that do not fit are refused. With `\"atomic\": true` the first item that fails validation fails the request (its status and code, the message naming `items[i]`) and nothing is queued; an atomic batch is written into one partition and checked against the queue bound and the quota as a whole (the partition's share of them, with `--partitions`): it is queued whole or refused whole (429 `queue_full`, `tenant_queue_full`). The body is bounded by `--max-body-bytes`. `Idempotency-Key` is refused (400 `invalid_idempotency_key`): retry the refused items, or list your jobs (`GET /v1/jobs`).",
    params(
        ("model" = String, Path, description = "A model some worker serves (see `GET /v1/models`)", example = "breast_cancer"),
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context: every job of the batch becomes a child of it"),
    ),
    request_body(content = BatchRequest, content_type = "application/json",
        examples(
            ("features" = (summary = "Two rows of a model's single FP32 input", value = json!({"items": [
                {"features": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]},
                {"features": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], "deadline": 60}
            ]}))),
            ("atomic" = (summary = "All or nothing", value = json!({"atomic": true, "items": [
                {"features": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}
            ]}))),
        )),
    responses(
        (status = 202, description = "Every item accepted or refused on its own (see `accepted` and `refused`)", body = BatchAnswer),
        (status = 400, description = "`malformed_json`, `non_finite_input` (atomic), `invalid_idempotency_key` (any `Idempotency-Key`) or `ambiguous_credentials`", body = crate::error::Body<'static>),
        (status = 404, description = "`model_not_found`; `version_not_found` (atomic, an item's `model_version`)", body = crate::error::Body<'static>),
        (status = 409, description = "`version_not_ready` (atomic, an item's `model_version`)", body = crate::error::Body<'static>),
        (status = 413, description = "`too_many_items`: no items, or more than `--max-bulk`; `payload_too_large`: the body is over `--max-body-bytes`", body = crate::error::Body<'static>),
        (status = 415, description = "`unsupported_media_type`: the content type is not JSON", body = crate::error::Body<'static>),
        (status = 422, description = "`invalid_input`: the body is not `{\"items\": [...]}`, or (atomic) an item is invalid", body = crate::error::Body<'static>),
        (status = 429, description = "(atomic) `queue_full` or `tenant_queue_full`: the batch does not fit whole; `rate_limited` or `tenant_concurrency_limit`: see the admission rules (a bulk request takes one token)", body = crate::error::Body<'static>,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(crate) async fn predict_batch(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    path: Result<PathParam, ApiError>,
    headers: HeaderMap,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let queue = Queue::from_ref(&state);
    let models = Arc::<ModelCache>::from_ref(&state);
    let policies = Arc::<Policies>::from_ref(&state);
    let limits = RequestLimits::from_ref(&state);
    let mut model_label = SharedString::const_str(UNKNOWN_MODEL);
    let res = async {
        let PathParam(public) = path?;
        let (model, info) = published(&models, &tenant, &public).await?;
        model_label = SharedString::from(model.clone());
        if headers.contains_key(submit::IDEMPOTENCY_KEY) {
            return Err(ApiError::InvalidIdempotencyKey(
                "a bulk submit takes no Idempotency-Key: retry the items it refused, \
                 or send single predicts with keys"
                    .into(),
            ));
        }
        let JsonBody(body) = body?;
        let max = limits.max_bulk;
        let batch = off_executor_if_large(&body, move |b| {
            let batch = extract::parse::<BatchRequest>(b)?;
            if batch.items.is_empty() || batch.items.len() > max {
                return Err(ApiError::TooManyItems {
                    got: batch.items.len(),
                    max,
                });
            }
            let parsed: Vec<_> = batch
                .items
                .iter()
                .map(|item| {
                    extract::parse::<PredictRequest>(item.get().as_bytes()).and_then(|r| {
                        if r.webhook.is_some() || r.webhook_events_filter.is_some() {
                            return Err(ApiError::InvalidWebhook(
                                "set the webhook once, on the bulk request, not on its items"
                                    .into(),
                            ));
                        }
                        Ok(r)
                    })
                })
                .collect();
            let webhook = WebhookFields {
                webhook: batch.webhook,
                webhook_events_filter: batch.webhook_events_filter,
            };
            Ok((parsed, batch.atomic.unwrap_or(false), webhook))
        })
        .await;
        let (parsed, atomic, webhook) = batch?;
        let webhook = webhook.subscription(queue.policy().webhook_allow_private)?;
        let signatures = pins(&queue, &model, &public, &parsed).await?;
        let checked =
            off_executor_if_large(&body, move |_| Ok(to_work(parsed, &info, &signatures))).await?;
        let parts = Parts {
            queue: &queue,
            policies: &policies,
            tenant: &tenant,
            public: &public,
            headers: &headers,
            webhook: webhook.as_ref(),
        };
        queue_items(parts, checked, atomic, &model_label).await
    }
    .await;
    if let Err(e) = &res {
        count_rejection(model_label, e);
    }
    res
}

/// What queueing a batch needs.
struct Parts<'a> {
    queue: &'a Queue,
    policies: &'a Policies,
    tenant: &'a Tenant,
    public: &'a str,
    headers: &'a HeaderMap,
    webhook: Option<&'a shared::queue::webhooks::Subscription>,
}

/// Queues the valid items (all of them or none, when `atomic`) and
/// answers with every item's outcome.
async fn queue_items(
    parts: Parts<'_>,
    checked: Vec<Result<Work, ApiError>>,
    atomic: bool,
    model_label: &SharedString,
) -> Result<Response, ApiError> {
    if atomic && let Some(index) = checked.iter().position(Result::is_err) {
        let error = checked.into_iter().nth(index).and_then(Result::err);
        return Err(ApiError::InBatch {
            index,
            error: Box::new(error.unwrap_or(ApiError::InvalidInput("invalid item".into()))),
        });
    }
    let n = checked.len();
    let mut outcomes: Vec<Option<Result<submit::Accepted, ApiError>>> =
        (0..n).map(|_| None).collect();
    let mut valid = Vec::with_capacity(n);
    let mut positions = Vec::with_capacity(n);
    // An atomic batch is written in one partition, so one pipeline can
    // decide it whole (see `ops::submit_many`).
    let partition = atomic.then(|| parts.queue.keys().pick_partition(None));
    for (i, work) in checked.into_iter().enumerate() {
        match work {
            Ok(work) => {
                let sub = Submission::begin_item(
                    parts.queue.keys(),
                    parts.tenant,
                    parts.public,
                    parts.headers,
                    partition,
                );
                valid.push((sub, work));
                positions.push(i);
            }
            Err(e) => outcomes[i] = Some(Err(e)),
        }
    }
    if !valid.is_empty() {
        let done = submit::enqueue_many(
            parts.queue,
            parts.policies,
            parts.tenant,
            valid,
            atomic,
            parts.webhook,
        )
        .await?;
        for (i, outcome) in positions.into_iter().zip(done) {
            // Atomic: refused whole (the first job's refusal), nothing queued.
            if atomic && let Err(e) = outcome {
                return Err(e);
            }
            outcomes[i] = Some(outcome);
        }
    }
    let mut answer = BatchAnswer {
        accepted: 0,
        refused: 0,
        items: Vec::with_capacity(n),
    };
    for (index, outcome) in outcomes.into_iter().enumerate() {
        answer.items.push(match outcome {
            Some(Ok(job)) => {
                answer.accepted += 1;
                BatchItem {
                    index,
                    job_id: Some(job.id),
                    status: Some(job.status.as_str()),
                    status_url: Some(job.status_url()),
                    error: None,
                }
            }
            Some(Err(e)) => {
                answer.refused += 1;
                count_rejection(model_label.clone(), &e);
                BatchItem {
                    index,
                    job_id: None,
                    status: None,
                    status_url: None,
                    error: Some(e.detail()),
                }
            }
            None => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "bulk item {index} has no outcome"
                )));
            }
        });
    }
    Ok((StatusCode::ACCEPTED, axum::Json(answer)).into_response())
}

/// A pinned version's signature, or why it cannot serve.
type Pinned = Result<Arc<ModelInfo>, PinRefusal>;

/// Why a pinned version cannot serve; an [`ApiError`] for each item that
/// names it.
#[derive(Clone)]
enum PinRefusal {
    NotFound { model: String, version: u32 },
    NotReady { version: u32, status: &'static str },
}

impl PinRefusal {
    fn error(&self) -> ApiError {
        match self.clone() {
            PinRefusal::NotFound { model, version } => ApiError::VersionNotFound { model, version },
            PinRefusal::NotReady { version, status } => {
                ApiError::VersionNotReady { version, status }
            }
        }
    }
}

/// The signatures of the versions the items pin, each read once. A Redis
/// failure fails the request.
async fn pins(
    queue: &Queue,
    model: &str,
    public: &str,
    parsed: &[Result<PredictRequest, ApiError>],
) -> Result<HashMap<u32, Pinned>, ApiError> {
    let mut out = HashMap::new();
    for version in parsed.iter().filter_map(|r| r.as_ref().ok()?.model_version) {
        if out.contains_key(&version) {
            continue;
        }
        let pinned = match pinned_signature(queue, model, public, version).await {
            Ok(info) => Ok(info),
            Err(ApiError::VersionNotFound { model, version }) => {
                Err(PinRefusal::NotFound { model, version })
            }
            Err(ApiError::VersionNotReady { version, status }) => {
                Err(PinRefusal::NotReady { version, status })
            }
            Err(e) => return Err(e),
        };
        out.insert(version, pinned);
    }
    Ok(out)
}

/// Each parsed item checked against its signature, as a job's work.
fn to_work(
    parsed: Vec<Result<PredictRequest, ApiError>>,
    current: &Arc<ModelInfo>,
    pinned: &HashMap<u32, Pinned>,
) -> Vec<Result<Work, ApiError>> {
    let now = shared::time::now_ms();
    parsed
        .into_iter()
        .map(|req| {
            let req = req?;
            let pin = req.model_version;
            let info = match pin.map(|v| pinned.get(&v)) {
                None => Arc::clone(current),
                Some(Some(Ok(info))) => Arc::clone(info),
                Some(Some(Err(refusal))) => return Err(refusal.error()),
                Some(None) => {
                    return Err(ApiError::Internal(anyhow::anyhow!(
                        "pinned version {pin:?} was not looked up"
                    )));
                }
            };
            let deadline = req.deadline.clone();
            let inputs = validate::to_tensors(req, &info)?;
            let deadline_ms = deadline
                .as_ref()
                .map(|d| validate::resolve_deadline(d, now))
                .transpose()?;
            Ok(Work::Predict {
                inputs,
                pinned: pin,
                deadline_ms,
            })
        })
        .collect()
}
