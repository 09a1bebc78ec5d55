//! A real local Redis Cluster for tests: `redis-server` processes in cluster
//! mode on free loopback ports, joined by `redis-cli --cluster create`, with
//! the faults and slot movements a test needs (SIGKILL, restart on the same
//! port and nodes.conf, failover wait, reshard and rebalance while load
//! runs) and introspection of who owns which slot.
//!
//! Nodes are named by their port. Every process dies with the handle; each
//! node's data directory (holding nodes.conf) is a temp dir, on tmpfs where
//! there is one, removed on drop; logs stay in
//! `target/e2e-logs/cluster-<pid>-<n>/` (one file per node, one per
//! `redis-cli` run).

mod cli;
mod node;
mod view;
mod waits;

pub use cli::ReshardRun;
pub use view::{NodeInfo, Role};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use node::Node;

/// Hash slots in a Redis Cluster.
pub const SLOTS: u32 = 16384;

/// The shape and timing of a cluster; [`ClusterBuilder::start`] starts it.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    masters: usize,
    replicas: usize,
    node_timeout: Duration,
    replica_migration: bool,
    ready_timeout: Duration,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            masters: 3,
            replicas: 1,
            // Short, so a killed master is detected and replaced in about
            // two seconds instead of Redis's default fifteen.
            node_timeout: Duration::from_millis(1000),
            replica_migration: false,
            ready_timeout: Duration::from_secs(20),
        }
    }
}

impl ClusterBuilder {
    /// Masters (at least 3: `redis-cli --cluster create` refuses fewer).
    pub fn masters(mut self, n: usize) -> Self {
        self.masters = n;
        self
    }

    /// Replicas per master.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// `cluster-node-timeout`: how long a node may be unreachable before it
    /// is suspected failing.
    pub fn node_timeout(mut self, d: Duration) -> Self {
        self.node_timeout = d;
        self
    }

    /// `cluster-allow-replica-migration` (off by default: a replica that
    /// moves to another master on its own would change the topology under a
    /// test's assertions).
    pub fn replica_migration(mut self, on: bool) -> Self {
        self.replica_migration = on;
        self
    }

    /// How long to wait for the cluster to be healthy (after start, restart
    /// or a slot move) before panicking.
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }

    /// Starts the nodes, joins them and waits until the cluster is healthy
    /// (see [`RedisCluster::wait_healthy`]).
    pub fn start(self) -> RedisCluster {
        assert!(
            self.masters >= 3,
            "a Redis Cluster needs at least 3 masters"
        );
        static N: AtomicU64 = AtomicU64::new(0);
        let tag = format!(
            "cluster-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let root = data_root().join(format!("e2e-{tag}"));
        let _ = std::fs::remove_dir_all(&root);
        let logs = crate::log_dir().join(&tag);
        for d in [&root, &logs] {
            std::fs::create_dir_all(d)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        }
        let mut cluster = RedisCluster {
            params: self,
            root,
            logs,
            nodes: Vec::new(),
        };
        let total = cluster.params.masters * (1 + cluster.params.replicas);
        let mut taken = HashSet::new();
        for _ in 0..total {
            let node = node::start_node(&cluster.root, &cluster.logs, &cluster.params, &mut taken);
            cluster.nodes.push(node);
        }
        cli::ReshardRun::spawn(
            &cluster.logs,
            "create",
            &cli::create_args(&cluster.ports(), cluster.params.replicas),
        )
        .wait();
        cluster.wait_healthy();
        cluster
    }
}

/// The outcome of [`RedisCluster::wait_failover`].
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// The replica now serving the killed master's slots.
    pub new_master: u16,
    /// From the SIGKILL until every live node agrees on the new master and
    /// reports `cluster_state:ok`.
    pub took: Duration,
}

/// A running local Redis Cluster (see the module docs).
pub struct RedisCluster {
    params: ClusterBuilder,
    root: PathBuf,
    logs: PathBuf,
    nodes: Vec<Node>,
}

impl RedisCluster {
    /// 3 masters with one replica each, `cluster-node-timeout` 1000 ms.
    pub fn start() -> RedisCluster {
        ClusterBuilder::default().start()
    }

    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...` with every node.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    /// `redis://127.0.0.1:P` for every node, as `ClusterClient::new` takes.
    pub fn node_urls(&self) -> Vec<String> {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Every node's port, in start order (running or not).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The ports of the nodes whose process runs.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    pub fn is_running(&self, port: u16) -> bool {
        self.node(port).child.is_some()
    }

    pub fn pid(&self, port: u16) -> Option<u32> {
        self.node(port).child.as_ref().map(Child::id)
    }

    pub fn node_id(&self, port: u16) -> &str {
        &self.node(port).id
    }

    /// The directory with every node's log and every redis-cli run's output.
    pub fn logs_dir(&self) -> &Path {
        &self.logs
    }

    pub fn node_log(&self, port: u16) -> &Path {
        &self.node(port).log
    }

    // ------------------------------------------------------- introspection

    /// Every node as the first live node that answers sees it, by port.
    /// Right after a change the nodes may still disagree: wait with
    /// [`RedisCluster::wait_healthy`] first when that matters.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut last = String::from("no node is running");
        for port in self.live_ports() {
            match view::cluster_nodes(port) {
                Ok(mut v) => {
                    v.sort_by_key(|n| n.port);
                    return v;
                }
                Err(e) => last = format!("{port}: {e}"),
            }
        }
        panic!("no cluster node answers CLUSTER NODES ({last})")
    }

    /// The masters not flagged failed (`fail`), by port.
    pub fn masters(&self) -> Vec<NodeInfo> {
        self.nodes()
            .into_iter()
            .filter(|n| n.is_master() && !n.flags.iter().any(|f| f == "fail"))
            .collect()
    }

    /// The replicas of the master on `master_port`, failed ones included.
    pub fn replicas_of(&self, master_port: u16) -> Vec<NodeInfo> {
        let id = self.node_id(master_port);
        self.nodes()
            .into_iter()
            .filter(|n| n.master_id.as_deref() == Some(id))
            .collect()
    }

    /// The port of the master that owns `slot`, in [`RedisCluster::nodes`]'s
    /// view.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        let view = self.nodes();
        view.iter()
            .find(|n| n.is_master() && n.owns_slot(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("slot {slot} has no master; nodes: {view:#?}"))
    }

    /// The hash slot of `key`, as the server computes it (`CLUSTER KEYSLOT`:
    /// hash tags included).
    pub fn key_slot(&self, key: &str) -> u16 {
        let mut last = String::from("no node is running");
        for port in self.live_ports() {
            match view::query(port, &["CLUSTER", "KEYSLOT", key]).map(|s| s.parse()) {
                Ok(Ok(slot)) => return slot,
                Ok(Err(e)) => last = format!("{port}: {e}"),
                Err(e) => last = format!("{port}: {e}"),
            }
        }
        panic!("CLUSTER KEYSLOT {key} failed ({last})")
    }

    pub fn master_of_key(&self, key: &str) -> u16 {
        self.master_of_slot(self.key_slot(key))
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }
}

/// Where the nodes' directories go: tmpfs when there is one. A cluster node
/// fsyncs nodes.conf on every configuration change (start, epoch bump,
/// failover, each slot moved), and on a disk shared with builds one fsync
/// has stalled a node for seconds: longer than `cluster-node-timeout`, so
/// its peers marked it failed.
fn data_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
