//! One Redis or a Redis Cluster behind one handle, so a scenario is written
//! once and run on both topologies, and [`Probe`]: a test's own view of the
//! queue's keys on either one, through a client independent of the
//! binaries' (a plain connection to the one server; redis-rs's cluster
//! client, routed by key slot, on a cluster).
//!
//! The probe reads what the scenarios assert on: pending entries of every
//! partition's stream, dead letters of every partition, and job records
//! counted on every master (a `SCAN` sees one node only).

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::streams::{StreamId, StreamRangeReply};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::{RedisCluster, RedisServer};

/// The Redis a scenario runs on.
pub enum Store {
    /// One `redis-server`, one partition (the default deployment).
    Single(RedisServer),
    /// A 3-master, 3-replica cluster, with `partitions` partitions.
    Cluster {
        cluster: RedisCluster,
        partitions: u16,
    },
}

impl Store {
    /// A single node, with the default single partition.
    pub fn single() -> Store {
        Store::Single(RedisServer::start())
    }

    /// A 3-master cluster (one replica each) with `partitions` partitions.
    pub fn cluster(partitions: u16) -> Store {
        Store::Cluster {
            cluster: RedisCluster::start(),
            partitions,
        }
    }

    /// `single` or `cluster`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Store::Single(_) => "single",
            Store::Cluster { .. } => "cluster",
        }
    }

    /// The `--redis-url` of every binary.
    pub fn url(&self) -> String {
        match self {
            Store::Single(r) => r.url(),
            Store::Cluster { cluster, .. } => cluster.url(),
        }
    }

    pub fn partitions(&self) -> u16 {
        match self {
            Store::Single(_) => 1,
            Store::Cluster { partitions, .. } => *partitions,
        }
    }

    /// The flags API, workers and jobctl must agree on besides the URL.
    pub fn queue_args(&self) -> Vec<String> {
        vec!["--partitions".into(), self.partitions().to_string()]
    }

    /// The key layout the binaries use in `ns`.
    pub fn keys(&self, ns: &str) -> shared::Keys {
        shared::Keys::with_partitions(ns, self.partitions())
    }

    /// A probe of this store's keys.
    pub async fn probe(&self) -> Probe {
        match self {
            Store::Single(r) => Probe::server(r).await,
            Store::Cluster { cluster, .. } => Probe::cluster(cluster).await,
        }
    }
}

/// `redis://` URLs of a cluster's live masters.
pub fn master_urls(cluster: &RedisCluster) -> Vec<String> {
    cluster
        .masters()
        .into_iter()
        .filter(|m| cluster.is_running(m.port))
        .map(|m| format!("redis://127.0.0.1:{}", m.port))
        .collect()
}

/// A test's connection to the queue's Redis, of either topology; commands
/// go through [`ConnectionLike`] like any redis-rs connection.
#[derive(Clone)]
pub enum Probe {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Probe {
    pub async fn server(redis: &RedisServer) -> Probe {
        Probe::Single(
            redis
                .client()
                .get_multiplexed_async_connection()
                .await
                .expect("redis connection"),
        )
    }

    /// Seeded with the live nodes only: a killed node in the seed list
    /// would only slow the first connect.
    pub async fn cluster(cluster: &RedisCluster) -> Probe {
        let seeds: Vec<String> = cluster
            .live_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        Probe::Cluster(
            ClusterClient::builder(seeds)
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(Duration::from_secs(5))
                .build()
                .expect("cluster client")
                .get_async_connection()
                .await
                .expect("cluster connection"),
        )
    }

    /// Entries of `stream` delivered to group `workers` and not yet
    /// acknowledged; 0 for a stream (or group) that does not exist.
    pub async fn pending(&mut self, stream: &str) -> usize {
        let exists: bool = redis::cmd("EXISTS")
            .arg(stream)
            .query_async(self)
            .await
            .expect("EXISTS");
        if !exists {
            return 0;
        }
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(self)
            .await
            .expect("XINFO GROUPS");
        if matches!(&groups, Value::Array(g) if g.is_empty()) {
            return 0;
        }
        let reply: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
            .arg(stream)
            .arg(shared::queue::keys::GROUP)
            .query_async(self)
            .await
            .unwrap_or_else(|e| panic!("XPENDING {stream}: {e}"));
        reply.count()
    }

    /// Pending entries of `queue` (a model, or `.control`/`.train`) in each
    /// partition, in partition order.
    pub async fn pending_per_partition(&mut self, keys: &shared::Keys, queue: &str) -> Vec<usize> {
        let mut out = Vec::new();
        for p in keys.all_partitions() {
            out.push(self.pending(&keys.stream(queue, p)).await);
        }
        out
    }

    /// [`Probe::pending_per_partition`] once it reads all zeros, or as it
    /// reads at `timeout` (the workers did not drain).
    pub async fn drained(
        &mut self,
        keys: &shared::Keys,
        queue: &str,
        timeout: std::time::Duration,
    ) -> Vec<usize> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let pending = self.pending_per_partition(keys, queue).await;
            if pending.iter().all(|&n| n == 0) || std::time::Instant::now() > deadline {
                return pending;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Every dead letter of every partition, each with its partition.
    pub async fn dead_letters(&mut self, keys: &shared::Keys) -> Vec<(u16, StreamId)> {
        let mut out = Vec::new();
        for p in keys.all_partitions() {
            let r: StreamRangeReply = redis::cmd("XRANGE")
                .arg(keys.dead_letters(p))
                .arg("-")
                .arg("+")
                .query_async(self)
                .await
                .expect("XRANGE dead letters");
            out.extend(r.ids.into_iter().map(|e| (p, e)));
        }
        out
    }

    /// One field of a job's record.
    pub async fn job_field(
        &mut self,
        keys: &shared::Keys,
        id: &str,
        field: &str,
    ) -> Option<String> {
        let id = uuid::Uuid::parse_str(id).expect("a job id");
        redis::cmd("HGET")
            .arg(keys.job(&id))
            .arg(field)
            .query_async(self)
            .await
            .expect("HGET")
    }
}

/// A text field of a stream entry (dead letters carry text fields).
pub fn entry_text(entry: &StreamId, field: &str) -> String {
    match entry.map.get(field) {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("stream entry {}: field {field} is {other:?}", entry.id),
    }
}

/// How many keys match `pattern` on all of `nodes` together (`SCAN` on
/// each: on a cluster a node sees only its own slots).
pub fn count_keys(nodes: &[String], pattern: &str) -> usize {
    let mut n = 0;
    for url in nodes {
        let mut con = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut con)
                .unwrap_or_else(|e| panic!("SCAN on {url}: {e}"));
            n += batch.len();
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    n
}

impl ConnectionLike for Probe {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Probe::Single(c) => c.req_packed_command(cmd),
            Probe::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Probe::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Probe::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Probe::Single(c) => c.get_db(),
            Probe::Cluster(c) => c.get_db(),
        }
    }
}
