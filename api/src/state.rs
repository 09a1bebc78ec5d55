//! The application state: every part a request handler or middleware uses,
//! built once per process and shared by cheap clones (the job store
//! [`Queue`], the model cache, the long-poll registry, the event listener
//! task, the metrics handle, the admission pools, the request limits and
//! body rules, and the two files an operator may change while the process
//! runs: API keys and tenant policies, reloaded on SIGHUP by
//! [`AppState::reload`]).
//!
//! Handlers and middleware never take the whole [`AppState`]: each takes
//! the parts it touches as `State<Part>`, and the [`FromRef`] impls below
//! say how each part is got from the whole (as in axum's examples). So this
//! module imports the parts, and no part imports it: it is used by the
//! router ([`crate::app`]) and the binary only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;
use shared::redis_conn::{self, Topology};

use crate::admission::Pools;
use crate::auth::ApiKeys;
use crate::body_deadline::BodyRules;
use crate::config::{Config, RequestLimits};
use crate::events::Listener;
use crate::models_cache::ModelCache;
use crate::queue::{Queue, QueuePolicy};
use crate::tenants::{Policies, TenantsError};
use crate::waiters::Waiters;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid redis url: {0}")]
    RedisUrl(#[source] redis::RedisError),
    #[error(transparent)]
    ApiKeys(#[from] crate::auth::KeysError),
    #[error(transparent)]
    Tenants(#[from] TenantsError),
    #[error("the queue namespace must not be empty nor hold braces")]
    EmptyNamespace,
    #[error("cannot build the webhook client: {0}")]
    WebhookClient(#[source] reqwest::Error),
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Queue,
    api_keys: ArcSwap<ApiKeys>,
    api_keys_file: Option<PathBuf>,
    policies: ArcSwap<Policies>,
    tenants_file: Option<PathBuf>,
    models: Arc<ModelCache>,
    waiters: Arc<Waiters>,
    listener: Listener,
    metrics: PrometheusHandle,
    limits: RequestLimits,
    pools: Arc<Pools>,
    body_rules: BodyRules,
    /// `None` when this process does not dispatch (`--webhook-dispatch false`).
    _dispatcher: Option<crate::webhooks::dispatch::Dispatcher>,
}

impl AppState {
    /// Builds the state and starts the event listener. Connects lazily: a
    /// Redis that is down at start-up makes requests fail with 503 until it
    /// is back, it does not stop the process. Must be called within a Tokio
    /// runtime.
    pub fn new(config: &Config) -> Result<AppState, StartupError> {
        if !shared::queue::keys::valid_namespace(&config.namespace) {
            return Err(StartupError::EmptyNamespace);
        }
        let limits = config.redis_limits();
        let topology = Topology::parse(&config.redis_url).map_err(StartupError::RedisUrl)?;
        let pubsub = topology.pubsub_clients().map_err(StartupError::RedisUrl)?;
        let redis = redis_conn::shared(&topology, limits).map_err(StartupError::RedisUrl)?;
        let api_keys = load_keys(config.api_keys_file.as_deref())?;
        let policies = load_policies(config.tenants_file.as_deref(), !api_keys.is_open())?;
        let keys = config.queue.keys(&config.namespace);
        let models = Arc::new(ModelCache::new(redis.clone(), keys.clone()));
        let waiters = Arc::new(Waiters::new());
        let listener = Listener::spawn(
            pubsub,
            &keys,
            limits,
            Arc::clone(&models),
            Arc::clone(&waiters),
        );
        let metrics = crate::metrics::handle(&models);
        let dispatcher = config
            .webhooks
            .webhook_dispatch
            .then(|| {
                crate::webhooks::dispatch::Dispatcher::spawn(
                    &topology,
                    limits,
                    redis.clone(),
                    &keys,
                    &config.webhooks,
                )
            })
            .transpose()
            .map_err(StartupError::WebhookClient)?;
        let policy = QueuePolicy {
            max_queue_depth: config.max_queue_depth,
            idempotency_ttl_secs: config.result_ttl_secs,
            canceled_ttl_secs: config.canceled_ttl_secs,
            index_ttl_secs: config.result_ttl_secs.max(config.canceled_ttl_secs),
            durability: config.queue.durability(),
            webhook_allow_private: config.webhooks.webhook_allow_private,
            webhook_secret_overlap_secs: config.webhooks.webhook_secret_overlap_secs,
        };
        Ok(AppState {
            inner: Arc::new(Inner {
                queue: Queue::new(redis, keys, limits, policy),
                api_keys: ArcSwap::from_pointee(api_keys),
                api_keys_file: config.api_keys_file.clone(),
                policies: ArcSwap::from_pointee(policies),
                tenants_file: config.tenants_file.clone(),
                models,
                waiters,
                listener,
                metrics,
                limits: config.request_limits(),
                pools: Arc::new(Pools::new(
                    config.max_concurrent_requests,
                    config.max_long_polls,
                )),
                body_rules: config.body_rules(),
                _dispatcher: dispatcher,
            }),
        })
    }

    /// What each tenant may use (see [`crate::tenants`]).
    pub fn policies(&self) -> Arc<Policies> {
        self.inner.policies.load_full()
    }

    /// Reads the API keys and tenants files again (SIGHUP). Either both
    /// are taken or, if one is bad, neither: the process keeps serving
    /// with what it had, and the error says which file and where.
    pub fn reload(&self) -> Result<(), StartupError> {
        let keys = load_keys(self.inner.api_keys_file.as_deref())?;
        let policies = load_policies(self.inner.tenants_file.as_deref(), !keys.is_open())?;
        self.inner.api_keys.store(Arc::new(keys));
        self.inner.policies.store(Arc::new(policies));
        self.inner.pools.reset_shares();
        Ok(())
    }

    pub fn waiters(&self) -> &Waiters {
        &self.inner.waiters
    }

    /// The body limit of every router.
    pub fn max_body_bytes(&self) -> usize {
        self.inner.limits.max_body_bytes
    }

    /// What a request body must keep up (see [`crate::body_deadline`]).
    pub fn body_rules(&self) -> BodyRules {
        self.inner.body_rules
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

impl FromRef<AppState> for Queue {
    fn from_ref(state: &AppState) -> Queue {
        state.inner.queue.clone()
    }
}

impl FromRef<AppState> for RequestLimits {
    fn from_ref(state: &AppState) -> RequestLimits {
        state.inner.limits
    }
}

/// The keys in force when the request came: a reload swaps them for the
/// requests after it.
impl FromRef<AppState> for Arc<ApiKeys> {
    fn from_ref(state: &AppState) -> Arc<ApiKeys> {
        state.inner.api_keys.load_full()
    }
}

/// The policies in force when the request came, as for the keys.
impl FromRef<AppState> for Arc<Policies> {
    fn from_ref(state: &AppState) -> Arc<Policies> {
        state.policies()
    }
}

impl FromRef<AppState> for Arc<ModelCache> {
    fn from_ref(state: &AppState) -> Arc<ModelCache> {
        Arc::clone(&state.inner.models)
    }
}

impl FromRef<AppState> for Arc<Waiters> {
    fn from_ref(state: &AppState) -> Arc<Waiters> {
        Arc::clone(&state.inner.waiters)
    }
}

impl FromRef<AppState> for Arc<Pools> {
    fn from_ref(state: &AppState) -> Arc<Pools> {
        Arc::clone(&state.inner.pools)
    }
}

impl FromRef<AppState> for PrometheusHandle {
    fn from_ref(state: &AppState) -> PrometheusHandle {
        state.inner.metrics.clone()
    }
}

fn load_keys(path: Option<&std::path::Path>) -> Result<ApiKeys, StartupError> {
    Ok(match path {
        Some(path) => ApiKeys::load(path)?,
        None => ApiKeys::open(),
    })
}

/// `shared_pools`: whether several tenants share the process, which sets
/// the default share of its pools (see [`crate::tenants`]).
fn load_policies(
    path: Option<&std::path::Path>,
    shared_pools: bool,
) -> Result<Policies, StartupError> {
    Ok(match path {
        Some(path) => Policies::load(path, shared_pools)?,
        None => Policies::builtin(shared_pools),
    })
}
