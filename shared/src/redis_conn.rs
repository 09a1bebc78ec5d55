//! Redis connections with explicit time limits.
//!
//! redis-rs gives every response 500 ms by default and deadpool waits forever
//! for a connection; neither suits us. Request/response traffic goes through a
//! [`Pool`] whose every step is bounded (so an outage turns into a quick error,
//! not a hung request); a worker's blocking `XREADGROUP` gets a dedicated
//! connection whose response timeout exceeds the block time.

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

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
