//! Everything a request handler needs, built once per process and shared by
//! cheap clones: the shared Redis connection, the key layout, the model cache, the
//! long-poll registry, the event listener task, the metrics handle, the
//! admission pools, the request-body rules, the queue policy, and the two
//! files an operator may change while the process runs (API keys and tenant
//! policies, reloaded on SIGHUP by [`AppState::reload`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use shared::Keys;
use shared::redis_conn::{self, Conn, Limits, Topology};

use crate::admission::Pools;
use crate::auth::ApiKeys;
use crate::body_deadline::BodyRules;
use crate::config::Config;
use crate::events::Listener;
use crate::models_cache::ModelCache;
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
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Conn,
    api_keys: ArcSwap<ApiKeys>,
    api_keys_file: Option<PathBuf>,
    policies: ArcSwap<Policies>,
    tenants_file: Option<PathBuf>,
    keys: Keys,
    limits: Limits,
    models: Arc<ModelCache>,
    waiters: Arc<Waiters>,
    listener: Listener,
    metrics: PrometheusHandle,
    max_wait: Duration,
    max_body_bytes: usize,
    max_model_bytes: usize,
    max_dataset_bytes: usize,
    max_train_work: u64,
    pools: Pools,
    body_rules: BodyRules,
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
    /// Whether a 202 waits for a replica's copy of the job.
    pub durability: shared::queue::Durability,
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
        Ok(AppState {
            inner: Arc::new(Inner {
                redis,
                api_keys: ArcSwap::from_pointee(api_keys),
                api_keys_file: config.api_keys_file.clone(),
                policies: ArcSwap::from_pointee(policies),
                tenants_file: config.tenants_file.clone(),
                keys,
                limits,
                models,
                waiters,
                listener,
                metrics,
                max_wait: config.max_wait(),
                max_body_bytes: config.max_body_bytes,
                max_model_bytes: config.max_model_bytes,
                max_dataset_bytes: config.max_dataset_bytes,
                max_train_work: config.max_train_work,
                pools: Pools::new(config.max_concurrent_requests, config.max_long_polls),
                body_rules: config.body_rules(),
                queue: QueuePolicy {
                    max_queue_depth: config.max_queue_depth,
                    idempotency_ttl_secs: config.result_ttl_secs,
                    canceled_ttl_secs: config.canceled_ttl_secs,
                    durability: config.queue.durability(),
                },
            }),
        })
    }

    /// A handle to the process's shared Redis connection (see
    /// [`redis_conn::shared`]); every command on it is bounded by the
    /// configured Redis limits.
    pub fn conn(&self) -> Conn {
        self.inner.redis.clone()
    }

    /// Who may call, as which tenant (see [`crate::auth`]).
    pub fn api_keys(&self) -> Arc<ApiKeys> {
        self.inner.api_keys.load_full()
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

    /// Largest accepted model upload.
    pub fn max_model_bytes(&self) -> usize {
        self.inner.max_model_bytes
    }

    /// Largest accepted dataset upload.
    pub fn max_dataset_bytes(&self) -> usize {
        self.inner.max_dataset_bytes
    }

    /// Most epochs x rows x features a retrain job may ask for.
    pub fn max_train_work(&self) -> u64 {
        self.inner.max_train_work
    }

    /// The request and long-poll pools (see [`crate::admission`]).
    pub fn pools(&self) -> &Pools {
        &self.inner.pools
    }

    /// What a request body must keep up (see [`crate::body_deadline`]).
    pub fn body_rules(&self) -> BodyRules {
        self.inner.body_rules
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
