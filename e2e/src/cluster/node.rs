//! The cluster's `redis-server` processes: picking a port pair (client and
//! bus) no one holds, starting a node with the flags that make failover
//! fast, and the faults a test inflicts on one (SIGKILL, restart on the same
//! port and nodes.conf).

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{ClusterBuilder, RedisCluster, view};

/// Redis fixes a node's cluster-bus port at its port + 10000.
const BUS_OFFSET: u16 = 10000;

/// One `redis-server` of the cluster.
pub(super) struct Node {
    pub(super) port: u16,
    /// Fixed at first start and kept in nodes.conf across restarts.
    pub(super) id: String,
    dir: PathBuf,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
    pub(super) killed: Option<Killed>,
}

/// What a node was when [`RedisCluster::kill`] killed it.
pub(super) struct Killed {
    pub(super) at: Instant,
    /// Set if it was a master.
    pub(super) master: Option<KilledMaster>,
}

pub(super) struct KilledMaster {
    pub(super) slots: Vec<(u16, u16)>,
    /// Its replicas that were running.
    pub(super) replicas: Vec<u16>,
}

impl RedisCluster {
    /// SIGKILL the node on `port`: no shutdown, no goodbye to the cluster.
    pub fn kill(&mut self, port: u16) {
        assert!(self.is_running(port), "node {port} is not running");
        let id = self.node_id(port).to_owned();
        let view = self.nodes();
        let master = view.iter().find(|n| n.id == id && n.is_master()).map(|n| {
            let replicas = view
                .iter()
                .filter(|r| r.master_id.as_deref() == Some(&id) && self.is_running(r.port))
                .map(|r| r.port)
                .collect();
            KilledMaster {
                slots: n.slots.clone(),
                replicas,
            }
        });
        let node = self.node_mut(port);
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        node.killed = Some(Killed {
            at: Instant::now(),
            master,
        });
    }

    /// Starts the node on `port` again (killing it first if it runs), on the
    /// same port and directory: it keeps its id and nodes.conf and rejoins
    /// on its own. Returns once it answers PING; see
    /// [`RedisCluster::wait_rejoined`].
    pub fn restart(&mut self, port: u16) {
        if self.is_running(port) {
            self.kill(port);
        }
        let params = self.params.clone();
        let node = self.node_mut(port);
        if let Err(e) = spawn_node(node, &params) {
            panic!(
                "node {port} did not restart: {e}; log {}",
                node.log.display()
            );
        }
        node.killed = None;
    }
}

/// A new node on a free port; another process may take a port between
/// the check and the bind, so a node that fails to start is retried on
/// another one.
pub(super) fn start_node(
    root: &Path,
    logs: &Path,
    params: &ClusterBuilder,
    taken: &mut HashSet<u16>,
) -> Node {
    let mut last = String::new();
    for _ in 0..5 {
        let port = pick_port(taken);
        taken.insert(port);
        let dir = root.join(format!("node-{port}"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        let mut node = Node {
            port,
            id: String::new(),
            dir,
            log: logs.join(format!("node-{port}.log")),
            child: None,
            killed: None,
        };
        match spawn_node(&mut node, params)
            .and_then(|()| view::query(port, &["CLUSTER", "MYID"]).map_err(|e| e.to_string()))
        {
            Ok(id) => {
                node.id = id;
                return node;
            }
            Err(e) => {
                last = format!("port {port}: {e} (log {})", node.log.display());
                if let Some(mut c) = node.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }
    panic!("cannot start a cluster node: {last}")
}

/// Starts `node`'s redis-server and waits until it answers PING; an `Err`
/// says why not (the process exited, e.g. its port was taken, or it hung).
fn spawn_node(node: &mut Node, params: &ClusterBuilder) -> Result<(), String> {
    use std::io::Write;
    // Appended, so a restarted node's log follows its first life's.
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .map_err(|e| format!("cannot open {}: {e}", node.log.display()))?;
    let _ = writeln!(log, "----- e2e harness: starting node {}", node.port);
    let err = log.try_clone().map_err(|e| format!("log handle: {e}"))?;
    let timeout_ms = params.node_timeout.as_millis().to_string();
    let migration = if params.replica_migration {
        "yes"
    } else {
        "no"
    };
    let child = Command::new("redis-server")
        .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(&node.dir)
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args(["--cluster-node-timeout", &timeout_ms])
        // A replica whose link has been down for a while still stands for
        // election (else a killed master may never be replaced).
        .args(["--cluster-replica-validity-factor", "0"])
        .args(["--cluster-allow-replica-migration", migration])
        // Diskless full sync starts at once instead of waiting 5 s for more
        // replicas: a new or rejoining replica is linked up in milliseconds.
        .args(["--repl-diskless-sync-delay", "0"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("cannot start redis-server: {e} (run scripts/setup)"))?;
    node.child = Some(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if view::query(node.port, &["PING"]).is_ok_and(|r| r == "PONG") {
            return Ok(());
        }
        let exited = node
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            node.child = None;
            return Err(format!("redis-server exited ({status})"));
        }
        if Instant::now() > deadline {
            return Err("redis-server did not answer PING within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
/// A port P with P and its bus port P + 10000 both free on 127.0.0.1.
/// Drawn from 20000..22500 (bus 30000..32500): below the kernel's ephemeral
/// range (32768 and up), so no outgoing connection is handed either port
/// meanwhile, and clear of the ports [`crate::free_port`] gives out. The
/// start point depends on the pid, so concurrent test processes start apart.
fn pick_port(taken: &HashSet<u16>) -> u16 {
    const LO: u32 = 20000;
    const SPAN: u32 = 2500;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    let start = std::process::id().wrapping_mul(97) % SPAN;
    let offset = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
    (0..SPAN)
        .filter_map(|i| u16::try_from(LO + (start + offset + i) % SPAN).ok())
        .find(|&p| !taken.contains(&p) && free(p) && free(p + BUS_OFFSET))
        .unwrap_or_else(|| panic!("no free port pair P, P+{BUS_OFFSET} in {LO}..{}", LO + SPAN))
}
