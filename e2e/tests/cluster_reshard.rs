//! Slots move under load: while clients submit jobs and two workers run
//! them on a 3-master cluster with 3 partitions, `redis-cli --cluster
//! reshard` moves 1,500 slots, partition 0's among them, from its master to
//! another, and then `rebalance` evens the masters out again, moving that
//! slot back.
//!
//! Every key of a moving slot is MIGRATEd under the API's scripts, the
//! workers' blocking reads and their start/finish scripts: commands are
//! redirected with ASK while the slot is in flight and MOVED once it has
//! moved, and a script whose keys are split between the two nodes for the
//! moment gets TRYAGAIN. Partition 0's slot is padded with 20,000 filler
//! keys so that it stays in flight long enough (about half a second) for
//! the load to hit it. The redis crate's cluster client follows the
//! redirections and retries; what it cannot absorb must reach the client
//! as a 503 it retries (same `Idempotency-Key`), never as a 500 or a hang.
//!
//! What must hold: requests for partition 0's jobs were sent while its
//! slot was in flight; every answer is a 202 or a well-formed 503; every
//! accepted job succeeds with its input's result, none is lost, no key made
//! two jobs (one record per accepted job), and nothing is left pending in
//! any partition.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::keyed_load::{self, LoadRun, LoadSpec, Outcome, Settled, final_states};
use e2e::topology::{Probe, count_keys, master_urls};
use e2e::{Api, Fixture, RedisCluster, Worker, assert_outputs_match, unique_namespace};
use serde_json::json;
use shared::Keys;
use shared::queue::keys::partition_of;

const PARTITIONS: u16 = 3;
/// Enough to take partition 0's slot (near 1/12 of the slot space, see
/// `shared::queue::keys`) along with the master's lowest slots, which
/// redis-cli moves first.
const MOVED_SLOTS: u32 = 1500;
const TOL: f64 = 1e-5;
/// Keys put in partition 0's slot besides the queue's own.
const FILLER: usize = 20_000;

