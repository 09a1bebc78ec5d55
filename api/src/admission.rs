//! Admission: whether a tenant's request is handled now, refused because the
//! process is full, or refused because the tenant used its share or its rate.
//!
//! ```text
//!  request ─▶ the key's tenant ([`ApiKeys::tenant_of`])    no → 401 unauthorized
//!          ─▶ pool: a `?wait=` poll → long-poll pool, anything else → request pool
//!          ─▶ a free slot of the process's pool?          no → 503 overloaded
//!          ─▶ a free slot of the tenant's share of it?    no → 429 tenant_concurrency_limit
//!          ─▶ a token in the tenant's bucket, and in the bucket
//!             of the model the route names (if any)?      no → 429 rate_limited
//!          ─▶ handler; RateLimit headers on the answer
//! ```
//!
//! Slots are taken without waiting: a request that would queue inside the
//! process only adds latency and memory. Waiting polls (`GET /v1/jobs/{id}
//! ?wait=N`) cost no CPU while they wait, so they have a pool of their own
//! (`--max-long-polls`): a tenant holding a thousand of them does not take
//! the slots another tenant's submissions need. Event streams (`GET
//! /v1/jobs/{id}/events`) and WebSocket sessions (`/v1/ws`) take a slot of
//! the same pool and hold it until they end ([`StreamSlots`]), so hostile
//! clients cannot hold more of them than `--max-long-polls` allows. A
//! tenant's share of each pool comes from its [`Policy`](crate::tenants::Policy).
//! A WebSocket session draws one token per job it submits ([`draw`]), as
//! the HTTP route would.
//!
//! Rate limits are token buckets in Redis ([`shared::queue::ratelimit`]),
//! shared by every API replica: one bucket per tenant for all its requests,
//! one per model of the tenant for the routes that name it. Only models the
//! API knows get a bucket, so made-up names cannot create keys. A tenant
//! without a rate costs no Redis call; if Redis cannot answer, the request
//! goes through (counted in `onnxq_redis_errors_total{op="rate_limit"}`):
//! the handler needs Redis anyway and will say so itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::SharedString;
use serde::Deserialize;
use shared::queue::ratelimit::{self, Bucket, Level, Rate, Verdict};
use shared::redis_errors::count_redis_error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{ApiKeys, Tenant};
use crate::error::{ApiError, RateLimitInfo};
use crate::metrics::{UNKNOWN_MODEL, count_rejection, redis_op};
use crate::models_cache::ModelCache;
use crate::paths;
use crate::queue::Queue;
use crate::tenants::{Policies, Policy};

/// The process's two pools and each tenant's share of them.
pub struct Pools {
    requests: Arc<Semaphore>,
    long_polls: Arc<Semaphore>,
    request_size: u32,
    long_poll_size: u32,
    shares: Mutex<HashMap<String, Shares>>,
}

/// One tenant's share of each pool, sized from its policy.
#[derive(Clone)]
struct Shares {
    requests: Arc<Semaphore>,
    long_polls: Arc<Semaphore>,
}

