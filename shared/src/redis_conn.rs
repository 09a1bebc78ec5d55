//! Redis connections with explicit time limits.
//!
//! redis-rs gives every response 500 ms by default and deadpool waits forever
//! for a connection; neither suits us, so every connection here is built with
//! explicit limits (an outage turns into a quick error, not a hung request).
//!
//! Three shapes, by traffic:
//! * [`shared`]: one multiplexed connection for a whole process, reconnected
//!   in the background after a failure. Concurrent requests are pipelined on
//!   one socket, so Redis reads many commands per syscall and a request costs
//!   exactly its own round trip. The API uses it: a pool's checkout would add
//!   a health-check round trip (deadpool-redis sends `UNWATCH` + `PING` on
//!   every checkout) to every HTTP request.
//! * [`pool`]: a bounded deadpool of multiplexed connections, for callers that
//!   check a connection out once per batch of work (the worker).
//! * [`dedicated`]: a connection of its own, for commands that block
//!   server-side (a worker's `XREADGROUP`), with a response timeout above the
//!   block time.

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::AsyncConnectionConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};

/// Time limits for one class of connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    pub response: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(2),
        }
    }
}

fn config(limits: Limits) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(limits.connect))
        .set_response_timeout(Some(limits.response))
}

/// One connection shared by every task of the process (clones are cheap
/// handles to it). Connects lazily: a Redis that is down at start-up only
/// makes requests fail until it is back. After a connection error the next
/// request reconnects once, within the connect limit, rather than retrying
/// for long: callers turn errors into quick 503s and clients retry.
pub fn shared(url: &str, limits: Limits) -> Result<ConnectionManager, redis::RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(limits.connect))
        .set_response_timeout(Some(limits.response))
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(redis::Client::open(url)?, config)
}

/// A bounded pool of multiplexed connections.
pub fn pool(url: &str, max_size: usize, limits: Limits) -> Result<Pool, redis::RedisError> {
    let manager = Manager::new_with_config(url, config(limits))?;
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(limits.connect))
        .create_timeout(Some(limits.connect))
        .recycle_timeout(Some(limits.response))
        .build()
        .map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "cannot build redis pool",
                e.to_string(),
            ))
        })
}

/// A connection of its own, for commands that block server-side.
pub async fn dedicated(
    url: &str,
    limits: Limits,
) -> Result<MultiplexedConnection, redis::RedisError> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config(limits))
        .await
}

/// Checks that a URL parses, so a typo fails at start-up, not at first use.
pub fn check_url(url: &str) -> Result<(), redis::RedisError> {
    redis::Client::open(url).map(drop)
}
