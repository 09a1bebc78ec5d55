//! A worker SIGKILLed mid-batch on a Redis Cluster with 3 partitions is
//! taken over as on a single node (`recovery.rs` has the single-node
//! version): every job it held, in whichever partition, is reclaimed once
//! its lease expires, the jobs it had started run again as attempt 2 and
//! only those, no job finishes twice, and nothing is left pending in any
//! partition.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use e2e::topology::Probe;
use e2e::{Api, Fixture, RedisCluster, Worker, assert_outputs_match, unique_namespace};
use redis::streams::{StreamPendingCountReply, StreamRangeReply};
use serde_json::json;
use shared::Keys;

const PARTITIONS: u16 = 3;
const TOL: f64 = 1e-5;

/// Job ids of the entries of `stream` delivered to `consumer` and not
/// acknowledged.
async fn held_by(probe: &mut Probe, stream: &str, consumer: &str) -> Vec<String> {
    let held: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(shared::queue::keys::GROUP)
        .arg("-")
        .arg("+")
        .arg(100_000)
        .arg(consumer)
        .query_async(probe)
        .await
        .expect("XPENDING");
    let mut ids = Vec::new();
    for p in &held.ids {
        let r: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&p.id)
            .arg(&p.id)
            .query_async(probe)
            .await
            .expect("XRANGE");
        for e in r.ids {
            if let Some(redis::Value::BulkString(b)) = e.map.get("id") {
                ids.push(String::from_utf8_lossy(b).into_owned());
            }
        }
    }
    ids
}

