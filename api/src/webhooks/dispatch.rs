//! The dispatcher: one task per partition reads its outbox (new calls, and
//! calls whose dispatcher died, taken over once idle past the lease),
//! sends each call on a task of its own, at most `--webhook-concurrency`
//! at once in the process, and settles every attempt in one script (see
//! [`shared::queue::webhooks`]). A slow or dead receiver holds a permit
//! for at most `--webhook-timeout-ms`, and never a worker: job processing
//! does not wait for any call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde_json::value::RawValue;
use shared::Keys;
use shared::backoff::{Backoff, equal_jitter};
use shared::model::tenant_of;
use shared::queue::keys::Partition;
use shared::queue::ops;
use shared::queue::webhooks::outbox::{self, Next, Queued};
use shared::queue::webhooks::{Call, DeliveryState, DeliveryStatus, Subscription, secrets};
use shared::redis_conn::{self, Conn, Limits, Topology};
use shared::time::{now_ms, rfc3339_ms};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::WebhookArgs;
use super::guard::{self, GuardedResolver};
use super::sign;
use crate::auth::Tenant;
use crate::metrics::{WEBHOOK_CALL_DURATION, WEBHOOK_CALLS};
use crate::view::view;

/// Calls read per outbox read.
const READ_COUNT: usize = 32;
/// How long a read blocks for the first new call.
const BLOCK_MS: u64 = 1000;
/// How often due retries are released and stale calls taken over.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);
/// Longest error text kept in the job's view.
const MAX_ERROR_CHARS: usize = 200;

/// The running dispatcher; aborts its tasks when dropped, so it lives as
/// long as the application state that owns it. An aborted call is not
/// lost: it stays pending in its outbox and is taken over.
pub(crate) struct Dispatcher {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What every delivery of this process shares.
struct Shared {
    conn: Conn,
    keys: Keys,
    http: reqwest::Client,
    permits: Arc<Semaphore>,
    delays: Vec<Duration>,
    allow_private: bool,
}

impl Dispatcher {
    /// Starts one task per partition. Must be called within a Tokio runtime.
    pub(crate) fn spawn(
        topology: &Topology,
        limits: Limits,
        conn: Conn,
        keys: &Keys,
        args: &WebhookArgs,
    ) -> Result<Dispatcher, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(args.timeout())
            .connect_timeout(args.timeout())
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: args.webhook_allow_private,
            }))
            .user_agent(concat!("onnx-queue-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let shared = Arc::new(Shared {
            conn,
            keys: keys.clone(),
            http,
            permits: Arc::new(Semaphore::new(args.webhook_concurrency as usize)),
            delays: args
                .webhook_retry_delays_ms
                .iter()
                .map(|&ms| Duration::from_millis(ms))
                .collect(),
            allow_private: args.webhook_allow_private,
        });
        // A call in flight is settled well within its timeout; one idle
        // for twice as long (and 5 s) was held by a dispatcher that died.
        let lease_ms = args.webhook_timeout_ms.saturating_mul(2) + 5000;
        let consumer = format!(
            "api-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        );
        let blocking = Limits {
            connect: limits.connect,
            response: limits.response + Duration::from_millis(BLOCK_MS),
        };
        let tasks = keys
            .all_partitions()
            .map(|p| {
                tokio::spawn(partition_loop(
                    Arc::clone(&shared),
                    topology.clone(),
                    blocking,
                    p,
                    consumer.clone(),
                    lease_ms,
                ))
            })
            .collect();
        Ok(Dispatcher { tasks })
    }
}

async fn partition_loop(
    shared: Arc<Shared>,
    topology: Topology,
    limits: Limits,
    p: Partition,
    consumer: String,
    lease_ms: u64,
) {
    let mut backoff = Backoff::reconnect();
    loop {
        if let Err(e) = serve_partition(&shared, &topology, limits, p, &consumer, lease_ms).await {
            tracing::warn!(partition = p, error = %e, "webhook outbox read failed; retrying");
            tokio::time::sleep(backoff.next_delay()).await;
            backoff = Backoff::new(backoff.next_delay() * 2, Duration::from_secs(5));
        } else {
            backoff.reset();
        }
    }
}

