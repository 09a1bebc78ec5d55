//! A master of a Redis Cluster is SIGKILLed while 5,000 jobs are being
//! submitted under `--durability replicated` with 3 partitions, and no
//! accepted job is lost. Two shapes: 3 masters with one replica each (the
//! killed node is restarted once its replica has taken over, as a
//! supervisor would: until it rejoins, the promoted master has no replica
//! and its partition cannot confirm a write), and 3 masters with two
//! replicas each (the killed node stays dead; its other replica follows
//! the promoted one by itself).
//!
//! Clients behave as a real one should: every job has its own
//! `Idempotency-Key`, a 503 is resent with the same key, every request is
//! bounded by a client timeout. The kill comes after 1,500 jobs were
//! accepted and hits the master of partition 0. What must hold:
//!
//! * every 202'd job ends `succeeded`, with the result its input gives, and
//!   its attempts recorded; no key made two jobs, and the cluster holds
//!   exactly one record per accepted job (a write the dead master never
//!   replicated was answered 503, not 202, and its retry made the job anew);
//! * while the cluster fails over, every answer is a 202 or a 503 with the
//!   documented JSON error body: never a 500, never a request that runs
//!   into the client timeout;
//! * the API recovers by itself (it is never touched): once every master
//!   has a replica again, the 503s stop within a few seconds, and a fresh
//!   batch is accepted with no 503 at all;
//! * after the workers drain, no entry is pending in any partition's
//!   consumer group.
//!
//! Prints the 503 window (first to last 503), jobs accepted, lost (must be
//! 0), run more than once (informative: a job whose start or finish the
//! dead master took but never replicated runs again) and the failover time
//! the harness saw.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::keyed_load::{LoadRun, LoadSpec, Outcome, Settled, final_states, settle};
use e2e::topology::{Probe, count_keys, master_urls};
use e2e::{Api, Fixture, RedisCluster, Worker, assert_outputs_match, unique_namespace};
use serde_json::json;
use shared::Keys;

