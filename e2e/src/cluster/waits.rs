//! Waiting for the cluster to be in a state a test can rely on: healthy
//! (every live node agreeing, every slot served, every replica linked),
//! failed over after a kill, rejoined after a restart, or replicated up to
//! now. Each wait polls the nodes and panics after a deadline with what was
//! still wrong and where the node logs are.

use std::time::{Duration, Instant};

use super::{Failover, NodeInfo, RedisCluster, SLOTS, view};

impl RedisCluster {
    /// Waits until every live node reports `cluster_state:ok`, all 16384
    /// slots assigned and served, knows every node, agrees with the others
    /// on roles, masters and slots, and sees no live node as failing; and
    /// every live replica's link to its master is up. Panics after the
    /// builder's `ready_timeout`, naming what was still wrong.
    pub fn wait_healthy(&self) {
        self.wait_for("healthy", self.params.ready_timeout, || self.health());
    }

    /// Waits until the master killed with [`RedisCluster::kill`] has been
    /// replaced: one of its replicas reports `role:master`, every live node
    /// sees that replica as the master of all the killed master's slots,
    /// and every live node reports `cluster_state:ok`.
    pub fn wait_failover(&self, killed_master: u16) -> Failover {
        let node = self.node(killed_master);
        let killed = node
            .killed
            .as_ref()
            .unwrap_or_else(|| panic!("node {killed_master} was not killed with kill()"));
        let Some(super::node::KilledMaster { slots, replicas }) = &killed.master else {
            panic!("node {killed_master} was a replica when killed: nothing fails over")
        };
        // Redis promotes no replica of a master that served no slot.
        assert!(
            !slots.is_empty() && !replicas.is_empty(),
            "node {killed_master} had slots {slots:?} and live replicas {replicas:?}: \
             nothing to fail over"
        );
        let timeout = self.params.ready_timeout + self.params.node_timeout * 4;
        let new_master = self.wait_for("failed over", timeout, || {
            let promoted = replicas
                .iter()
                .copied()
                .filter(|&r| self.is_running(r))
                .find(|&r| {
                    view::replication_info(r)
                        .is_ok_and(|i| i.get("role").is_some_and(|r| r == "master"))
                })
                .ok_or_else(|| format!("no replica of {killed_master} ({replicas:?}) is master"))?;
            let id = self.node_id(promoted);
            for port in self.live_ports() {
                let info = view::cluster_info(port).map_err(|e| format!("{port}: {e}"))?;
                if info.get("cluster_state").map(String::as_str) != Some("ok") {
                    return Err(format!("{port}: cluster_state is not ok"));
                }
                let v = view::cluster_nodes(port).map_err(|e| format!("{port}: {e}"))?;
                let serves_all = v.iter().any(|n| {
                    n.id == id
                        && n.is_master()
                        && slots.iter().all(|&(a, b)| (a..=b).all(|s| n.owns_slot(s)))
                });
                if !serves_all {
                    return Err(format!(
                        "{port} does not yet see {promoted} serving {slots:?}"
                    ));
                }
            }
            Ok(promoted)
        });
        Failover {
            new_master,
            took: killed.at.elapsed(),
        }
    }

    /// Waits until the cluster is healthy with the node on `port` in it, and
    /// returns that node as it sees itself (a killed master restarted after
    /// its failover comes back as a replica of the promoted one).
    pub fn wait_rejoined(&self, port: u16) -> NodeInfo {
        assert!(self.is_running(port), "node {port} is not running");
        self.wait_healthy();
        view::cluster_nodes(port)
            .unwrap_or_else(|e| panic!("node {port}: CLUSTER NODES failed: {e}"))
            .into_iter()
            .find(|n| n.flags.iter().any(|f| f == "myself"))
            .unwrap_or_else(|| panic!("node {port} does not list itself"))
    }

    /// Waits until every live replica of `master_port` has received all its
    /// master's writes so far, so a test can kill the master without losing
    /// what it wrote (replication is asynchronous).
    pub fn sync_replicas(&self, master_port: u16) {
        let want: Vec<u16> = self
            .replicas_of(master_port)
            .iter()
            .map(|n| n.port)
            .filter(|&p| self.is_running(p))
            .collect();
        self.wait_for("replicated", Duration::from_secs(10), || {
            let info = view::replication_info(master_port).map_err(|e| e.to_string())?;
            let offset: u64 = info
                .get("master_repl_offset")
                .and_then(|o| o.parse().ok())
                .ok_or("no master_repl_offset")?;
            for p in &want {
                // slaveN:ip=127.0.0.1,port=P,state=online,offset=O,lag=0
                let caught_up =
                    info.iter()
                        .filter(|(k, _)| k.starts_with("slave"))
                        .any(|(_, v)| {
                            v.contains(&format!("port={p},"))
                                && v.contains("state=online")
                                && v.split(',')
                                    .filter_map(|f| f.strip_prefix("offset="))
                                    .any(|o| o.parse().is_ok_and(|o: u64| o >= offset))
                        });
                if !caught_up {
                    return Err(format!("replica {p} is behind offset {offset}"));
                }
            }
            Ok(())
        });
    }

    fn health(&self) -> Result<(), String> {
        let live = self.live_ports();
        let total = self.nodes.len().to_string();
        let slots = SLOTS.to_string();
        let mut first_view: Option<(u16, _)> = None;
        for &port in &live {
            let info = view::cluster_info(port).map_err(|e| format!("{port}: {e}"))?;
            for (key, want) in [
                ("cluster_state", "ok"),
                ("cluster_slots_assigned", slots.as_str()),
                ("cluster_slots_ok", slots.as_str()),
                ("cluster_known_nodes", total.as_str()),
            ] {
                let got = info.get(key).map(String::as_str).unwrap_or("-");
                if got != want {
                    return Err(format!("{port}: {key}:{got}, want {want}"));
                }
            }
            let repl = view::replication_info(port).map_err(|e| format!("{port}: {e}"))?;
            if repl.get("role").map(String::as_str) == Some("slave") {
                let link = repl.get("master_link_status").map(String::as_str);
                if link != Some("up") {
                    return Err(format!("{port}: replica's master_link_status is {link:?}"));
                }
            }
            let nodes = view::cluster_nodes(port).map_err(|e| format!("{port}: {e}"))?;
            if let Some(n) = nodes
                .iter()
                .find(|n| live.contains(&n.port) && n.is_failing())
            {
                return Err(format!("{port} sees live node {} as {:?}", n.port, n.flags));
            }
            // A slot left MIGRATING/IMPORTING (a reshard that died) makes
            // redis-cli refuse the next reshard; only the node itself lists it.
            if let Some(me) = nodes.iter().find(|n| !n.open_slots.is_empty()) {
                return Err(format!("{} has open slots {:?}", me.port, me.open_slots));
            }
            let sig = view::view_signature(&nodes);
            match &first_view {
                None => first_view = Some((port, sig)),
                Some((p0, s0)) if *s0 != sig => {
                    return Err(format!("{port} and {p0} disagree about the cluster"));
                }
                Some(_) => {}
            }
        }
        if live.is_empty() {
            return Err("no node is running".into());
        }
        Ok(())
    }

    fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match probe() {
                Ok(v) => return v,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25))
                }
                Err(why) => panic!(
                    "redis cluster not {what} within {timeout:?}: {why}; node logs in {}",
                    self.logs.display()
                ),
            }
        }
    }
}
