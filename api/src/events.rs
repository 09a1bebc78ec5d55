//! The process's one Redis pub/sub subscription and the task that owns it.
//!
//! Workers PUBLISH a job id on `{ns}:events:job-finished` when a job becomes
//! terminal, and a model name on `{ns}:events:models` after changing its
//! signature. One task per API process listens to both and dispatches by
//! channel: job ids wake long-polling requests ([`Waiters`]), model names
//! refresh the [`ModelCache`].
//!
//! On a cluster the subscription is held on any one node: a `PUBLISH`
//! (also one from a script) is broadcast to every node of the cluster, so
//! any node hears every job. When the node fails the task moves to the next
//! seed node of `--redis-url`. (Sharded `SSUBSCRIBE` would need one
//! subscription per partition on its master, and every API process needs
//! every partition's events anyway: it would save the cluster bus fan-out,
//! not the API's work; see the README's scaling model.)
//!
//! Pub/sub is fire-and-forget: messages published while the subscription is
//! down are lost. So on every (re)subscribe the task wakes *all* waiters (they
//! re-read their jobs) and reloads all signatures. A silent connection (no
//! RST, e.g. a network partition) is detected by a periodic PING.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Msg, RedisError};
use shared::Keys;
use shared::backoff::Backoff;
use shared::model::valid_internal_model_name;
use shared::redis_conn::Limits;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::models_cache::ModelCache;
use crate::waiters::Waiters;

const PING_EVERY: Duration = Duration::from_secs(10);

/// Handle on the listener task; aborts it when dropped, so the task lives
/// exactly as long as the application state that owns it.
#[derive(Debug)]
pub(crate) struct Listener {
    task: JoinHandle<()>,
    subscribed: watch::Receiver<bool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Starts the task. Must be called within a Tokio runtime.
    /// `clients`: the nodes to subscribe on, tried in turn (one on a
    /// single node).
    pub(crate) fn spawn(
        clients: Vec<redis::Client>,
        keys: &Keys,
        limits: Limits,
        models: Arc<ModelCache>,
        waiters: Arc<Waiters>,
    ) -> Listener {
        let (tx, subscribed) = watch::channel(false);
        let task = tokio::spawn(
            Task {
                clients,
                next: std::sync::atomic::AtomicUsize::new(0),
                limits,
                job_channel: keys.job_finished_channel(),
                models_channel: keys.models_channel(),
                models,
                waiters,
                subscribed: tx,
            }
            .run(),
        );
        Listener { task, subscribed }
    }

    pub(crate) fn is_subscribed(&self) -> bool {
        *self.subscribed.borrow()
    }

    /// Waits until the subscription is up; `false` if it is not within
    /// `timeout`.
    pub(crate) async fn wait_subscribed(&self, timeout: Duration) -> bool {
        let mut rx = self.subscribed.clone();
        tokio::time::timeout(timeout, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

struct Task {
    clients: Vec<redis::Client>,
    /// The node to try next: moves on after every failed or lost
    /// subscription, so a dead cluster node is left behind.
    next: std::sync::atomic::AtomicUsize,
    limits: Limits,
    job_channel: String,
    models_channel: String,
    models: Arc<ModelCache>,
    waiters: Arc<Waiters>,
    subscribed: watch::Sender<bool>,
}

impl Task {
    async fn run(self) {
        let mut backoff = Backoff::reconnect();
        loop {
            match self.subscribe().await {
                Ok((sink, stream)) => {
                    backoff.reset();
                    tracing::info!("subscribed to job and model events");
                    self.waiters.wake_all();
                    match self.models.reload_all().await {
                        Ok(n) => tracing::debug!(models = n, "model signatures loaded"),
                        Err(e) => {
                            // Stale entries could outlive an update we missed;
                            // without them lookups simply go to Redis.
                            tracing::warn!(error = %e, "cannot reload model signatures");
                            self.models.clear();
                        }
                    }
                    self.subscribed.send_replace(true);
                    let why = self.pump(sink, stream).await;
                    self.subscribed.send_replace(false);
                    tracing::warn!(reason = why, "event subscription lost, reconnecting");
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff.next_delay(), "cannot subscribe to events");
                }
            }
            backoff.wait().await;
        }
    }

    async fn subscribe(&self) -> Result<(PubSubSink, PubSubStream), RedisError> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client = self
            .clients
            .get(n % self.clients.len().max(1))
            .ok_or_else(|| timed_out("choosing a node"))?;
        let mut pubsub = tokio::time::timeout(self.limits.connect, client.get_async_pubsub())
            .await
            .map_err(|_| timed_out("connecting"))??;
        tokio::time::timeout(
            self.limits.response,
            pubsub.subscribe(&[&self.job_channel, &self.models_channel]),
        )
        .await
        .map_err(|_| timed_out("subscribing"))??;
        Ok(pubsub.split())
    }

    /// Dispatches messages until the connection ends; returns why.
    async fn pump(&self, mut sink: PubSubSink, mut stream: PubSubStream) -> &'static str {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.dispatch(&msg).await,
                    None => return "connection closed",
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(self.limits.response, sink.ping::<()>()).await;
                    if !matches!(pong, Ok(Ok(()))) {
                        return "ping failed";
                    }
                }
            }
        }
    }

    async fn dispatch(&self, msg: &Msg) {
        let channel = msg.get_channel_name();
        let payload = std::str::from_utf8(msg.get_payload_bytes()).unwrap_or_default();
        if channel == self.job_channel {
            match Uuid::parse_str(payload) {
                Ok(id) => self.waiters.wake(&id),
                Err(_) => tracing::debug!(payload, "ignoring malformed job-finished event"),
            }
        } else if channel == self.models_channel {
            if !valid_internal_model_name(payload) {
                tracing::debug!(payload, "ignoring malformed model event");
                return;
            }
            if let Err(e) = self.models.refresh(payload).await {
                // The next reload (on reconnect) repairs it; until then the
                // old signature is the best we have.
                tracing::warn!(model = payload, error = %e, "cannot refresh model signature");
            }
        }
    }
}

fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("redis pub/sub: timed out {what}"),
    ))
}