const JOBS: usize = 5000;
const KILL_AFTER: usize = 1500;
const SUBMITTERS: usize = 6;
const PARTITIONS: &str = "3";
const TOL: f64 = 1e-5;
/// Longer than any answer the API should give while it fails over: its
/// Redis limit (1 s) times the cluster client's retries, plus the WAIT.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the killed node rejoined as a replica the API may go on
/// refusing (its cluster client learns the new layout on its own).
const RECOVERY_SLACK: Duration = Duration::from_secs(5);
/// A client gives up on a job refused for this long.
const GIVE_UP: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_replicated_load_loses_no_accepted_job() {
    kill_a_master_under_load(1, Heal::RestartKilledNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_per_master_the_api_recovers_without_the_killed_node() {
    kill_a_master_under_load(2, Heal::ByItself).await;
}

/// How the killed master's slots get a replica again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heal {
    /// The killed node is started again once its replica has taken over,
    /// as a supervisor would: it rejoins as the new master's replica.
    /// Until then that master has no replica, so `WAIT 1` cannot succeed
    /// there and its partition can only answer 503.
    RestartKilledNode,
    /// The killed master's other replica follows the promoted one on its
    /// own; the killed node stays dead.
    ByItself,
}

async fn kill_a_master_under_load(replicas: usize, heal: Heal) {
    let test_start = Instant::now();
    let mut cluster = RedisCluster::builder().replicas(replicas).start();
    let ns = unique_namespace("failover");
    let keys = Keys::with_partitions(&ns, PARTITIONS.parse().expect("partitions"));
    let url = cluster.url();
    let queue = [
        "--partitions",
        PARTITIONS,
        "--durability",
        "replicated",
        "--replication-timeout-ms",
        "500",
    ];
    let mut worker_args = queue.to_vec();
    worker_args.extend(["--lease-ms", "2000", "--block-ms", "200"]);
    let workers: Vec<Worker> = (0..2)
        .map(|_| Worker::spawn(&url, &ns, &worker_args))
        .collect();
    let mut api_args = queue.to_vec();
    api_args.extend(["--redis-timeout-ms", "1000"]);
    let api = Api::spawn(&url, &ns, &api_args);
    let client = api.client();
    client
        .wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let cases = Arc::new(Fixture::load("mlp128").cases);

    // Partition 0's master: its stream, job records and idempotency keys go
    // down with it.
    let victim = cluster.master_of_key(&keys.stream("mlp128", 0));
    let body_cases = Arc::clone(&cases);
    let spec = LoadSpec {
        model: "mlp128".into(),
        total: JOBS,
        submitters: SUBMITTERS,
        request_timeout: REQUEST_TIMEOUT,
        retry_pause: Duration::from_millis(50),
        pace: Duration::ZERO,
        give_up_after: GIVE_UP,
        key_prefix: format!("{ns}-job"),
        body: Arc::new(move |i| json!({ "inputs": body_cases[i % body_cases.len()].inputs })),
    };
    let load = LoadRun::spawn(&client, spec.clone());
    load.wait_accepted(KILL_AFTER, Duration::from_secs(60))
        .await;
    let accepted_at_kill = load.accepted();
    // Healed: every master has a live replica linked to it again.
    let (cluster, failover, killed_at, healed_at) = tokio::task::spawn_blocking(move || {
        let at = Instant::now();
        cluster.kill(victim);
        let failover = cluster.wait_failover(victim);
        match heal {
            Heal::RestartKilledNode => {
                cluster.restart(victim);
                cluster.wait_rejoined(victim);
            }
            Heal::ByItself => cluster.wait_healthy(),
        }
        (cluster, failover, at, Instant::now())
    })
    .await
    .expect("kill, failover and heal");
    let report = load.finish().await;

    // Recovered by itself: a fresh batch, sent after the load ended, is
    // accepted without a single 503.
    let after = LoadRun::spawn(
        &client,
        LoadSpec {
            total: 60,
            key_prefix: format!("{ns}-after"),
            ..spec
        },
    )
    .finish()
    .await;

    // Every accepted job, followed to its end.
    let mut expected: HashMap<String, usize> = HashMap::new();
    for (&i, id) in &report.accepted {
        expected.insert(id.clone(), i);
    }
    for (&i, id) in &after.accepted {
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
    } = settle(&states, |id, job| {
        assert_outputs_match(
            &job["result"]["outputs"],
            &cases[expected[id] % cases.len()].outputs,
            TOL,
        )
    });

    // After the drain nothing is left pending, in any partition.
    let mut probe = Probe::cluster(&cluster).await;
    let pending = probe
        .drained(&keys, "mlp128", Duration::from_secs(20))
        .await;
    let records = count_keys(&master_urls(&cluster), &format!("{ns}:*:job:*"));
    let finished_twice = finished_more_than_once(&workers);

    let window = report.unavailable_window();
    let codes = report.unavailable_codes();
    let bad = report.bad();
    println!(
        "FAILOVER {replicas} replica(s) per master, {heal:?}: master {victim} SIGKILLed after \
         {accepted_at_kill} accepted; replica {} promoted, failover took {:?} (harness); every \
         master had a replica again {:?} after the kill",
        failover.new_master,
        failover.took,
        healed_at - killed_at
    );
    match window {
        Some((first, last)) => println!(
            "FAILOVER 503 window {:?} (first 503 {:+.3} s, last {:+.3} s from the kill); 503s by code {codes:?}",
            last - first,
            signed_secs(first, killed_at),
            signed_secs(last, killed_at),
        ),
        None => println!("FAILOVER no 503 at all"),
    }
    println!(
        "FAILOVER jobs accepted {} (+{} after), lost {}, run more than once {more_than_once}, \
         finish logged more than once {finished_twice}; timeouts {}, bad answers {}, slowest answer {:?}; \
         accepted after the heal {}; {records} job records; pending per partition {pending:?}; \
         test took {:?}",
        report.accepted.len(),
        after.accepted.len(),
        lost.len(),
        report.timeouts(),
        bad.len(),
        report.slowest(),
        report.accepted_after(healed_at),
        test_start.elapsed()
    );

    assert!(
        window.is_some(),
        "no request was refused: the kill did not reach the load"
    );
    // What the API logged for them (a 500 logs its cause), so a rare
    // failure says which Redis answer the API did not expect.
    let internal: Vec<String> = api
        .proc
        .log_text()
        .lines()
        .filter(|l| l.contains("\"internal error\""))
        .take(5)
        .map(str::to_owned)
        .collect();
    assert!(
        bad.is_empty(),
        "{} answers were neither 202 nor a well-formed 503, e.g. {:?}; the API's internal errors: {internal:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert_eq!(report.timeouts(), 0, "requests ran into the client timeout");
    for code in codes.keys() {
        assert!(
            matches!(code.as_str(), "redis_unavailable" | "not_replicated"),
            "503 with code {code}"
        );
    }
    assert!(
        report.abandoned.is_empty(),
        "jobs never accepted within {:?}: {:?}",
        GIVE_UP,
        report.abandoned
    );
    assert_eq!(report.accepted.len(), JOBS);
    assert!(
        report.split_keys().is_empty(),
        "idempotency keys that made two jobs: {:?}",
        report.split_keys()
    );
    let (_, last_503) = window.expect("checked above");
    assert!(
        last_503 < healed_at + RECOVERY_SLACK,
        "503s went on {:?} after every master had a replica again",
        last_503 - healed_at
    );
    assert_eq!(after.accepted.len(), 60);
    assert!(
        after
            .answers
            .iter()
            .all(|a| matches!(a.outcome, Outcome::Accepted { .. })),
        "after the failover the API still refused: {:?}",
        after
            .answers
            .iter()
            .filter(|a| !matches!(a.outcome, Outcome::Accepted { .. }))
            .collect::<Vec<_>>()
    );
    assert!(
        lost.is_empty(),
        "{} accepted jobs lost or not succeeded, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(states.len(), expected.len());
    assert_eq!(
        records,
        expected.len(),
        "the cluster holds {records} job records for {} accepted jobs",
        expected.len()
    );
    assert!(
        pending.iter().all(|&n| n == 0),
        "entries left pending after the drain: {pending:?}"
    );
}

/// `t` relative to `zero`, in seconds, negative when before it.
fn signed_secs(t: Instant, zero: Instant) -> f64 {
    if t >= zero {
        (t - zero).as_secs_f64()
    } else {
        -(zero - t).as_secs_f64()
    }
}

/// Jobs whose finish was logged ("job finished") more than once, over all
/// workers.
fn finished_more_than_once(workers: &[Worker]) -> usize {
    let mut finished: HashMap<String, usize> = HashMap::new();
    for w in workers {
        for v in w.log_events("job finished") {
            let id = v["span"]["job_id"].as_str().unwrap_or("").to_owned();
            *finished.entry(id).or_default() += 1;
        }
    }
    finished.values().filter(|&&n| n > 1).count()
}
