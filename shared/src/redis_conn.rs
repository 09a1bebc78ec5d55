//! Redis connections with explicit time limits, on one node or a cluster.
//!
//! redis-rs gives every response 500 ms by default, which does not suit us,
//! so every connection here is built with explicit limits (an outage turns
//! into a quick error, not a hung request).
//!
//! # Topologies
//!
//! `--redis-url` names either one node (`redis://host:port/db`, as always)
//! or a Redis Cluster: `redis+cluster://host1:port1,host2:port2,...` (seed
//! nodes; the client learns the rest from `CLUSTER SLOTS`). A cluster is
//! reached through the redis crate's cluster client, which routes every
//! command by its first key's slot and follows `MOVED`/`ASK` and failovers.
//! Everything above this module takes a [`Conn`] and never asks which.
//!
//! # Shapes, by traffic
//! * [`shared`]: one multiplexed connection for a whole process, reconnected
//!   after a failure. Concurrent requests are pipelined on one socket, so
//!   Redis reads many commands per syscall and a request costs exactly its
//!   own round trip. The API uses it, and so does the worker, through
//!   [`Pool`]. (The worker had a deadpool of 8 multiplexed connections:
//!   deadpool-redis health-checks every checkout with a pipelined `UNWATCH`
//!   and `PING`, which under load was 1.3 extra round trips per job, more
//!   than the worker's own reads. Nothing here holds connection state, `WATCH`
//!   or `SELECT`, that a pool would have to reset.)
//! * [`dedicated`]: a connection of its own, for commands that block
//!   server-side (a worker's `XREADGROUP`), with a response timeout above the
//!   block time: a blocking read must never stall a multiplexed connection
//!   that other tasks share.

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

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

/// The URL scheme of a cluster: the seed nodes after it, comma-separated.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Where Redis is: one node or a cluster's seed nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    Single(String),
    /// `redis://host:port` of each seed node.
    Cluster(Vec<String>),
}

impl Topology {
    /// Reads `--redis-url`; a typo fails here, at start-up, not at first use.
    pub fn parse(url: &str) -> Result<Topology, RedisError> {
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            redis::Client::open(url)?;
            return Ok(Topology::Single(url.to_owned()));
        };
        // Credentials, if any, come once before the first host and hold
        // for every node.
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        let hosts = hosts.trim_end_matches('/');
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{auth}{h}"))
            .collect();
        if nodes.is_empty() {
            return Err(invalid("a redis+cluster:// URL names no node"));
        }
        for n in &nodes {
            redis::Client::open(n.as_str())?;
        }
        Ok(Topology::Cluster(nodes))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Topology::Cluster(_))
    }

    /// One client per node that can serve a pub/sub subscription. On a
    /// cluster any node does: a `PUBLISH` reaches every node of the cluster,
    /// so a subscriber moves to the next seed when its node fails.
    pub fn pubsub_clients(&self) -> Result<Vec<redis::Client>, RedisError> {
        match self {
            Topology::Single(url) => Ok(vec![redis::Client::open(url.as_str())?]),
            Topology::Cluster(nodes) => nodes
                .iter()
                .map(|n| redis::Client::open(n.as_str()))
                .collect(),
        }
    }

    fn cluster_client(nodes: &[String], limits: Limits) -> Result<ClusterClient, RedisError> {
        ClusterClientBuilder::new(nodes.iter().map(String::as_str))
            .connection_timeout(limits.connect)
            .response_timeout(limits.response)
            // A failover takes a few node timeouts; the client retries
            // MOVED, ASK, TRYAGAIN and lost connections within this budget,
            // then the caller answers 503 and the client's retry does the
            // rest. The waits stay well under the response limit.
            .retries(4)
            .min_retry_wait(50)
            .max_retry_wait(500)
            .build()
    }
}

fn invalid(msg: &'static str) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, msg))
}

fn config(limits: Limits) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(limits.connect))
        .set_response_timeout(Some(limits.response))
}

