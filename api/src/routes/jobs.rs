//! `GET /v1/jobs/{id}[?wait=SECONDS]`: a job's state, optionally long-polled
//! until it is terminal. Waiting costs no Redis traffic: the request sleeps
//! on its [`crate::waiters`] registration and re-reads only when woken.
//!
//! `POST /v1/jobs/{id}/cancel` (as Replicate spells it; `DELETE
//! /v1/jobs/{id}` is its deprecated old name, kept for one release): cancels
//! a job, which stays readable. One atomic step in Redis decides,
//! so a cancel and a worker's start cannot both win: a queued job is
//! canceled and never runs (200); a running one is marked, and its worker
//! stops it at its next check, between epochs of a training or by
//! terminating the inference run, ending it `canceled` (202, poll the job);
//! a finished one gets 409.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shared::job::JobRecord;
use shared::queue::ops::{self, Canceled};
use shared::trace::TraceContext;
use tokio::time::Instant;
use uuid::Uuid;

use crate::auth::Tenant;
use crate::config::RequestLimits;
use crate::error::ApiError;
use crate::extract::PathParam;
use crate::metrics::{JOBS_CANCELED, redis_failed, redis_op};
use crate::paths;
use crate::queue::Queue;
use crate::text::clip;
use crate::view::{JobView, view};
use crate::waiters::Waiters;

#[derive(Deserialize)]
pub(crate) struct JobQuery {
    wait: Option<f64>,
}

