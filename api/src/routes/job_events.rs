//! `GET /v1/jobs/{id}/events`: a job's changes as a Server-Sent Events
//! stream, from its current state to its end, then the stream closes.
//!
//! Events (see the README): `status` (`{"job_id","status","attempts"}`
//! for `queued`, a retry being `queued` with `attempts` of 1 or more, and
//! `running`), `progress` (a retrain's `progress` field as its worker wrote
//! it) and `done` (the job view of `GET /v1/jobs/{id}`, once terminal).
//!
//! Event ids are derived from the record, not kept in a log: an id is
//! `{attempts}.{stage}.{phase}.{epoch}` ([`EventId`]), compared as a tuple
//! of integers, and grows with every change a client can see. A reconnect
//! with `Last-Event-ID` gets only what comes after it; one after the `done`
//! event gets 204, which tells an `EventSource` to stop reconnecting. So a
//! job nobody watches costs nothing, and a watched one only its `watched`
//! mark ([`shared::queue::watch`]): with it, the worker's scripts publish
//! the start, progress and retry as well as the end.
//!
//! Waiting follows the [`crate::waiters`] protocol: register, arm, read,
//! then sleep until a publish wakes the stream. The first read is the one
//! that sets the mark, so no transition after it goes unpublished. A stream
//! holds a long-poll slot ([`crate::admission::StreamSlots`]) and lasts at
//! most `--max-stream-secs`, after which it closes and the client resumes
//! with its `Last-Event-ID`; keep-alive comments flow while it waits.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::job::{JobRecord, JobStatus};
use shared::queue::{ops, watch};
use shared::retrain::{Phase, Progress};
use tokio::time::Instant;
use uuid::Uuid;

use super::jobs::{job_id, read};
use crate::admission::StreamSlots;
use crate::auth::Tenant;
use crate::config::RequestLimits;
use crate::conn_watch::Streaming;
use crate::error::ApiError;
use crate::extract::PathParam;
use crate::metrics::{redis_failed, redis_op};
use crate::paths;
use crate::queue::Queue;
use crate::view::view;
use crate::waiters::{Registration, Waiters};

/// How often a waiting stream sends a comment, so proxies and clients see
/// it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The standard header a reconnecting `EventSource` sends.
const LAST_EVENT_ID: &str = "last-event-id";

/// Where a job is, as an event id: ordered as the job moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EventId {
    attempts: u32,
    /// 0 queued, 1 running, 2 queued again for a retry, 3 terminal.
    stage: u8,
    /// A retrain's phase while running (0 none, then loading data,
    /// training, evaluating, registering).
    phase: u8,
    epoch: u32,
}