/// An async Redis connection of either topology. Clones share the
/// underlying socket(s).
pub enum Conn {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

impl Clone for Conn {
    fn clone(&self) -> Conn {
        match self {
            Conn::Manager(c) => Conn::Manager(c.clone()),
            Conn::Multiplexed(c) => Conn::Multiplexed(c.clone()),
            Conn::Cluster(c) => Conn::Cluster(c.clone()),
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Manager(_) => "Conn::Manager",
            Conn::Multiplexed(_) => "Conn::Multiplexed",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A connection that can send a command to the master owning a slot: on a
/// cluster, keyless commands that read one node's keyspace (`SCAN`) must
/// be aimed at the node holding the slot of the keys sought.
pub trait Routed: ConnectionLike + Send {
    /// Sends `cmd` to the master that owns `slot` (on one node: the node).
    fn on_slot<'a>(&'a mut self, cmd: &'a Cmd, slot: u16) -> RedisFuture<'a, Value>;
}

impl Routed for Conn {
    fn on_slot<'a>(&'a mut self, cmd: &'a Cmd, slot: u16) -> RedisFuture<'a, Value> {
        match self {
            Conn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::new(slot, SlotAddr::Master),
                ));
                Box::pin(c.route_command(cmd.clone(), route))
            }
            other => other.req_packed_command(cmd),
        }
    }
}

impl Routed for MultiplexedConnection {
    fn on_slot<'a>(&'a mut self, cmd: &'a Cmd, _slot: u16) -> RedisFuture<'a, Value> {
        self.req_packed_command(cmd)
    }
}

impl Routed for ConnectionManager {
    fn on_slot<'a>(&'a mut self, cmd: &'a Cmd, _slot: u16) -> RedisFuture<'a, Value> {
        self.req_packed_command(cmd)
    }
}

/// One connection shared by every task of the process (clones are cheap
/// handles to it). Connects lazily on a single node: a Redis that is down at
/// start-up only makes requests fail until it is back. After a connection
/// error the next request reconnects once, within the connect limit, rather
/// than retrying for long: callers turn errors into quick 503s and clients
/// retry. A cluster connection learns the slot map in the background, as
/// lazily.
pub fn shared(topology: &Topology, limits: Limits) -> Result<Conn, RedisError> {
    match topology {
        Topology::Single(url) => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(limits.connect))
                .set_response_timeout(Some(limits.response))
                .set_number_of_retries(0);
            Ok(Conn::Manager(ConnectionManager::new_lazy_with_config(
                redis::Client::open(url.as_str())?,
                config,
            )?))
        }
        Topology::Cluster(nodes) => cluster(nodes, limits).map(Conn::Cluster),
    }
}

fn cluster(nodes: &[String], limits: Limits) -> Result<ClusterConnection, RedisError> {
    let client = Topology::cluster_client(nodes, limits)?;
    Ok(client.get_pending_async_connection_with_config(redis::cluster::ClusterConfig::default()))
}

/// Where a unit of work gets its connection (see the module doc): one
/// connection shared by every task of the process, [`shared`]'s, so a
/// checkout is a clone and costs no round trip.
#[derive(Clone, Debug)]
pub struct Pool(Conn);

impl Pool {
    pub fn new(topology: &Topology, limits: Limits) -> Result<Pool, RedisError> {
        shared(topology, limits).map(Pool)
    }

    /// A connection for one unit of work.
    pub fn get(&self) -> Conn {
        self.0.clone()
    }
}

/// A connection of its own, for commands that block server-side. On a
/// cluster it is a cluster connection of its own: a blocking read goes to
/// its slot's master, and follows the slot when it moves.
pub async fn dedicated(topology: &Topology, limits: Limits) -> Result<Conn, RedisError> {
    match topology {
        Topology::Single(url) => Ok(Conn::Multiplexed(
            redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection_with_config(&config(limits))
                .await?,
        )),
        Topology::Cluster(nodes) => cluster(nodes, limits).map(Conn::Cluster),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_url_is_one_node() {
        assert_eq!(
            Topology::parse("redis://127.0.0.1:6379/0").unwrap(),
            Topology::Single("redis://127.0.0.1:6379/0".into())
        );
        assert!(Topology::parse("nonsense://x").is_err());
    }

    #[test]
    fn a_cluster_url_lists_its_seed_nodes() {
        assert_eq!(
            Topology::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/").unwrap(),
            Topology::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ])
        );
        assert_eq!(
            Topology::parse("redis+cluster://u:p@h1:1,h2:2").unwrap(),
            Topology::Cluster(vec!["redis://u:p@h1:1".into(), "redis://u:p@h2:2".into()])
        );
        assert!(Topology::parse("redis+cluster://").is_err());
    }
}