/// Reads and dispatches partition `p` until Redis fails.
async fn serve_partition(
    shared: &Arc<Shared>,
    topology: &Topology,
    limits: Limits,
    p: Partition,
    consumer: &str,
    lease_ms: u64,
) -> Result<(), shared::queue::QueueError> {
    let mut reader = redis_conn::dedicated(topology, limits).await?;
    let mut conn = shared.conn.clone();
    outbox::ensure_group(&mut conn, &shared.keys, p).await?;
    let mut upkeep_at = Instant::now();
    loop {
        if upkeep_at.elapsed() >= UPKEEP_EVERY {
            upkeep_at = Instant::now();
            outbox::release_due(&mut conn, &shared.keys, p, now_ms(), 256).await?;
            let stale =
                outbox::reclaim(&mut conn, &shared.keys, p, consumer, lease_ms, READ_COUNT).await?;
            for q in stale {
                tracing::info!(entry = %q.entry_id, "webhook call taken over from a stopped dispatcher");
                start(shared, p, q).await;
            }
        }
        // Back-pressure: read no more than can be sent now; the rest waits
        // in the outbox.
        let free = shared.permits.available_permits().clamp(1, READ_COUNT);
        let calls =
            outbox::read_new(&mut reader, &shared.keys, p, consumer, free, BLOCK_MS).await?;
        for q in calls {
            start(shared, p, q).await;
        }
    }
}

/// Sends one call on a task of its own once a permit is free.
async fn start(shared: &Arc<Shared>, p: Partition, q: Queued) {
    let Ok(permit) = Arc::clone(&shared.permits).acquire_owned().await else {
        return;
    };
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let _permit = permit;
        let mut conn = shared.conn.clone();
        let call = match q.call {
            Ok(call) => call,
            Err(why) => {
                tracing::warn!(entry = %q.entry_id, why, "unreadable webhook call dropped");
                let _ = outbox::drop_unreadable(&mut conn, &shared.keys, p, &q.entry_id).await;
                return;
            }
        };
        let span = tracing::info_span!("webhook", job_id = %call.id, event = call.event.as_str());
        let _ = tracing::Instrument::instrument(deliver(&shared, &q.entry_id, call), span).await;
    });
}

/// What one attempt saw.
struct Attempt {
    status: Option<u16>,
    error: Option<String>,
    /// A failure retrying cannot cure (no record, a refused destination).
    permanent: bool,
}

async fn deliver(shared: &Shared, entry_id: &str, mut call: Call) -> Result<(), ()> {
    let mut conn = shared.conn.clone();
    let started = Instant::now();
    let attempt = attempt(shared, &mut conn, &call).await;
    let elapsed = started.elapsed();
    call.tries += 1;
    let now = now_ms();
    let next = match (&attempt.error, attempt.permanent) {
        (None, _) => Next::Delivered,
        (Some(e), true) => Next::Dead(e.clone()),
        (Some(e), false) => match shared.delays.get(call.tries as usize - 1) {
            Some(&d) => {
                let wait = equal_jitter(d, rand::random::<f64>());
                Next::RetryAt(now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2))
            }
            None => Next::Dead(e.clone()),
        },
    };
    let outcome = match &next {
        Next::Delivered => "delivered",
        Next::RetryAt(_) => "retrying",
        Next::Dead(_) => "dead",
    };
    metrics::counter!(WEBHOOK_CALLS, "outcome" => outcome).increment(1);
    metrics::histogram!(WEBHOOK_CALL_DURATION).record(elapsed.as_secs_f64());
    let state = DeliveryState {
        webhook_id: call.webhook_id(),
        event: call.event,
        attempts: call.tries,
        state: match next {
            Next::Delivered => DeliveryStatus::Delivered,
            Next::RetryAt(_) => DeliveryStatus::Retrying,
            Next::Dead(_) => DeliveryStatus::Dead,
        },
        last_status_code: attempt.status,
        last_duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        last_error: attempt.error.clone(),
        last_attempt_at: now,
        next_attempt_at: match next {
            Next::RetryAt(at) => Some(at),
            _ => None,
        },
    };
    match outbox::settle(&mut conn, &shared.keys, entry_id, &call, &state, &next, now).await {
        Ok(true) => {
            tracing::info!(
                outcome,
                tries = call.tries,
                status = attempt.status,
                error = attempt.error,
                "webhook call"
            );
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => {
            // Left pending: taken over after the lease, sent again.
            tracing::warn!(error = %e, "webhook call not settled");
            Err(())
        }
    }
}