/// How many entries of `stream` are delivered to `consumer` and not
/// acknowledged (one `XPENDING` summary).
async fn pending_of(probe: &mut Probe, stream: &str, consumer: &str) -> usize {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(shared::queue::keys::GROUP)
        .query_async(probe)
        .await
        .expect("XPENDING");
    // [count, first id, last id, [[consumer, count], ...] or nil]
    let redis::Value::Array(fields) = reply else {
        panic!("XPENDING {stream}: {reply:?}")
    };
    let Some(redis::Value::Array(consumers)) = fields.get(3) else {
        return 0;
    };
    consumers
        .iter()
        .find_map(|c| {
            let (name, n): (String, String) = redis::from_redis_value(c.clone()).ok()?;
            (name == consumer).then(|| n.parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_jobs_are_taken_over_on_a_cluster_and_finish_exactly_once() {
    let test_start = Instant::now();
    let cluster = RedisCluster::start();
    let ns = unique_namespace("ckill");
    let keys = Keys::with_partitions(&ns, PARTITIONS);
    let url = cluster.url();
    let p = PARTITIONS.to_string();
    let args = [
        "--partitions",
        &p,
        "--lease-ms",
        "3000",
        "--max-batch",
        "64",
        "--block-ms",
        "200",
    ];
    let a = Worker::spawn(&url, &ns, &args);
    let b = Worker::spawn(&url, &ns, &args);
    let api = Api::spawn(&url, &ns, &["--partitions", &p]);
    let client = api.client();
    client
        .wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let (a_name, b_name) = (
        a.consumer_name(Duration::from_secs(10)),
        b.consumer_name(Duration::from_secs(10)),
    );
    let cases = Fixture::load("mlp128").cases;

    // Queue all of them while the workers are paused, so that when they
    // resume each one always holds batches in flight, in every partition.
    a.proc.signal("STOP");
    b.proc.signal("STOP");
    let total = 2000;
    let mut submitters = tokio::task::JoinSet::new();
    for s in 0..16 {
        let (client, cases) = (client.clone(), cases.clone());
        submitters.spawn(async move {
            let mut ids = Vec::new();
            for i in (s..total).step_by(16) {
                let case = &cases[i % cases.len()];
                ids.push((
                    i,
                    client
                        .submit("mlp128", &json!({ "inputs": case.inputs }))
                        .await,
                ));
            }
            ids
        });
    }
    let mut submitted = Vec::new();
    while let Some(r) = submitters.join_next().await {
        submitted.extend(r.expect("submitter"));
    }
    assert_eq!(submitted.len(), total);
    a.proc.signal("CONT");
    b.proc.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.log_events("job finished").len() < 200 {
        assert!(Instant::now() < deadline, "worker a finished nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Kill it while it holds entries of more than one partition (each has
    // its own stream, pending list and master), some of them started: it
    // is frozen (SIGSTOP) while its holdings are read, so what is read is
    // what dies. Of those, the started ones (attempt 1 running) must run
    // again as attempt 2; the ones only delivered to it run as attempt 1.
    let mut probe = Probe::cluster(&cluster).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut looks = 0;
    let (held_jobs, held_per_partition, started) = loop {
        looks += 1;
        a.proc.signal("STOP");
        let mut per_partition = Vec::new();
        for p in keys.all_partitions() {
            per_partition.push(pending_of(&mut probe, &keys.stream("mlp128", p), &a_name).await);
        }
        if per_partition.iter().filter(|&&n| n > 0).count() >= 2 {
            let mut held = HashSet::new();
            for p in keys.all_partitions() {
                held.extend(held_by(&mut probe, &keys.stream("mlp128", p), &a_name).await);
            }
            let mut started = HashSet::new();
            for id in &held {
                if probe.job_field(&keys, id, "status").await.as_deref() == Some("running") {
                    started.insert(id.clone());
                }
            }
            if !started.is_empty() {
                break (held, per_partition, started);
            }
        }
        a.proc.signal("CONT");
        assert!(
            Instant::now() < deadline,
            "worker a never held started entries of two partitions at once ({looks} looks)"
        );
        tokio::time::sleep(Duration::from_millis(3)).await;
    };
    a.proc.signal("KILL");
    let killed_at = Instant::now();

    for id in &held_jobs {
        client.wait_terminal(id, Duration::from_secs(60)).await;
    }
    let takeover = killed_at.elapsed();
    let mut retaken = HashSet::new();
    for (i, id) in &submitted {
        let job = client.wait_terminal(id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_outputs_match(
            &job["result"]["outputs"],
            &cases[i % cases.len()].outputs,
            TOL,
        );
        let attempts = job["attempts"].as_u64().expect("attempts");
        assert!((1..=2).contains(&attempts), "{job}");
        if attempts > 1 {
            retaken.insert(id.clone());
        }
    }
    assert_eq!(
        retaken, started,
        "attempt 2 must be exactly the jobs the dead worker had started"
    );

    // One result per job: none finished twice, and every job the survivor
    // ran was finished by it exactly once.
    let mut finished: HashMap<String, usize> = HashMap::new();
    for w in [&a, &b] {
        for v in w.log_events("job finished") {
            let id = v["span"]["job_id"].as_str().unwrap_or("").to_owned();
            *finished.entry(id).or_default() += 1;
        }
    }
    for (_, id) in &submitted {
        let n = finished.get(id).copied().unwrap_or(0);
        assert!(n <= 1, "job {id} finished {n} times");
        if probe.job_field(&keys, id, "worker").await.as_deref() == Some(b_name.as_str()) {
            assert_eq!(n, 1, "job {id} run by the survivor has no single finish");
        }
    }
    let pending = probe.pending_per_partition(&keys, "mlp128").await;
    assert!(
        pending.iter().all(|&n| n == 0),
        "entries left pending: {pending:?}"
    );
    println!(
        "CLUSTER RECOVERY killed worker held {} jobs (per partition {held_per_partition:?}, killed at look {looks}), {} started; \
         {} re-run as attempt 2 of {total}; its jobs all finished {takeover:?} after the kill (lease 3 s); \
         test took {:?}",
        held_jobs.len(),
        started.len(),
        retaken.len(),
        test_start.elapsed()
    );
}