/// The master of every partition's slot.
fn owners(cluster: &RedisCluster, keys: &Keys) -> Vec<u16> {
    keys.all_partitions()
        .map(|p| cluster.master_of_slot(keys.partition_slot(p)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_flow_while_partition_slots_are_resharded_and_rebalanced() {
    let test_start = Instant::now();
    let cluster = RedisCluster::start();
    let ns = unique_namespace("reshard");
    let keys = Keys::with_partitions(&ns, PARTITIONS);
    let url = cluster.url();
    let p = PARTITIONS.to_string();
    let workers: Vec<Worker> = (0..2)
        .map(|_| {
            Worker::spawn(
                &url,
                &ns,
                &[
                    "--partitions",
                    &p,
                    "--lease-ms",
                    "3000",
                    "--block-ms",
                    "200",
                ],
            )
        })
        .collect();
    let api = Api::spawn(&url, &ns, &["--partitions", &p]);
    let client = api.client();
    client
        .wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let cases = Arc::new(Fixture::load("mlp128").cases);

    let before = owners(&cluster, &keys);
    let p0_slot = keys.partition_slot(0);
    let from = before[0];
    let to = *before
        .iter()
        .find(|&&m| m != from)
        .expect("partitions on more than one master");
    let lowest = cluster
        .masters()
        .into_iter()
        .find(|m| m.port == from)
        .and_then(|m| m.slots.iter().map(|&(a, _)| a).min())
        .expect("the source master's slots");
    assert!(
        u32::from(p0_slot) < u32::from(lowest) + MOVED_SLOTS,
        "partition 0's slot {p0_slot} is not among the {MOVED_SLOTS} lowest of {from} (from {lowest})"
    );

    // Filler under partition 0's tag, so its slot takes a while to migrate
    // (redis-cli MIGRATEs 10 keys at a time) and jobs of the partition are
    // submitted, started and finished while it is in flight.
    let mut probe = Probe::cluster(&cluster).await;
    let stream0 = keys.stream("mlp128", 0);
    let tag0 = stream0
        .strip_suffix(":stream:mlp128")
        .expect("a stream key ends with its queue");
    for chunk in 0..FILLER / 1000 {
        let mut pipe = redis::pipe();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            pipe.cmd("SET")
                .arg(format!("{tag0}:filler:{i}"))
                .arg(i)
                .ignore();
        }
        pipe.query_async::<()>(&mut probe).await.expect("filler");
    }

    let body_cases = Arc::clone(&cases);
    let load = LoadRun::spawn(
        &client,
        LoadSpec {
            model: "mlp128".into(),
            total: 1_000_000,
            submitters: 4,
            request_timeout: Duration::from_secs(10),
            retry_pause: Duration::from_millis(20),
            // About 4 x 100 jobs a second: the workers keep up, so jobs
            // are started and finished while their slots move too.
            pace: Duration::from_millis(10),
            give_up_after: Duration::from_secs(20),
            key_prefix: format!("{ns}-job"),
            body: Arc::new(move |i| json!({ "inputs": body_cases[i % body_cases.len()].inputs })),
        },
    );
    load.wait_accepted(200, Duration::from_secs(30)).await;

    // Reshard under load, watching the source for the moment partition 0's
    // slot is in flight (`[slot->-target]` on its own line).
    let accepted_before = load.accepted();
    let mut source = redis::Client::open(format!("redis://127.0.0.1:{from}"))
        .expect("source url")
        .get_multiplexed_async_connection()
        .await
        .expect("source connection");
    let migrating_mark = format!("[{p0_slot}->-");
    let mut in_flight: Option<(Instant, Instant)> = None;
    let mut run = tokio::task::block_in_place(|| cluster.spawn_reshard(from, to, MOVED_SLOTS));
    let reshard_started = Instant::now();
    while !run.is_finished() {
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut source)
            .await
            .expect("CLUSTER NODES");
        let now = Instant::now();
        let mine = nodes.lines().find(|l| l.contains("myself")).unwrap_or("");
        if mine.contains(&migrating_mark) {
            in_flight = Some(in_flight.map_or((now, now), |(first, _)| (first, now)));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reshard_took = run.wait();
    let during_reshard = load.accepted() - accepted_before;
    tokio::task::block_in_place(|| cluster.wait_healthy());
    let resharded = owners(&cluster, &keys);

    // Rebalance under load: the masters are 1,500 slots apart now.
    let accepted_before = load.accepted();
    let mut run = tokio::task::block_in_place(|| cluster.spawn_rebalance());
    while !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rebalance_took = run.wait();
    let during_rebalance = load.accepted() - accepted_before;
    tokio::task::block_in_place(|| cluster.wait_healthy());
    let rebalanced = owners(&cluster, &keys);

    // A little more load on the final layout, then stop.
    let settle = load.accepted() + 100;
    load.wait_accepted(settle, Duration::from_secs(30)).await;
    load.stop();
    let report = load.finish().await;

    let mut expected: HashMap<String, usize> = HashMap::new();
    for (&i, id) in &report.accepted {
        expected.insert(id.clone(), i);
    }
    let states = final_states(
        &client,
        expected.keys().cloned().collect(),
        16,
        Duration::from_secs(90),
    )
    .await;
    let Settled {
        lost,
        more_than_once,
    } = keyed_load::settle(&states, |id, job| {
        assert_outputs_match(
            &job["result"]["outputs"],
            &cases[expected[id] % cases.len()].outputs,
            TOL,
        )
    });
    let pending = probe
        .drained(&keys, "mlp128", Duration::from_secs(20))
        .await;
    let records = count_keys(&master_urls(&cluster), &format!("{ns}:*:job:*"));
    let bad = report.bad();
    let read_errors: usize = workers
        .iter()
        .map(|w| {
            w.log_events("reading the streams failed; reconnecting")
                .len()
        })
        .sum();

    // Requests for jobs of partition 0 sent while its slot was in flight:
    // their scripts were redirected (ASK) or told to retry (TRYAGAIN: a
    // script's keys are split between the nodes), and whatever the
    // cluster client could not absorb came back as a 503.
    let (flight_from, flight_to) = in_flight.expect("partition 0's slot was never seen migrating");
    let in_partition_0 = |job: usize| {
        report
            .accepted
            .get(&job)
            .is_some_and(|id| partition_of(&uuid::Uuid::parse_str(id).expect("job id")) == 0)
    };
    let during_flight: Vec<_> = report
        .answers
        .iter()
        .filter(|a| a.at >= flight_from && a.at <= flight_to && in_partition_0(a.job))
        .collect();
    let accepted_in_flight = during_flight
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Accepted { .. }))
        .count();
    println!(
        "RESHARD partition 0's slot {p0_slot} in flight for {:?}: {} requests for its jobs sent meanwhile, {accepted_in_flight} answered 202",
        flight_to - flight_from,
        during_flight.len()
    );
    println!(
        "RESHARD {MOVED_SLOTS} slots {from} -> {to} took {reshard_took:?} ({during_reshard} jobs accepted meanwhile); \
         rebalance took {rebalance_took:?} ({during_rebalance} accepted meanwhile); partition owners \
         {before:?} -> {resharded:?} -> {rebalanced:?}"
    );
    println!(
        "RESHARD jobs accepted {}, lost {}, run more than once {more_than_once}; 503s {:?}, timeouts {}, \
         bad answers {}, slowest answer {:?}; {records} job records; pending {pending:?}; worker read errors \
         {read_errors}; reshard started {:?} into the test, test took {:?}",
        report.accepted.len(),
        lost.len(),
        report.unavailable_codes(),
        report.timeouts(),
        bad.len(),
        report.slowest(),
        reshard_started - test_start,
        test_start.elapsed()
    );

    assert_eq!(resharded[0], to, "partition 0's slot did not move");
    assert!(
        !during_flight.is_empty(),
        "no job of partition 0 was submitted while its slot was in flight"
    );
    assert!(
        during_reshard > 0 && during_rebalance > 0,
        "no job was accepted while slots moved: nothing was tested"
    );
    assert!(
        bad.is_empty(),
        "{} answers were neither 202 nor a well-formed 503, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert_eq!(report.timeouts(), 0, "requests ran into the client timeout");
    for code in report.unavailable_codes().keys() {
        assert_eq!(code, "redis_unavailable", "503 with code {code}");
    }
    assert!(
        report.abandoned.is_empty(),
        "jobs never accepted: {:?}",
        report.abandoned
    );
    assert!(
        report.split_keys().is_empty(),
        "idempotency keys that made two jobs: {:?}",
        report.split_keys()
    );
    assert!(
        lost.is_empty(),
        "{} accepted jobs lost or not succeeded, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(states.len(), expected.len());
    assert_eq!(records, expected.len(), "job records vs accepted jobs");
    assert!(
        pending.iter().all(|&n| n == 0),
        "entries left pending: {pending:?}"
    );
}
