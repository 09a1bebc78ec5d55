//! `GET /v1/ws`: a WebSocket session in which one client submits many
//! predictions and gets each result pushed as its job finishes.
//!
//! The protocol (JSON text messages; see the README):
//!
//! ```text
//!  client ─ {"op":"predict","ref":R,"model":M,"body":{...predict body...}}
//!  server ─ {"op":"accepted","ref":R,"job_id":ID,"status":"queued"}          at once, or
//!           {"op":"error","ref":R,"error":{"code","message"}}                 refused
//!  server ─ {"op":"result","ref":R,"job_id":ID,...the job view...}           when the job ends
//! ```
//!
//! `ref` is the client's tag, any JSON value, echoed as sent. `body` is
//! exactly what `POST /v1/models/{model}/predict` takes, and goes through
//! the same submit path ([`super::predict::submit_one`]): the same
//! validation, error codes, queue bounds and quotas, and one token of the
//! tenant's (and model's) rate per job ([`crate::admission::draw`]). The
//! session was authenticated and admitted at the upgrade, with the same API
//! key header as any route, and holds one long-poll slot while it lives.
//!
//! Back-pressure: at most `--ws-max-in-flight` jobs per session are in
//! flight (submitted, result not yet pushed); a predict past it is answered
//! `in_flight_limit`. Results are written as the socket takes them: a client
//! that stops reading stops the session reading its messages too. Messages
//! are bounded by `--max-body-bytes`; a session with nothing in flight that
//! hears nothing for `--ws-idle-secs` is closed, and so is every session
//! when the API shuts down (jobs still in flight can be polled).

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRef, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use shared::job::JobRecord;
use tokio::time::Instant;
use uuid::Uuid;

use super::jobs::wait_terminal;
use super::predict::{Parts, submit_one};
use crate::admission::{StreamSlots, draw};
use crate::auth::Tenant;
use crate::config::RequestLimits;
use crate::error::{ApiError, Detail};
use crate::models_cache::ModelCache;
use crate::paths;
use crate::queue::Queue;
use crate::state::AppState;
use crate::tenants::Policies;
use crate::view::{JobView, view};
use crate::waiters::Waiters;

/// How long one wait for a job's end lasts before it is renewed (a job may
/// queue for longer; the wait simply starts again).
const WAIT_ROUND: Duration = Duration::from_secs(3600);

/// How often the session checks for shutdown and pings the client.
const TICK: Duration = Duration::from_secs(1);

/// A client's message.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    op: Op,
    #[serde(rename = "ref", default)]
    tag: Option<Box<RawValue>>,
    model: String,
    /// A predict body, passed on as its bytes.
    body: Box<RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Predict,
}

/// What of a refused message can still be echoed: its tag.
#[derive(Deserialize)]
struct TagOnly {
    #[serde(rename = "ref", default)]
    tag: Option<Box<RawValue>>,
}

/// A server message: `accepted`, `error` or `result`.
#[derive(Serialize)]
struct Reply<'a> {
    op: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    tag: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Detail<'static>>,
    /// The job view, its fields beside `op` and `ref`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    job: Option<JobView<'a>>,
}

impl<'a> Reply<'a> {
    fn new(op: &'static str, tag: Option<&'a RawValue>) -> Reply<'a> {
        Reply {
            op,
            tag,
            job_id: None,
            status: None,
            error: None,
            job: None,
        }
    }

    fn error(tag: Option<&'a RawValue>, e: &ApiError) -> Reply<'a> {
        Reply {
            error: Some(e.detail()),
            ..Reply::new("error", tag)
        }
    }

    fn to_message(&self) -> Message {
        // Plain strings and validated raw JSON always serialise.
        let text = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"op":"error","error":{"code":"internal","message":"internal server error"}}"#
                .to_owned()
        });
        Message::Text(text.into())
    }
}

/// The parts of the state a session uses.
struct Session {
    queue: Queue,
    models: Arc<ModelCache>,
    policies: Arc<Policies>,
    waiters: Arc<Waiters>,
    tenant: Tenant,
    limits: RequestLimits,
    _slots: StreamSlots,
}

#[utoipa::path(
    get,
    path = paths::WS,
    tag = "jobs",
    summary = "Submit many jobs and get their results pushed, over a WebSocket",
    description = "Upgrade to a WebSocket (authenticated with the same API key header as any route). Send `{\"op\":\"predict\",\"ref\":<your tag>,\"model\":\"<model>\",\"body\":<a predict body>}`; each is answered `{\"op\":\"accepted\",\"ref\",\"job_id\",\"status\"}` or `{\"op\":\"error\",\"ref\",\"error\":{\"code\",\"message\"}}` with the codes of `POST /v1/models/{model}/predict`, and when the job ends `{\"op\":\"result\",\"ref\",...the job as GET /v1/jobs/{id} answers it}`. At most `--ws-max-in-flight` jobs per session may be in flight (`in_flight_limit` past it). Messages are bounded by `--max-body-bytes`; a quiet session closes after `--ws-idle-secs`. A session holds a long-poll slot (`--max-long-polls`).",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 426, description = "`upgrade_required`: not a WebSocket upgrade", body = crate::error::Body<'static>),
        (status = 503, description = "`overloaded`: every long-poll slot is taken", body = crate::error::Body<'static>,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub(crate) async fn session(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Extension(slots): Extension<StreamSlots>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|_| ApiError::UpgradeRequired)?;
    let limits = RequestLimits::from_ref(&state);
    let session = Session {
        queue: Queue::from_ref(&state),
        models: Arc::<ModelCache>::from_ref(&state),
        policies: Arc::<Policies>::from_ref(&state),
        waiters: Arc::<Waiters>::from_ref(&state),
        tenant,
        limits,
        _slots: slots,
    };
    Ok(upgrade
        .max_message_size(limits.max_body_bytes)
        .max_frame_size(limits.max_body_bytes)
        .on_upgrade(move |socket| session.run(socket)))
}