impl Pools {
    pub fn new(max_requests: u32, max_long_polls: u32) -> Pools {
        Pools {
            requests: Arc::new(Semaphore::new(max_requests as usize)),
            long_polls: Arc::new(Semaphore::new(max_long_polls as usize)),
            request_size: max_requests,
            long_poll_size: max_long_polls,
            shares: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets every tenant's share, so the next request sizes it from the
    /// policies just loaded. Slots held under the old sizes are released to
    /// the old semaphores, which then go away.
    pub fn reset_shares(&self) {
        self.shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn shares_of(&self, tenant: &str, policy: &Policy) -> Shares {
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        shares
            .entry(tenant.to_owned())
            .or_insert_with(|| Shares {
                requests: Arc::new(Semaphore::new(Policy::slots_of(
                    policy.request_share,
                    self.request_size,
                ) as usize)),
                long_polls: Arc::new(Semaphore::new(Policy::slots_of(
                    policy.long_poll_share,
                    self.long_poll_size,
                ) as usize)),
            })
            .clone()
    }

    /// Request slots free right now (tests, readiness detail).
    pub fn free_requests(&self) -> usize {
        self.requests.available_permits()
    }
}

/// The slots a request holds while it is handled.
struct Held {
    _process: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<f64>,
}

/// The long-poll slots of a stream (an event stream, a WebSocket session),
/// which answers before it ends: the handler keeps them with its body or
/// its socket, so they are given back when the stream ends.
#[derive(Clone)]
pub(crate) struct StreamSlots {
    _held: Arc<Held>,
}

/// A route that streams: it goes to the long-poll pool, and keeps its slots
/// until it ends.
fn is_stream(route: Option<&str>) -> bool {
    matches!(route, Some(paths::EVENTS | paths::WS))
}

/// A poll that will wait: it goes to the long-poll pool.
fn is_long_poll(req: &Request, route: Option<&str>) -> bool {
    req.method() == Method::GET
        && route == Some(paths::JOB)
        && axum::extract::Query::<WaitQuery>::try_from_uri(req.uri())
            .ok()
            .and_then(|q| q.0.wait)
            .is_some_and(|w| w > 0.0)
}

fn take_slots(
    pools: &Pools,
    tenant: &Tenant,
    policy: &Policy,
    long_poll: bool,
) -> Result<Held, ApiError> {
    let shares = pools.shares_of(tenant.name(), policy);
    let (process, own) = if long_poll {
        (&pools.long_polls, &shares.long_polls)
    } else {
        (&pools.requests, &shares.requests)
    };
    let process = Arc::clone(process)
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded)?;
    let tenant = Arc::clone(own)
        .try_acquire_owned()
        .map_err(|_| ApiError::TenantConcurrency)?;
    Ok(Held {
        _process: process,
        _tenant: tenant,
    })
}

/// The model a route names, if the API knows it (its internal name).
fn named_model(
    models: &ModelCache,
    tenant: &Tenant,
    route: Option<&str>,
    path: &str,
) -> Option<String> {
    // Every route under `/v1/models/{model}` names one.
    route?.strip_prefix(paths::MODEL)?;
    let public = path
        .strip_prefix(paths::MODELS)?
        .strip_prefix('/')?
        .split('/')
        .next()?;
    let internal = tenant.qualify(public)?;
    models.is_cached(&internal).then_some(internal)
}

/// The buckets a request draws from, with their policy names.
fn buckets(
    queue: &Queue,
    tenant: &Tenant,
    policy: &Policy,
    model: Option<&str>,
) -> Vec<(&'static str, Bucket)> {
    let mut out = Vec::new();
    if let Some(rate) = policy.rate {
        out.push((
            "tenant",
            Bucket {
                key: queue.keys().rate(tenant.name()),
                rate,
            },
        ));
    }
    if let (Some(rate), Some(model)) = (policy.model_rate, model) {
        out.push((
            "model",
            Bucket {
                key: queue.keys().model_rate(model),
                rate,
            },
        ));
    }
    out
}

/// The layer in front of every tenant route: the caller's tenant from its
/// key, then the pools, shares and rates of the module docs.
pub(crate) async fn admit(
    State(keys): State<Arc<ApiKeys>>,
    State(queue): State<Queue>,
    State(policies): State<Arc<Policies>>,
    State(models): State<Arc<ModelCache>>,
    State(pools): State<Arc<Pools>>,
    mut req: Request,
    next: Next,
) -> Response {
    // Authentication is part of this layer rather than one of its own:
    // each `from_fn` layer costs every request a boxed future and a clone
    // of the service below it.
    let tenant = match keys.tenant_of(req.headers()) {
        Ok(tenant) => tenant,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert(tenant.clone());
    // An `Arc` inside: cloning it allocates nothing.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map(MatchedPath::as_str);
    // Only tenant routes come here (health, readiness and metrics have a
    // router of their own and never take a slot).
    let policy = policies.of(tenant.name());
    // Only a model bucket, or a predict's rejection label, needs the name.
    let model = (policy.model_rate.is_some() || route == Some(paths::PREDICT))
        .then(|| named_model(&models, &tenant, route, req.uri().path()))
        .flatten();
    let refuse = |e: ApiError| {
        if route == Some(paths::PREDICT) {
            let label = model
                .clone()
                .map_or(SharedString::const_str(UNKNOWN_MODEL), SharedString::from);
            count_rejection(label, &e);
        }
        e.into_response()
    };
    let stream = is_stream(route);
    let held = match take_slots(&pools, &tenant, policy, stream || is_long_poll(&req, route)) {
        Ok(h) => h,
        Err(e) => return refuse(e),
    };
    let _held = if stream {
        req.extensions_mut().insert(StreamSlots {
            _held: Arc::new(held),
        });
        None
    } else {
        Some(held)
    };
    let shown = match draw(&queue, &tenant, policy, model.as_deref()).await {
        Ok(shown) => shown,
        Err(e) => return refuse(e),
    };
    let mut res = next.run(req).await;
    if let Some(info) = shown {
        info.write_headers(res.headers_mut());
    }
    res
}

/// One token from the tenant's bucket and from `model`'s (its internal
/// name, if the API knows it): the bucket closest to empty, for the
/// headers, or `rate_limited`. If Redis cannot answer, the request goes
/// through (see the module docs).
pub(crate) async fn draw(
    queue: &Queue,
    tenant: &Tenant,
    policy: &Policy,
    model: Option<&str>,
) -> Result<Option<RateLimitInfo>, ApiError> {
    let buckets = buckets(queue, tenant, policy, model);
    if buckets.is_empty() {
        return Ok(None);
    }
    let only: Vec<Bucket> = buckets.iter().map(|(_, b)| b.clone()).collect();
    let mut conn = queue.conn();
    match ratelimit::take(&mut conn, &only).await {
        Ok(Verdict::Allowed(levels)) => Ok(tightest(&buckets, &levels)),
        Ok(Verdict::Limited { index, retry_in_ms }) => {
            let (name, b) = &buckets[index];
            Err(ApiError::RateLimited(RateLimitInfo {
                policy: name,
                rate: b.rate,
                remaining: 0,
                reset_secs: retry_in_ms.div_ceil(1000).max(1),
            }))
        }
        Err(e) => {
            count_redis_error(redis_op::RATE_LIMIT, &e);
            tracing::debug!(error = %e, "rate limit unavailable; letting the request through");
            Ok(None)
        }
    }
}

/// The bucket closest to empty: the one the `RateLimit` header describes.
fn tightest(buckets: &[(&'static str, Bucket)], levels: &[Level]) -> Option<RateLimitInfo> {
    buckets
        .iter()
        .zip(levels)
        .min_by_key(|(_, l)| l.remaining)
        .map(|((name, b), l)| RateLimitInfo {
            policy: name,
            rate: b.rate,
            remaining: l.remaining,
            reset_secs: l.full_in_ms.div_ceil(1000),
        })
}

impl RateLimitInfo {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers):
    /// the bucket as a quota of `burst` requests per refill window, and
    /// what is left of it.
    pub fn write_headers(&self, headers: &mut axum::http::HeaderMap) {
        let Rate { burst, .. } = self.rate;
        let policy = format!("{};q={burst};w={}", self.policy, self.rate.window_secs());
        let now = format!("{};r={};t={}", self.policy, self.remaining, self.reset_secs);
        for (name, value) in [("ratelimit-policy", policy), ("ratelimit", now)] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }
}
