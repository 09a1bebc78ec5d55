//! The job as clients see it: one JSON shape for `GET /v1/jobs/{id}`, the
//! job search, and the `data` of a webhook call, built from a record for
//! the tenant that owns it (its models named as it knows them).

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;
use shared::job::{JobError, JobRecord};
use shared::time::rfc3339_ms;
use shared::trace::TraceContext;
use uuid::Uuid;

use crate::auth::Tenant;
use crate::error::ApiError;

/// The job as clients see it. `result` is the worker's JSON spliced in
/// verbatim, never decoded and re-encoded.
///
/// Every field is always present (`null` when not applicable).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Job)]
pub(crate) struct JobView<'a> {
    job_id: Uuid,
    #[schema(value_type = shared::job::JobKind)]
    kind: &'static str,
    model: &'a str,
    /// The registry version number the job ran on (as text), once run.
    #[schema(required = true)]
    model_version: Option<&'a str>,
    #[schema(value_type = shared::job::JobStatus)]
    status: &'static str,
    /// Attempts started so far (retries and takeovers included).
    attempts: u32,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(required = true, format = DateTime)]
    started_at: Option<String>,
    #[schema(required = true, format = DateTime)]
    finished_at: Option<String>,
    /// Latest start time the client asked for.
    #[schema(required = true, format = DateTime)]
    deadline: Option<String>,
    /// Set when `succeeded`.
    #[schema(required = true, value_type = Option<crate::schema::AnyJobResult>)]
    result: Option<&'a RawValue>,
    /// Set when `failed`.
    #[schema(required = true, value_type = Option<JobError>)]
    error: Option<Cow<'a, JobError>>,
    /// When a cancel of the running job was asked for; the job ends
    /// `canceled` once its worker sees it (or as it was ending anyway).
    #[schema(required = true, format = DateTime)]
    cancel_requested_at: Option<String>,
    /// The W3C trace id the job's spans and log lines carry: the client's
    /// `traceparent` trace, or one the API started.
    #[schema(required = true)]
    trace_id: Option<String>,
    /// The stored W3C `traceparent`: the trace id and the API's submit span.
    #[schema(required = true)]
    traceparent: Option<&'a str>,
    /// A retrain job's progress, as its worker last wrote it (kept after
    /// the job ends); `null` for other kinds and before training starts.
    #[schema(required = true, value_type = Option<shared::retrain::Progress>)]
    progress: Option<&'a RawValue>,
    /// The job's webhook (`url` and `events`), if it has one.
    #[schema(required = true, value_type = Option<WebhookView>)]
    webhook: Option<&'a RawValue>,
    /// What became of each event's webhook calls: event (`start`,
    /// `progress`, `completed`) → its latest call's delivery.
    #[schema(required = true, value_type = Option<std::collections::HashMap<String, shared::queue::webhooks::DeliveryState>>)]
    webhook_deliveries: Option<&'a RawValue>,
}

/// A job's webhook as its view shows it.
#[derive(utoipa::ToSchema)]
#[expect(
    dead_code,
    reason = "a document only: the view splices the stored JSON"
)]
pub(crate) struct WebhookView {
    url: String,
    events: Vec<shared::queue::webhooks::Event>,
}

/// The job as `tenant` sees it.
pub(crate) fn view<'a>(tenant: &Tenant, rec: &'a JobRecord) -> Result<JobView<'a>, ApiError> {
    let result = match rec.result_json.as_deref() {
        // Validated (a scan, no allocation) so a corrupt record cannot make
        // the whole response invalid JSON.
        Some(json) => Some(serde_json::from_str::<&RawValue>(json).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!("job {} has a corrupt result: {e}", rec.id))
        })?),
        None => None,
    };
    Ok(JobView {
        job_id: rec.id,
        kind: rec.kind.as_str(),
        model: tenant.public_name(&rec.model).unwrap_or(&rec.model),
        model_version: rec.model_version.as_deref(),
        status: rec.status.as_str(),
        attempts: rec.attempts,
        created_at: rfc3339_ms(rec.created_at_ms),
        started_at: rec.started_at_ms.map(rfc3339_ms),
        finished_at: rec.finished_at_ms.map(rfc3339_ms),
        deadline: rec.deadline_ms.map(rfc3339_ms),
        result,
        error: rec.error.as_ref().map(|e| public_error(tenant, e)),
        cancel_requested_at: rec.cancel_requested_at_ms.map(rfc3339_ms),
        trace_id: rec
            .traceparent
            .as_deref()
            .and_then(TraceContext::parse)
            .map(|t| t.trace_id.to_string()),
        traceparent: rec.traceparent.as_deref(),
        progress: raw(rec.progress_json.as_deref()),
        webhook: raw(rec.webhook_json.as_deref()),
        webhook_deliveries: raw(rec.webhook_deliveries_json.as_deref()),
    })
}

/// Stored JSON spliced in; informational, so a corrupt one is left out.
fn raw(json: Option<&str>) -> Option<&RawValue> {
    json.and_then(|j| serde_json::from_str::<&RawValue>(j).ok())
}

/// A worker's error as the tenant may read it: its models named as it knows
/// them (workers name models internally, `{tenant}~{model}`).
fn public_error<'a>(tenant: &Tenant, e: &'a JobError) -> Cow<'a, JobError> {
    let prefix = format!("{}{}", tenant.name(), shared::model::TENANT_SEPARATOR);
    if e.message.contains(&prefix) {
        Cow::Owned(JobError {
            code: e.code.clone(),
            message: e.message.replace(&prefix, ""),
        })
    } else {
        Cow::Borrowed(e)
    }
}