impl EventId {
    fn parse(s: &str) -> Option<EventId> {
        let mut parts = s.trim().split('.');
        let id = EventId {
            attempts: parts.next()?.parse().ok()?,
            stage: parts.next()?.parse().ok()?,
            phase: parts.next()?.parse().ok()?,
            epoch: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(id)
    }

    /// The id of the record's status, without its progress.
    fn status_of(rec: &JobRecord) -> EventId {
        let stage = match rec.status {
            JobStatus::Queued if rec.attempts == 0 => 0,
            JobStatus::Queued => 2,
            JobStatus::Running => 1,
            _ => 3,
        };
        EventId {
            attempts: rec.attempts,
            stage,
            phase: 0,
            epoch: 0,
        }
    }

    /// The id of a running record's progress, if it has some of this
    /// attempt (a taken-over job keeps the old attempt's until it writes).
    fn progress_of(rec: &JobRecord) -> Option<EventId> {
        let p: Progress = serde_json::from_str(rec.progress_json.as_deref()?).ok()?;
        if rec.status != JobStatus::Running || p.attempt != rec.attempts {
            return None;
        }
        let phase = match p.phase {
            Phase::LoadingData => 1,
            Phase::Training => 2,
            Phase::Evaluating => 3,
            Phase::Registering => 4,
        };
        Some(EventId {
            phase,
            epoch: p.epoch.unwrap_or(0),
            ..EventId::status_of(rec)
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.attempts, self.stage, self.phase, self.epoch
        )
    }
}

/// The data of a `status` event.
#[derive(Serialize)]
struct StatusData {
    job_id: Uuid,
    status: &'static str,
    attempts: u32,
}

#[utoipa::path(
    get,
    path = paths::EVENTS,
    tag = "jobs",
    summary = "Follow a job as a Server-Sent Events stream",
    description = "A `text/event-stream` of the job's changes from its current state: `status` events (`{\"job_id\",\"status\",\"attempts\"}` for `queued`, a retry being `queued` again with `attempts` >= 1, and `running`), `progress` events (a retrain's `progress` object) and one `done` event (the job as `GET /v1/jobs/{id}` answers it), after which the stream closes. Every event has an `id` (`attempts.stage.phase.epoch`, growing as the job moves on); a reconnect with `Last-Event-ID` gets only what follows it, and one after `done` gets 204. Comments keep the stream alive while it waits; it closes after `--max-stream-secs` (reconnect with `Last-Event-ID`). A stream holds a long-poll slot (`--max-long-polls`).",
    params(
        ("id" = uuid::Uuid, Path, description = "The job id from the 202", example = "019ab0c4-5d1e-7c53-9a43-8f0e6f1c2d3b"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received: resume after it"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 204, description = "`Last-Event-ID` is the job's `done` event: nothing follows"),
        (status = 400, description = "`invalid_job_id`", body = crate::error::Body<'static>),
        (status = 404, description = "`job_not_found`: unknown, expired or another tenant's", body = crate::error::Body<'static>),
        (status = 503, description = "`overloaded`: every long-poll slot is taken", body = crate::error::Body<'static>,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(crate) async fn job_events(
    State(queue): State<Queue>,
    State(waiters): State<Arc<Waiters>>,
    State(limits): State<RequestLimits>,
    Extension(tenant): Extension<Tenant>,
    Extension(slots): Extension<StreamSlots>,
    PathParam(raw_id): PathParam,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = job_id(&raw_id)?;
    // An id that is not one of ours starts the stream from the beginning:
    // it can only repeat what the client has, never skip what it lacks.
    let last = headers
        .get(LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(EventId::parse);
    // The tenant's job or 404, before any stream (or mark) exists.
    let job = read(&queue, &tenant, &id).await?;
    if job.status.is_terminal() && last.is_some_and(|l| l >= EventId::status_of(&job)) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let follow = Follow {
        queue,
        registration: waiters.register(id),
        waiters,
        id,
        cursor: Cursor {
            tenant,
            last,
            pending: VecDeque::new(),
            done: false,
        },
        marked: false,
        until: Instant::now() + limits.max_stream,
        _slots: slots,
    };
    let stream = futures::stream::unfold(follow, Follow::next);
    let mut res = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    res.extensions_mut().insert(Streaming);
    Ok(res)
}

/// One stream's state between events.
struct Follow {
    queue: Queue,
    waiters: Arc<Waiters>,
    registration: Registration,
    id: Uuid,
    cursor: Cursor,
    /// Whether the job carries the `watched` mark yet.
    marked: bool,
    until: Instant,
    _slots: StreamSlots,
}

/// What the client has and what it is sent next (apart from the rest of
/// [`Follow`], which the armed wake-up borrows meanwhile).
struct Cursor {
    tenant: Tenant,
    /// The id of the last event the client has.
    last: Option<EventId>,
    /// Events found by the last read, not yet sent.
    pending: VecDeque<Event>,
    /// The `done` (or `error`) event is queued: end after it.
    done: bool,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Follow)> {
        loop {
            if let Some(event) = self.cursor.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.cursor.done || self.waiters.is_closing() || Instant::now() >= self.until {
                return None;
            }
            // Armed before the read: a publish after it still wakes us.
            let mut woken = pin!(self.registration.notified());
            woken.as_mut().enable();
            let read = if self.marked {
                let mut conn = self.queue.conn();
                ops::get_job(&mut conn, self.queue.keys(), &self.id).await
            } else {
                let mut conn = self.queue.conn();
                watch::watch_job(&mut conn, self.queue.keys(), &self.id).await
            };
            let record = match read.map_err(redis_failed(redis_op::GET_JOB)) {
                Ok(Some(rec)) => rec,
                // Expired while followed: nothing more will come.
                Ok(None) => return None,
                Err(e) => {
                    self.cursor.fail(&e);
                    continue;
                }
            };
            self.marked = true;
            self.cursor.queue_changes(&record);
            if self.cursor.pending.is_empty() {
                // Woken or out of time, the next turn decides.
                let _ = tokio::time::timeout_at(self.until, woken).await;
            }
        }
    }
}

impl Cursor {
    /// Queues the events `rec` holds that come after the client's last.
    fn queue_changes(&mut self, rec: &JobRecord) {
        let status = EventId::status_of(rec);
        let newer = |id: EventId, last: Option<EventId>| last.is_none_or(|l| id > l);
        if rec.status.is_terminal() {
            if newer(status, self.last) {
                match view(&self.tenant, rec).and_then(|v| json(&v)) {
                    Ok(data) => self.push("done", status, data),
                    Err(e) => self.fail(&e),
                }
            }
            self.done = true;
            return;
        }
        if newer(status, self.last) {
            let data = StatusData {
                job_id: rec.id,
                status: rec.status.as_str(),
                attempts: rec.attempts,
            };
            match json(&data) {
                Ok(data) => self.push("status", status, data),
                Err(e) => self.fail(&e),
            }
        }
        if let (Some(progress), Some(data)) = (EventId::progress_of(rec), &rec.progress_json)
            && newer(progress, self.last)
        {
            self.push("progress", progress, data.clone());
        }
    }

    fn push(&mut self, name: &'static str, id: EventId, data: String) {
        self.pending
            .push_back(Event::default().event(name).id(id.to_string()).data(data));
        self.last = Some(id);
    }

    /// Ends the stream with an `error` event (the error body's `error`
    /// object); the client may reconnect with its `Last-Event-ID`.
    fn fail(&mut self, e: &ApiError) {
        let data = serde_json::to_string(&e.detail()).unwrap_or_default();
        self.pending
            .push_back(Event::default().event("error").data(data));
        self.done = true;
    }
}

fn json(v: &impl Serialize) -> Result<String, ApiError> {
    serde_json::to_string(v).map_err(|e| ApiError::Internal(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_order_as_the_job_moves_on() {
        let id = |a, s, p, e| EventId {
            attempts: a,
            stage: s,
            phase: p,
            epoch: e,
        };
        let order = [
            id(0, 0, 0, 0),
            id(1, 1, 0, 0),
            id(1, 1, 2, 1),
            id(1, 1, 2, 10),
            id(1, 1, 3, 0),
            id(1, 2, 0, 0),
            id(2, 1, 0, 0),
            id(2, 3, 0, 0),
        ];
        for w in order.windows(2) {
            assert!(w[0] < w[1], "{} < {}", w[0], w[1]);
        }
        for i in order {
            assert_eq!(EventId::parse(&i.to_string()), Some(i));
        }
        for bad in ["", "1.2.3", "1.2.3.4.5", "a.b.c.d", "-1.0.0.0"] {
            assert_eq!(EventId::parse(bad), None, "{bad}");
        }
    }
}