impl Session {
    async fn run(self, socket: WebSocket) {
        let (mut sink, mut source) = socket.split();
        let mut submits = FuturesUnordered::new();
        let mut waits = FuturesUnordered::new();
        let mut idle_at = Instant::now() + self.limits.ws_idle;
        let mut tick = tokio::time::interval(TICK);
        let mut ticks = 0u64;
        let close = loop {
            let in_flight = submits.len() + waits.len();
            let out = tokio::select! {
                Some((tag, accepted)) = submits.next(), if !submits.is_empty() => {
                    let tag: Option<Box<RawValue>> = tag;
                    match accepted {
                        Ok(job) => {
                            let job: crate::submit::Accepted = job;
                            waits.push(self.wait(job.id, tag.clone()));
                            Reply {
                                job_id: Some(job.id),
                                status: Some(job.status.as_str()),
                                ..Reply::new("accepted", tag.as_deref())
                            }
                            .to_message()
                        }
                        Err(e) => Reply::error(tag.as_deref(), &e).to_message(),
                    }
                }
                Some((tag, ended)) = waits.next(), if !waits.is_empty() => {
                    let tag: Option<Box<RawValue>> = tag;
                    self.result(tag.as_deref(), ended)
                }
                msg = source.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        idle_at = Instant::now() + self.limits.ws_idle;
                        match self.parse(text.as_str(), in_flight) {
                            Ok((tag, public, body)) => {
                                submits.push(self.submit(tag, public, body));
                                continue;
                            }
                            Err((tag, e)) => Reply::error(tag.as_deref(), &e).to_message(),
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        idle_at = Instant::now() + self.limits.ws_idle;
                        let e = ApiError::UnsupportedMediaType;
                        Reply::error(None, &e).to_message()
                    }
                    // Pings are answered by the socket itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(e)) => {
                        // Oversized messages end here too.
                        tracing::debug!(error = %e, "websocket read failed");
                        break Some(close_frame(close_code::POLICY, "unreadable message"));
                    }
                },
                _ = tick.tick() => {
                    ticks += 1;
                    if self.waiters.is_closing() {
                        break Some(close_frame(close_code::AWAY, "server shutting down"));
                    }
                    if in_flight == 0 && Instant::now() >= idle_at {
                        break Some(close_frame(close_code::NORMAL, "idle"));
                    }
                    // A ping now and then keeps proxies from closing a
                    // session that only waits for results.
                    if !ticks.is_multiple_of(15) {
                        continue;
                    }
                    Message::Ping(Bytes::new())
                }
            };
            if sink.send(out).await.is_err() {
                break None;
            }
        };
        if let Some(frame) = close {
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
    }

    /// A predict message's tag, model and body, or why it is refused.
    #[allow(clippy::type_complexity)]
    fn parse(
        &self,
        text: &str,
        in_flight: usize,
    ) -> Result<(Option<Box<RawValue>>, String, Bytes), (Option<Box<RawValue>>, ApiError)> {
        let tag = || {
            serde_json::from_str::<TagOnly>(text)
                .ok()
                .and_then(|t| t.tag)
        };
        if in_flight >= self.limits.ws_max_in_flight {
            return Err((tag(), ApiError::InFlightLimit(self.limits.ws_max_in_flight)));
        }
        let req: Request = crate::extract::parse(text.as_bytes()).map_err(|e| (tag(), e))?;
        let Op::Predict = req.op;
        let body = Bytes::copy_from_slice(req.body.get().as_bytes());
        Ok((req.tag, req.model, body))
    }

    /// Submits one job as the HTTP predict does, after its rate token.
    async fn submit(
        &self,
        tag: Option<Box<RawValue>>,
        public: String,
        body: Bytes,
    ) -> (
        Option<Box<RawValue>>,
        Result<crate::submit::Accepted, ApiError>,
    ) {
        let res = async {
            let policy = self.policies.of(self.tenant.name());
            let model = self
                .tenant
                .qualify(&public)
                .filter(|m| self.models.is_cached(m));
            draw(&self.queue, &self.tenant, policy, model.as_deref()).await?;
            let parts = Parts {
                queue: &self.queue,
                models: &self.models,
                policies: &self.policies,
            };
            submit_one(parts, &self.tenant, &public, &HeaderMap::new(), Ok(body)).await
        }
        .await;
        (tag, res)
    }

    /// Waits until the job `id` is terminal (or the API shuts down).
    async fn wait(
        &self,
        id: Uuid,
        tag: Option<Box<RawValue>>,
    ) -> (Option<Box<RawValue>>, Result<JobRecord, ApiError>) {
        loop {
            match wait_terminal(&self.queue, &self.waiters, &self.tenant, id, WAIT_ROUND).await {
                Ok(job) if !job.status.is_terminal() && !self.waiters.is_closing() => {}
                other => return (tag, other),
            }
        }
    }

    /// The `result` message of a job that ended (or an `error` one).
    fn result(&self, tag: Option<&RawValue>, ended: Result<JobRecord, ApiError>) -> Message {
        let job = ended.and_then(|rec| {
            let view = view(&self.tenant, &rec)?;
            Ok(Reply {
                job: Some(view),
                ..Reply::new("result", tag)
            }
            .to_message())
        });
        job.unwrap_or_else(|e| Reply::error(tag, &e).to_message())
    }
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}
