//! Everything a request handler needs, built once per process and shared by
//! cheap clones: the Redis pool, the key layout, the model cache, the
//! long-poll registry, the event listener task, the metrics handle, the
//! request slots of the load shedder and the queue policy.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Connection, Pool};
use metrics_exporter_prometheus::PrometheusHandle;
use shared::redis_conn::{self, Limits};
use shared::{Keys, QueueError};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::events::Listener;
use crate::models_cache::ModelCache;
use crate::waiters::Waiters;

/// Connections the pool may open; request traffic is multiplexed over them.
const POOL_SIZE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid redis url: {0}")]
    RedisUrl(#[source] redis::RedisError),
    #[error("cannot build the redis pool: {0}")]
    Pool(#[source] redis::RedisError),
    #[error("the queue namespace must not be empty")]
    EmptyNamespace,
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    keys: Keys,
    limits: Limits,
    models: Arc<ModelCache>,
    waiters: Arc<Waiters>,
    listener: Listener,
    metrics: PrometheusHandle,
    max_wait: Duration,
    max_body_bytes: usize,
    request_slots: Arc<Semaphore>,
    queue: QueuePolicy,
}

/// How submissions and cancels treat the queue.
#[derive(Debug, Clone, Copy)]
pub struct QueuePolicy {
    /// 0 = unbounded.
    pub max_queue_depth: u64,
    /// TTL of an idempotency key (the workers' result TTL).
    pub idempotency_ttl_secs: u64,
    /// TTL of a canceled job's record.
    pub canceled_ttl_secs: u64,
}

impl AppState {
    /// Builds the state and starts the event listener. Connects lazily: a
    /// Redis that is down at start-up makes requests fail with 503 until it
    /// is back, it does not stop the process. Must be called within a Tokio
    /// runtime.
    pub fn new(config: &Config) -> Result<AppState, StartupError> {
        if config.namespace.is_empty() {
            return Err(StartupError::EmptyNamespace);
        }
        let limits = config.redis_limits();
        let client =
            redis::Client::open(config.redis_url.as_str()).map_err(StartupError::RedisUrl)?;
        let pool =
            redis_conn::pool(&config.redis_url, POOL_SIZE, limits).map_err(StartupError::Pool)?;
        let keys = Keys::new(&config.namespace);
        let models = Arc::new(ModelCache::new(pool.clone(), keys.clone(), limits));
        let waiters = Arc::new(Waiters::new());
        let listener = Listener::spawn(
            client,
            &keys,
            limits,
            Arc::clone(&models),
            Arc::clone(&waiters),
        );
        Ok(AppState {
            inner: Arc::new(Inner {
                pool,
                keys,
                limits,
                models,
                waiters,
                listener,
                metrics: crate::metrics::handle(),
                max_wait: config.max_wait(),
                max_body_bytes: config.max_body_bytes,
                request_slots: Arc::new(Semaphore::new(config.max_concurrent_requests as usize)),
                queue: QueuePolicy {
                    max_queue_depth: config.max_queue_depth,
                    idempotency_ttl_secs: config.result_ttl_secs,
                    canceled_ttl_secs: config.canceled_ttl_secs,
                },
            }),
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// A pooled connection, within the Redis time budget.
    pub async fn conn(&self) -> Result<Connection, QueueError> {
        checkout(&self.inner.pool, self.inner.limits).await
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub fn redis_limits(&self) -> Limits {
        self.inner.limits
    }

    pub fn models(&self) -> &ModelCache {
        &self.inner.models
    }

    pub fn waiters(&self) -> &Waiters {
        &self.inner.waiters
    }

    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    pub fn max_wait(&self) -> Duration {
        self.inner.max_wait
    }

    pub fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    /// One permit per request being handled (see [`crate::overload`]).
    pub fn request_slots(&self) -> &Arc<Semaphore> {
        &self.inner.request_slots
    }

    pub fn queue_policy(&self) -> &QueuePolicy {
        &self.inner.queue
    }

    /// Whether the job/model event subscription is currently up.
    pub fn is_subscribed(&self) -> bool {
        self.inner.listener.is_subscribed()
    }

    /// Waits until the event subscription is up (tests, start-up checks).
    pub async fn wait_subscribed(&self, timeout: Duration) -> bool {
        self.inner.listener.wait_subscribed(timeout).await
    }

    /// Starts a graceful shutdown: pending long-polls answer at once with
    /// their job's current state instead of keeping the server up.
    pub fn begin_shutdown(&self) {
        self.inner.waiters.close();
    }
}

/// Checks a connection out of the pool within one overall budget. deadpool
/// bounds each step (wait, create, recycle) on its own and, when recycling an
/// idle connection fails, moves on to the next one: against a hung Redis an
/// unbounded `get` could spend one recycle timeout per idle connection.
pub async fn checkout(pool: &Pool, limits: Limits) -> Result<Connection, QueueError> {
    match tokio::time::timeout(limits.connect + limits.response, pool.get()).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(QueueError::Redis(redis::RedisError::from(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out waiting for a redis connection",
            ),
        ))),
    }
}