#[utoipa::path(
    get,
    path = paths::JOB,
    tag = "jobs",
    summary = "Read a job, optionally long-polling until it is terminal",
    params(
        ("id" = uuid::Uuid, Path, description = "The job id from the 202", example = "019ab0c4-5d1e-7c53-9a43-8f0e6f1c2d3b"),
        ("wait" = Option<f64>, Query, minimum = 0, description = "Seconds to wait for the job to become terminal (capped at `--max-wait-secs`); answers as soon as it is"),
    ),
    responses(
        (status = 200, description = "The job", body = JobView<'static>),
        (status = 400, description = "`invalid_job_id` or `invalid_query`", body = crate::error::Body<'static>),
        (status = 404, description = "`job_not_found`: unknown or expired", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn get_job(
    State(queue): State<Queue>,
    State(waiters): State<Arc<Waiters>>,
    State(limits): State<RequestLimits>,
    Extension(tenant): Extension<Tenant>,
    PathParam(raw_id): PathParam,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = job_id(&raw_id)?;
    let wait = wait_duration(query, limits.max_wait)?;
    let job = if wait.is_zero() {
        read(&queue, &tenant, &id).await?
    } else {
        wait_terminal(&queue, &waiters, &tenant, id, wait).await?
    };
    render(&tenant, &job)
}

#[utoipa::path(
    post,
    path = paths::CANCEL,
    tag = "jobs",
    summary = "Cancel a job",
    description = "A queued job is canceled at once (200) and never runs. A running one is marked (202): its worker sees the mark when it renews the job's lease (every third of `--lease-ms`) and stops it, a training between two epochs, an inference by terminating the run, and the job ends `canceled`; poll it. A job that finishes before its worker looks ends as it ended.",
    params(("id" = uuid::Uuid, Path, description = "The job id from the 202", example = "019ab0c4-5d1e-7c53-9a43-8f0e6f1c2d3b")),
    responses(
        (status = 200, description = "Canceled: the job, with `status` `canceled`", body = JobView<'static>),
        (status = 202, description = "Running: the cancel is recorded (`cancel_requested_at`); the job, still `running`", body = JobView<'static>),
        (status = 400, description = "`invalid_job_id`", body = crate::error::Body<'static>),
        (status = 404, description = "`job_not_found`: unknown or expired", body = crate::error::Body<'static>),
        (status = 409, description = "`job_not_cancelable`: already terminal", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn cancel(
    State(queue): State<Queue>,
    State(waiters): State<Arc<Waiters>>,
    Extension(tenant): Extension<Tenant>,
    PathParam(raw_id): PathParam,
) -> Result<Response, ApiError> {
    let id = job_id(&raw_id)?;
    // Ownership first: another tenant's job must look like no job at all,
    // and must not be canceled. A job's model never changes, so the check
    // cannot go stale before the cancel.
    let owned = read(&queue, &tenant, &id).await?;
    let policy = queue.policy();
    let mut conn = queue.conn();
    let outcome = ops::cancel(
        &mut conn,
        queue.keys(),
        &id,
        owned.kind,
        &owned.model,
        policy.canceled_ttl_secs,
        shared::time::now_ms(),
    )
    .await
    .map_err(redis_failed(redis_op::CANCEL))?;
    match outcome {
        Canceled::Canceled(job) => {
            let trace_id = job
                .traceparent
                .as_deref()
                .and_then(TraceContext::parse)
                .map(|t| tracing::field::display(t.trace_id));
            tracing::info!(job_id = %id, model = %job.model, attempt = job.attempts, trace_id, "job canceled");
            // The published id wakes long-polls in every API process; waking
            // ours directly as well keeps them independent of the
            // subscription being up at this moment.
            waiters.wake(&id);
            // A model name in a stored job came through validation against a
            // published signature, so it is a bounded label.
            metrics::counter!(JOBS_CANCELED, "model" => job.model.clone()).increment(1);
            render(&tenant, &job)
        }
        Canceled::Requested(job) => {
            tracing::info!(job_id = %id, model = %job.model, attempt = job.attempts, "cancel of a running job requested");
            let mut res = render(&tenant, &job)?;
            *res.status_mut() = axum::http::StatusCode::ACCEPTED;
            Ok(res)
        }
        Canceled::NotFound => Err(ApiError::JobNotFound(id)),
        Canceled::NotCancelable(status) => Err(ApiError::JobNotCancelable {
            id,
            status: status.as_str(),
        }),
    }
}

/// When `DELETE /v1/jobs/{id}` was deprecated (RFC 9745 `Deprecation`:
/// 2026-12-02T00:00:00Z).
const DELETE_DEPRECATED: &str = "@1796169600";

/// `DELETE /v1/jobs/{id}`, the old spelling of cancel: kept for one release,
/// answered exactly as the cancel is, plus the `Deprecation` and successor
/// `Link` headers (RFC 9745, RFC 8594), errors included.
#[deprecated = "use POST /v1/jobs/{id}/cancel"]
#[utoipa::path(
    delete,
    path = paths::JOB,
    tag = "jobs",
    summary = "Cancel a job (deprecated: use POST /v1/jobs/{id}/cancel)",
    description = "The same as `POST /v1/jobs/{id}/cancel`, kept for one release. The job stays readable: a cancel never deletes it.",
    params(("id" = uuid::Uuid, Path, description = "The job id from the 202", example = "019ab0c4-5d1e-7c53-9a43-8f0e6f1c2d3b")),
    responses(
        (status = 200, description = "Canceled: the job, with `status` `canceled`", body = JobView<'static>),
        (status = 202, description = "Running: the cancel is recorded (`cancel_requested_at`); the job, still `running`", body = JobView<'static>),
        (status = 400, description = "`invalid_job_id`", body = crate::error::Body<'static>),
        (status = 404, description = "`job_not_found`: unknown or expired", body = crate::error::Body<'static>),
        (status = 409, description = "`job_not_cancelable`: already terminal", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn cancel_by_delete(
    queue: State<Queue>,
    waiters: State<Arc<Waiters>>,
    tenant: Extension<Tenant>,
    PathParam(raw_id): PathParam,
) -> Response {
    let successor = HeaderValue::from_str(&format!(
        "</v1/jobs/{}/cancel>; rel=\"successor-version\"",
        clip(&raw_id)
    ));
    let mut res = cancel(queue, waiters, tenant, PathParam(raw_id))
        .await
        .into_response();
    let headers = res.headers_mut();
    headers.insert(DEPRECATION, HeaderValue::from_static(DELETE_DEPRECATED));
    // An id that is not a valid header value is refused by the cancel anyway.
    if let Ok(link) = successor {
        headers.insert(header::LINK, link);
    }
    res
}

/// RFC 9745.
const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");

pub(crate) fn job_id(raw: &str) -> Result<Uuid, ApiError> {
    let id = Uuid::parse_str(raw).map_err(|_| ApiError::InvalidJobId(clip(raw)))?;
    tracing::Span::current().record("job_id", tracing::field::display(id));
    Ok(id)
}

fn wait_duration(
    query: Result<Query<JobQuery>, QueryRejection>,
    max: Duration,
) -> Result<Duration, ApiError> {
    // One message for every way `wait` can be wrong: the rejection's own
    // text is serde's.
    let invalid = || ApiError::InvalidQuery("wait must be a non-negative number of seconds".into());
    let Query(q) = query.map_err(|_| invalid())?;
    match q.wait {
        None => Ok(Duration::ZERO),
        Some(s) if s.is_finite() && s >= 0.0 => {
            Ok(Duration::from_secs_f64(s.min(max.as_secs_f64())))
        }
        Some(_) => Err(invalid()),
    }
}

/// Reads the job until it is terminal or `wait` has passed. The waiter is
/// registered and armed before each read, so a finish published between the
/// read and the sleep still wakes it.
pub(crate) async fn wait_terminal(
    queue: &Queue,
    waiters: &Arc<Waiters>,
    tenant: &Tenant,
    id: Uuid,
    wait: Duration,
) -> Result<JobRecord, ApiError> {
    let deadline = Instant::now() + wait;
    let registration = waiters.register(id);
    loop {
        let mut woken = pin!(registration.notified());
        woken.as_mut().enable();
        let job = read(queue, tenant, &id).await?;
        if job.status.is_terminal() || waiters.is_closing() || Instant::now() >= deadline {
            return Ok(job);
        }
        // Woken or timed out, the next read decides.
        let _ = tokio::time::timeout_at(deadline, woken).await;
    }
}

/// The job, if it exists and is the tenant's: a job belongs to the tenant
/// of its model (see [`crate::auth`]).
pub(crate) async fn read(queue: &Queue, tenant: &Tenant, id: &Uuid) -> Result<JobRecord, ApiError> {
    let mut conn = queue.conn();
    ops::get_job(&mut conn, queue.keys(), id)
        .await
        .map_err(redis_failed(redis_op::GET_JOB))?
        .filter(|job| tenant.public_name(&job.model).is_some())
        .ok_or(ApiError::JobNotFound(*id))
}

fn render(tenant: &Tenant, job: &JobRecord) -> Result<Response, ApiError> {
    Ok(axum::Json(view(tenant, job)?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Uri;

    fn wait(q: &str) -> Result<Duration, ApiError> {
        let uri: Uri = format!("/v1/jobs/x?{q}").parse().unwrap();
        wait_duration(Query::try_from_uri(&uri), Duration::from_secs(30))
    }

    #[test]
    fn wait_accepts_seconds_and_is_capped() {
        assert_eq!(wait("").unwrap(), Duration::ZERO);
        assert_eq!(wait("wait=2").unwrap(), Duration::from_secs(2));
        assert_eq!(wait("wait=0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(wait("wait=3600").unwrap(), Duration::from_secs(30));
        assert_eq!(wait("other=1").unwrap(), Duration::ZERO);
    }

    #[test]
    fn wait_rejects_junk() {
        for q in ["wait=-1", "wait=abc", "wait=NaN", "wait=inf", "wait="] {
            assert_eq!(wait(q).unwrap_err().code().as_str(), "invalid_query", "{q}");
        }
    }
}
