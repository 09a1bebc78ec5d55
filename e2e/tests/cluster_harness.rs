//! The local Redis Cluster harness works as the cluster tests will use it:
//! keys spread over every master through redis-rs's async cluster client; a
//! master SIGKILLed, replaced by its replica and rejoining as a replica;
//! slots resharded and rebalanced under a write loop without losing a key.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use e2e::RedisCluster;
use e2e::cluster::{Role, SLOTS};
use redis::AsyncTypedCommands;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// A failover with `cluster-node-timeout` 1000 ms takes about two seconds
/// here (detection, FAIL agreement, a 0.5-1 s election delay); this bound
/// leaves room for a loaded machine without hiding a stuck election.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

async fn connect(cluster: &RedisCluster) -> ClusterConnection {
    ClusterClient::builder(cluster.node_urls())
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_secs(2))
        .build()
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("cluster connection")
}

/// `count` keys named `{prefix}{i}`, landing in many slots.
fn keys(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

async fn write_all(con: &mut ClusterConnection, keys: &[String], value: &str) {
    for k in keys {
        con.set(k, format!("{value}:{k}"))
            .await
            .unwrap_or_else(|e| panic!("SET {k}: {e}"));
    }
}

async fn assert_all(con: &mut ClusterConnection, keys: &[String], value: &str) {
    for k in keys {
        let got = con.get(k).await.unwrap_or_else(|e| panic!("GET {k}: {e}"));
        assert_eq!(got.as_deref(), Some(format!("{value}:{k}").as_str()), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_rejoin() {
    let t = Instant::now();
    let mut cluster = RedisCluster::start();
    println!("cluster healthy after {:?}", t.elapsed());
    let ports = cluster.ports();
    assert_eq!(ports.len(), 6);
    assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
    assert_eq!(cluster.url().matches(',').count(), 5, "{}", cluster.url());
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "{masters:#?}");
    assert_eq!(masters.iter().map(|m| m.slot_count()).sum::<u32>(), SLOTS);
    for m in &masters {
        let replicas = cluster.replicas_of(m.port);
        assert_eq!(replicas.len(), 1, "replicas of {}: {replicas:#?}", m.port);
        assert_eq!(replicas[0].role, Role::Replica);
    }

    let mut con = connect(&cluster).await;
    let keys = keys("harness:", 60);
    write_all(&mut con, &keys, "v1").await;
    assert_all(&mut con, &keys, "v1").await;
    let owners: HashSet<u16> = keys.iter().map(|k| cluster.master_of_key(k)).collect();
    assert_eq!(owners.len(), 3, "the keys should span every master");
    let slots: HashSet<u16> = keys.iter().map(|k| cluster.key_slot(k)).collect();
    assert!(slots.len() > 50, "keys share slots: {}", slots.len());

    let victim = cluster.master_of_key(&keys[0]);
    let replica = cluster.replicas_of(victim)[0].port;
    // Replication is asynchronous: make sure the replica has every write
    // before the master dies, so a missing key below is a harness bug.
    cluster.sync_replicas(victim);
    cluster.kill(victim);
    let failover = tokio::task::block_in_place(|| cluster.wait_failover(victim));
    println!(
        "failover of {victim}: {replica} promoted after {:?}",
        failover.took
    );
    assert_eq!(failover.new_master, replica);
    assert!(
        failover.took < FAILOVER_BOUND,
        "failover took {:?}",
        failover.took
    );
    assert_eq!(cluster.master_of_key(&keys[0]), replica);

    // The same client, which still has a connection to the dead master.
    let t = Instant::now();
    assert_all(&mut con, &keys, "v1").await;
    println!("first reads after the failover took {:?}", t.elapsed());
    write_all(&mut con, &keys, "v2").await;
    assert_all(&mut con, &keys, "v2").await;

    let t = Instant::now();
    cluster.restart(victim);
    let back = tokio::task::block_in_place(|| cluster.wait_rejoined(victim));
    println!("{victim} rejoined after {:?}", t.elapsed());
    assert_eq!(back.role, Role::Replica, "{back:#?}");
    assert_eq!(back.master_id.as_deref(), Some(cluster.node_id(replica)));
    assert_eq!(cluster.replicas_of(replica).len(), 1);
    assert_all(&mut con, &keys, "v2").await;
}

/// The slot of a key with hash tag `{tag}`: CRC16/XMODEM mod 16384, as
/// Redis computes it (checked against `CLUSTER KEYSLOT` below). Local, so a
/// test can search thousands of tags for ones landing in given slots.
fn tag_slot(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for &b in tag.as_bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// One hash tag per slot in `slots`, in that order.
fn tags_for(slots: &[u16]) -> Vec<String> {
    // slot -> index in `slots`, so each candidate tag is one lookup.
    let mut wanted = vec![None; SLOTS as usize];
    for (i, &s) in slots.iter().enumerate() {
        wanted[usize::from(s)] = Some(i);
    }
    let mut found: Vec<Option<String>> = vec![None; slots.len()];
    let mut missing = slots.len();
    for n in 0.. {
        let tag = format!("t{n}");
        if let Some(i) = wanted[usize::from(tag_slot(&tag))]
            && found[i].is_none()
        {
            found[i] = Some(tag);
            missing -= 1;
            if missing == 0 {
                break;
            }
        }
    }
    found.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_and_rebalance_under_writes() {
    const MOVED: u32 = 300;
    let cluster = RedisCluster::start();
    let masters = cluster.masters();
    let (from, to) = (masters[0].clone(), masters[1].clone());
    // redis-cli reshard takes a single source's lowest slots first: every
    // key below lives in a slot that moves.
    let (lo, _) = from.slots[0];
    let moving: Vec<u16> = (lo..).take(MOVED as usize).collect();
    assert!(moving.iter().all(|&s| from.owns_slot(s)), "{from:#?}");
    let tags = tags_for(&moving);
    for t in tags.iter().step_by(37) {
        assert_eq!(tag_slot(t), cluster.key_slot(&format!("{{{t}}}:x")), "{t}");
    }
    let mut con = connect(&cluster).await;
    let seeded: Vec<String> = tags.iter().map(|t| format!("{{{t}}}:seed")).collect();
    write_all(&mut con, &seeded, "w").await;

    // Writes and reads go on while redis-cli moves the slots: each seeded
    // key is MIGRATEd under them, and a command for a slot in flight is
    // redirected with ASK (or MOVED once it has moved).
    let mut run = cluster.spawn_reshard(from.port, to.port, MOVED);
    let mut written = Vec::new();
    let mut during = 0;
    while !run.is_finished() || written.len() < tags.len() {
        let i = written.len();
        let k = format!("{{{}}}:load:{i}", tags[i % tags.len()]);
        con.set(&k, format!("w:{k}"))
            .await
            .unwrap_or_else(|e| panic!("SET {k} during the reshard: {e}"));
        let seed = &seeded[i % seeded.len()];
        let got = con
            .get(seed)
            .await
            .unwrap_or_else(|e| panic!("GET {seed} during the reshard: {e}"));
        assert_eq!(got, Some(format!("w:{seed}")), "{seed} during the reshard");
        if !run.is_finished() {
            during += 1;
        }
        written.push(k);
        assert!(written.len() < 200_000, "the reshard does not end");
    }
    let took = run.wait();
    println!(
        "reshard of {MOVED} slots took {took:?}; {during} of {} writes while it ran",
        written.len()
    );
    assert!(during > 0, "no write overlapped the reshard");
    tokio::task::block_in_place(|| cluster.wait_healthy());
    let after = cluster.nodes();
    let now = |port: u16| after.iter().find(|m| m.port == port).expect("node");
    assert_eq!(now(from.port).slot_count(), from.slot_count() - MOVED);
    assert_eq!(now(to.port).slot_count(), to.slot_count() + MOVED);
    assert!(moving.iter().all(|&s| now(to.port).owns_slot(s)));
    assert_all(&mut con, &seeded, "w").await;
    assert_all(&mut con, &written, "w").await;

    let took = tokio::task::block_in_place(|| cluster.rebalance());
    println!("rebalance took {took:?}");
    let share = SLOTS / 3;
    for m in cluster.masters() {
        assert!(
            m.slot_count().abs_diff(share) < share / 100,
            "{} has {} slots after rebalance",
            m.port,
            m.slot_count()
        );
    }
    assert_all(&mut con, &seeded, "w").await;
    assert_all(&mut con, &written, "w").await;
}

/// A cluster that is not healthy in time fails with what was wrong and
/// where the node logs are (1 ms is less than the nodes need to agree).
#[test]
#[should_panic(expected = "node logs in")]
fn not_ready_in_time_says_why() {
    let _cluster = RedisCluster::builder()
        .ready_timeout(Duration::from_millis(1))
        .start();
}
