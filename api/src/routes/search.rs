//! `GET /v1/jobs?model=&status=&since=&until=&limit=&cursor=`: the
//! caller's jobs, newest first, a page at a time, from the tenant's job
//! index ([`shared::queue::index`]) and the jobs' records.
//!
//! Only the caller's tenant's index is read, and each record is checked to
//! be the tenant's again, so another tenant's job never appears. The work of
//! one page is bounded: at most [`MAX_EXAMINED`] index entries are examined
//! (their records read, [`index::records`]: in pipelines of one round trip
//! per partition), so a
//! filter that matches few jobs (`model`, `status`) answers a short or even
//! empty page with a `next_cursor` rather than reading on; a client pages
//! until `next_cursor` is `null`. Entries whose record has expired are
//! skipped.

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shared::job::{JobRecord, JobStatus};
use shared::queue::index::{self, Walk};
use uuid::Uuid;

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::metrics::{redis_failed, redis_op};
use crate::paths;
use crate::queue::Queue;
use crate::text::clip;
use crate::view::{JobView, view};

/// Jobs per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 50;
/// Largest `limit`.
const MAX_LIMIT: usize = 500;
/// Index entries one page examines at most, matching or not.
pub(crate) const MAX_EXAMINED: usize = 1000;

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    model: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A page of jobs.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = JobList)]
pub(crate) struct JobList<'a> {
    /// Newest first (by submission time, then id).
    jobs: Vec<JobView<'a>>,
    /// Pass as `cursor` (with the same filters) for the next page; `null`
    /// when there is none. A page may be short, even empty, with a cursor:
    /// see `limit`.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = paths::JOBS,
    tag = "jobs",
    summary = "List your jobs, newest first",
    description = "The caller's jobs (its tenant's, never another's), newest first, a page at a time. Jobs are found through an index written by the submit script with each job, kept per tenant and hour and expiring with the records (`--result-ttl-secs`, `--canceled-ttl-secs`), so a job is listed while its record can be read. A page examines at most 1000 index entries: with a filter that matches few jobs it may come back short, even empty, with a `next_cursor`; page until `next_cursor` is `null`.",
    params(
        ("model" = Option<String>, Query, description = "Only jobs of this model", example = "breast_cancer"),
        ("status" = Option<shared::job::JobStatus>, Query, description = "Only jobs in this status now"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only jobs submitted at or after this RFC 3339 time"),
        ("until" = Option<String>, Query, format = DateTime, description = "Only jobs submitted at or before this RFC 3339 time"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Most jobs per page (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (opaque)"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = JobList<'static>),
        (status = 400, description = "`invalid_query`: a parameter is malformed (the message names it)", body = crate::error::Body<'static>),
    )
)]
pub(crate) async fn list_jobs(
    State(queue): State<Queue>,
    Extension(tenant): Extension<Tenant>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|_| invalid("the query string is malformed"))?;
    let filter = Filter::parse(&tenant, &q)?;
    let now = shared::time::now_ms();
    // Nothing older than the index's retention (plus the hour a bucket
    // spans) exists; ids of another API replica may run a little ahead.
    let retention_ms = i64::try_from(queue.policy().index_ttl_secs)
        .unwrap_or(i64::MAX / 4)
        .saturating_mul(1000);
    let earliest = now
        .saturating_sub(retention_ms)
        .saturating_sub(2 * shared::queue::keys::INDEX_BUCKET_MS);
    let since = filter.since.unwrap_or(earliest).max(earliest);
    let until = filter
        .until
        .unwrap_or(now + shared::queue::keys::INDEX_BUCKET_MS);
    let mut walk = Walk::new(
        queue.keys(),
        tenant.name(),
        since,
        until,
        filter.cursor.as_ref(),
    );
    let mut conn = queue.conn();
    let mut found: Vec<JobRecord> = Vec::new();
    let mut examined = 0;
    let mut last = None;
    let mut done = false;
    while found.len() < filter.limit && examined < MAX_EXAMINED {
        let want = (filter.limit - found.len()).min(MAX_EXAMINED - examined);
        let ids = walk
            .next(&mut conn, queue.keys(), want)
            .await
            .map_err(redis_failed(redis_op::LIST_JOBS))?;
        if ids.is_empty() {
            done = true;
            break;
        }
        examined += ids.len();
        last = ids.last().copied();
        let records = index::records(&mut conn, queue.keys(), &ids)
            .await
            .map_err(redis_failed(redis_op::LIST_JOBS))?;
        found.extend(
            records
                .into_iter()
                .flatten()
                .filter(|r| tenant.public_name(&r.model).is_some() && filter.admits(r)),
        );
    }
    let jobs = found
        .iter()
        .map(|r| view(&tenant, r))
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if done {
        None
    } else {
        last.map(|id| id.simple().to_string())
    };
    Ok(axum::Json(JobList { jobs, next_cursor }).into_response())
}

fn invalid(what: &str) -> ApiError {
    ApiError::InvalidQuery(what.to_owned())
}

/// The query, checked.
struct Filter {
    /// The internal model name.
    model: Option<String>,
    status: Option<JobStatus>,
    since: Option<i64>,
    until: Option<i64>,
    limit: usize,
    cursor: Option<Uuid>,
}

impl Filter {
    fn parse(tenant: &Tenant, q: &ListQuery) -> Result<Filter, ApiError> {
        let model = match q.model.as_deref() {
            None => None,
            Some(m) => Some(tenant.qualify(m).ok_or_else(|| {
                ApiError::InvalidQuery(format!("model {:?} is not a valid model name", clip(m)))
            })?),
        };
        let status = match q.status.as_deref() {
            None => None,
            Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
                invalid("status must be one of queued, running, succeeded, failed, canceled")
            })?),
        };
        let time = |name: &str, v: Option<&str>| -> Result<Option<i64>, ApiError> {
            let Some(v) = v else { return Ok(None) };
            let bad = || {
                ApiError::InvalidQuery(format!(
                    "{name} must be an RFC 3339 time (e.g. 2030-01-01T00:00:00Z)"
                ))
            };
            let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map_err(|_| bad())?;
            i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
                .map(Some)
                .map_err(|_| bad())
        };
        let limit = match q.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| invalid("limit must be a whole number from 1 to 500"))?,
        };
        let cursor = match q.cursor.as_deref() {
            None => None,
            Some(c) => Some(
                Uuid::try_parse(c)
                    .ok()
                    .filter(|_| c.len() == 32)
                    .ok_or_else(|| invalid("cursor is not one this API gave"))?,
            ),
        };
        Ok(Filter {
            model,
            status,
            since: time("since", q.since.as_deref())?,
            until: time("until", q.until.as_deref())?,
            limit,
            cursor,
        })
    }

    /// Whether a job found in the index is listed.
    fn admits(&self, job: &JobRecord) -> bool {
        self.model.as_ref().is_none_or(|m| *m == job.model)
            && self.status.is_none_or(|s| s == job.status)
            && self.since.is_none_or(|t| index::id_ms(&job.id) >= t)
            && self.until.is_none_or(|t| index::id_ms(&job.id) <= t)
    }
}