/// The payload: Standard Webhooks' `type`, `timestamp` and `data` (the job
/// as `GET /v1/jobs/{id}` shows it when the call is made), the attempt the
/// event happened in, and a progress event's progress.
#[derive(Serialize)]
struct Payload<'a> {
    r#type: &'static str,
    timestamp: String,
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<&'a RawValue>,
    data: crate::view::JobView<'a>,
}

fn failed(error: impl Into<String>, permanent: bool) -> Attempt {
    let mut error: String = error.into();
    if error.chars().count() > MAX_ERROR_CHARS {
        error = error.chars().take(MAX_ERROR_CHARS).collect();
    }
    Attempt {
        status: None,
        error: Some(error),
        permanent,
    }
}

async fn attempt(shared: &Shared, conn: &mut Conn, call: &Call) -> Attempt {
    let record = match ops::get_job(conn, &shared.keys, &call.id).await {
        Ok(Some(r)) => r,
        Ok(None) => return failed("the job's record expired before the call was made", true),
        Err(e) => return failed(format!("reading the job: {e}"), false),
    };
    let Some(sub) = record
        .webhook_json
        .as_deref()
        .and_then(|j| serde_json::from_str::<Subscription>(j).ok())
    else {
        return failed("the job has no webhook", true);
    };
    let url = match guard::check_url(&sub.url, shared.allow_private) {
        Ok(u) => u,
        Err(r) => return failed(r.to_string(), true),
    };
    let tenant = Tenant::named(tenant_of(&record.model));
    let now = now_ms();
    let body = match view(&tenant, &record) {
        Ok(data) => serde_json::to_vec(&Payload {
            r#type: call.event.type_name(),
            timestamp: rfc3339_ms(now),
            attempt: call.attempt,
            progress: call
                .progress
                .as_deref()
                .and_then(|p| serde_json::from_str::<&RawValue>(p).ok()),
            data,
        }),
        Err(_) => return failed("the job's record is corrupt", true),
    };
    let Ok(body) = body else {
        return failed("the payload could not be encoded", true);
    };
    let secrets = match secrets::get_or_create(conn, &shared.keys, tenant.name()).await {
        Ok(s) => s,
        Err(e) => return failed(format!("reading the signing secret: {e}"), false),
    };
    let id = call.webhook_id();
    let ts = now / 1000;
    let signature = sign::signature(&secrets, now, &id, ts, &body);
    let sent = shared
        .http
        .post(url)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => Attempt {
            status: Some(resp.status().as_u16()),
            error: None,
            permanent: false,
        },
        Ok(resp) => Attempt {
            status: Some(resp.status().as_u16()),
            error: Some(format!("the receiver answered {}", resp.status())),
            permanent: false,
        },
        Err(e) => failed(describe(&e), false),
    }
}

/// A send error as the job's view shows it: what went wrong, not the
/// client library's chain.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the receiver did not answer in time".into()
    } else if e.is_connect() {
        let mut source = std::error::Error::source(e);
        let mut refused = false;
        while let Some(s) = source {
            refused |= s.downcast_ref::<guard::Refusal>().is_some();
            source = s.source();
        }
        if refused {
            guard::Refusal::Internal.to_string()
        } else {
            "could not connect to the receiver".into()
        }
    } else {
        "the call failed before an answer".into()
    }
}
