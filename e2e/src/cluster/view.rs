//! What one cluster node says about the cluster: `CLUSTER NODES` parsed into
//! [`NodeInfo`], `CLUSTER INFO` and `INFO replication` as key/value maps, and
//! the short-timeout plain connections used to ask. Nothing here changes the
//! cluster; [`super::RedisCluster`] builds its waits on these probes.

use std::collections::HashMap;
use std::time::Duration;

/// A node's role in the cluster, as `CLUSTER NODES` flags it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Master,
    Replica,
}

/// One line of `CLUSTER NODES`: one node as seen by the node that was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The 40-character node id (stable across restarts: it lives in
    /// nodes.conf).
    pub id: String,
    pub port: u16,
    pub role: Role,
    /// The id of the master this node replicates, for a replica.
    pub master_id: Option<String>,
    /// Owned slot ranges, inclusive, in the order listed.
    pub slots: Vec<(u16, u16)>,
    /// Slots being migrated or imported, as listed (`[5462->-<id>]`,
    /// `[5462-<-<id>]`); only a node's own line shows them.
    pub open_slots: Vec<String>,
    /// The raw flags (`myself`, `master`, `slave`, `fail`, `fail?`, ...).
    pub flags: Vec<String>,
    /// The cluster-bus link state is `connected`.
    pub connected: bool,
    pub config_epoch: u64,
}

impl NodeInfo {
    pub fn is_master(&self) -> bool {
        self.role == Role::Master
    }

    /// Flagged `fail` (agreed by a majority) or `fail?` (suspected by the
    /// node asked).
    pub fn is_failing(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }

    pub fn slot_count(&self) -> u32 {
        self.slots
            .iter()
            .map(|&(a, b)| u32::from(b) - u32::from(a) + 1)
            .sum()
    }

    pub fn owns_slot(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// Parses `CLUSTER NODES` output. Lines that do not parse are skipped: a
/// node in handshake has no usable address yet, and callers treat a view
/// that misses a node as not converged.
pub(super) fn parse_cluster_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines().filter_map(parse_node_line).collect()
}

fn parse_node_line(line: &str) -> Option<NodeInfo> {
    let mut f = line.split_whitespace();
    let id = f.next()?.to_owned();
    // ip:port@cport[,hostname]
    let addr = f.next()?;
    let port = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
    let flags: Vec<String> = f.next()?.split(',').map(str::to_owned).collect();
    let role = if flags.iter().any(|x| x == "master") {
        Role::Master
    } else if flags.iter().any(|x| x == "slave") {
        Role::Replica
    } else {
        return None;
    };
    let master_id = Some(f.next()?).filter(|m| *m != "-").map(str::to_owned);
    let _ping_sent = f.next()?;
    let _pong_recv = f.next()?;
    let config_epoch = f.next()?.parse().ok()?;
    let connected = f.next()? == "connected";
    let (open, owned): (Vec<&str>, Vec<&str>) = f.partition(|s| s.starts_with('['));
    let slots = owned
        .iter()
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|x| (x, x)),
        })
        .collect();
    let open_slots = open.into_iter().map(str::to_owned).collect();
    Some(NodeInfo {
        id,
        port,
        role,
        master_id,
        slots,
        open_slots,
        flags,
        connected,
        config_epoch,
    })
}

/// Parses `INFO` or `CLUSTER INFO` output into key/value pairs.
pub(super) fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A plain (non-cluster) connection to one node. Short timeouts: a probe of
/// a killed or starting node must fail fast, not stall a wait loop.
pub(super) fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let con = client.get_connection_with_timeout(Duration::from_millis(500))?;
    con.set_read_timeout(Some(Duration::from_secs(2)))?;
    con.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(con)
}

/// Runs one command with string arguments on one node and returns its reply
/// as text (every probe used here replies with a bulk string or an integer).
pub(super) fn query(port: u16, args: &[&str]) -> redis::RedisResult<String> {
    let mut con = connect(port)?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let v: redis::Value = cmd.query(&mut con)?;
    Ok(match v {
        redis::Value::Int(i) => i.to_string(),
        other => redis::from_redis_value::<String>(other)?,
    })
}

/// `CLUSTER NODES` as seen by `port`.
pub(super) fn cluster_nodes(port: u16) -> redis::RedisResult<Vec<NodeInfo>> {
    query(port, &["CLUSTER", "NODES"]).map(|t| parse_cluster_nodes(&t))
}

/// `CLUSTER INFO` of `port`.
pub(super) fn cluster_info(port: u16) -> redis::RedisResult<HashMap<String, String>> {
    query(port, &["CLUSTER", "INFO"]).map(|t| parse_info(&t))
}

/// `INFO replication` of `port`.
pub(super) fn replication_info(port: u16) -> redis::RedisResult<HashMap<String, String>> {
    query(port, &["INFO", "replication"]).map(|t| parse_info(&t))
}

/// Per node, sorted by id: id, role, master id, sorted slot ranges, failed.
pub(super) type Signature = Vec<(String, Role, Option<String>, Vec<(u16, u16)>, bool)>;

/// What must be equal between two nodes' views for them to agree: every
/// node's id, role, master and slots, and whether it is failed. Pings,
/// epochs and `fail?` (a local suspicion) are left out as they differ
/// between honest, converged nodes.
pub(super) fn view_signature(view: &[NodeInfo]) -> Signature {
    let mut sig: Vec<_> = view
        .iter()
        .map(|n| {
            let mut slots = n.slots.clone();
            slots.sort_unstable();
            (
                n.id.clone(),
                n.role,
                n.master_id.clone(),
                slots,
                n.flags.iter().any(|f| f == "fail"),
            )
        })
        .collect();
    sig.sort();
    sig
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
0117cce2eab7acd22ab4899d4d695fd86b25e323 127.0.0.1:21002@31002 myself,master - 0 1796169670000 2 connected 5461-10922 [5462->-cbd7334555c9f883f348e9ea53cb02b1fcc9311a]
e694cb38302bad432927a66139d7df3171da61a0 127.0.0.1:21001@31001 master,fail - 1796169668563 1796169668055 1 disconnected
1e6cd1ff7fb9ae5c80c71656fc6461661ba017ad 127.0.0.1:21006@31006 master - 0 1796169670095 7 connected 0-5460 16000
490216f5c307109da60a66ffa909aa49b1e33403 127.0.0.1:21004@31004 slave 0117cce2eab7acd22ab4899d4d695fd86b25e323 0 1796169670507 2 connected
";

    #[test]
    fn parses_cluster_nodes() {
        let v = parse_cluster_nodes(NODES);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].port, 21002);
        assert!(v[0].is_master() && v[0].flags.contains(&"myself".to_owned()));
        assert_eq!(v[0].slots, vec![(5461, 10922)]);
        assert_eq!(v[0].slot_count(), 5462);
        assert_eq!(
            v[0].open_slots,
            vec!["[5462->-cbd7334555c9f883f348e9ea53cb02b1fcc9311a]"]
        );
        assert!(v[1].is_failing() && !v[1].connected && v[1].slots.is_empty());
        assert_eq!(v[2].slots, vec![(0, 5460), (16000, 16000)]);
        assert!(v[2].owns_slot(16000) && !v[2].owns_slot(5461));
        assert_eq!(v[3].role, Role::Replica);
        assert_eq!(v[3].master_id.as_deref(), Some(v[0].id.as_str()));
        assert_eq!(v[2].config_epoch, 7);
    }

    #[test]
    fn parses_info() {
        let i = parse_info("# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n");
        assert_eq!(i["role"], "slave");
        assert_eq!(i["master_link_status"], "up");
    }
}
