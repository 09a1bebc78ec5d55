//! A 202 is a promise: workers killed (SIGKILL), stalled (SIGSTOP) or
//! stopped (SIGTERM), Redis restarted, jobs failing for good or for now. Every
//! test runs real processes against a real redis-server.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::{Duration, Instant};

use e2e::{
    Api, Client, Fixture, ModelsDir, RedisServer, StatusCode, Worker, assert_outputs_match,
    unique_namespace,
};
use redis::streams::{StreamPendingCountReply, StreamPendingReply, StreamRangeReply};
use serde_json::{Value, json};
use shared::queue::wire::JobEnvelope;

const TOL: f64 = 1e-5;

fn conn(redis: &RedisServer) -> redis::Connection {
    redis.client().get_connection().expect("redis connection")
}

fn pending_count(c: &mut redis::Connection, stream: &str) -> usize {
    let p: StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg("workers")
        .query(c)
        .expect("xpending");
    p.count()
}

fn job_field(c: &mut redis::Connection, ns: &str, id: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(e2e::job_key(ns, id))
        .arg(field)
        .query(c)
        .expect("hget")
}

/// Waits until the job reports `status` (polling, for states that publish
/// nothing, like `running`).
async fn wait_status(c: &Client, id: &str, status: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let r = c.job(id, None).await;
        if r.json["status"] == status {
            return;
        }
        assert!(Instant::now() < deadline, "job never {status}: {}", r.text);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_jobs_are_taken_over_and_finish_exactly_once() {
    let redis = RedisServer::start();
    let ns = unique_namespace("kill");
    let args = [
        "--lease-ms",
        "3000",
        "--max-batch",
        "64",
        "--block-ms",
        "200",
    ];
    let a = Worker::spawn(&redis.url(), &ns, &args);
    let b = Worker::spawn(&redis.url(), &ns, &args);
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let client = api.client();
    client
        .wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let (a_name, b_name) = (
        a.consumer_name(Duration::from_secs(10)),
        b.consumer_name(Duration::from_secs(10)),
    );
    let stream = e2e::keys(&ns).stream("mlp128", 0);
    let cases = Fixture::load("mlp128").cases;

    // Queue all 2000 while the workers are paused, so that when they resume
    // each one always holds a batch in flight.
    a.proc.signal("STOP");
    b.proc.signal("STOP");
    let total = 2000;
    let mut submitters = tokio::task::JoinSet::new();
    for s in 0..32 {
        let (client, cases) = (client.clone(), cases.clone());
        submitters.spawn(async move {
            let mut ids = Vec::new();
            for i in (s..total).step_by(32) {
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
    // Kill it mid-stream, at a moment it holds delivered, unfinished jobs:
    // between two batches it holds none, and on a loaded machine the log
    // can lag behind it, so it is stopped, looked at, and let go again
    // until it does.
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.log_events("job finished").len() < 200 {
        assert!(Instant::now() < deadline, "worker a finished nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut probe = conn(&redis);
    loop {
        a.proc.signal("STOP");
        let holding: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("workers")
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&a_name)
            .query(&mut probe)
            .expect("xpending");
        if !holding.ids.is_empty() {
            break;
        }
        a.proc.signal("CONT");
        assert!(Instant::now() < deadline, "worker a never held a job");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.proc.signal("KILL");
    let killed_at = Instant::now();

    // What the dead worker held: delivered to it, never finished.
    let mut c = conn(&redis);
    let held: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("workers")
        .arg("-")
        .arg("+")
        .arg(100_000)
        .arg(&a_name)
        .query(&mut c)
        .expect("xpending");
    let mut held_jobs = HashSet::new();
    for p in &held.ids {
        let r: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(&p.id)
            .arg(&p.id)
            .query(&mut c)
            .expect("xrange");
        for e in r.ids {
            if let Some(redis::Value::BulkString(b)) = e.map.get("id") {
                held_jobs.insert(String::from_utf8_lossy(b).into_owned());
            }
        }
    }
    assert!(
        !held_jobs.is_empty(),
        "the killed worker held no job: nothing was tested"
    );
    // Of those, the ones it had started (attempt 1 running) must run again as
    // attempt 2; the ones only delivered to it run as attempt 1.
    let started: HashSet<String> = held_jobs
        .iter()
        .filter(|id| job_field(&mut c, &ns, id, "status").as_deref() == Some("running"))
        .cloned()
        .collect();

    // Takeover time: until every job the dead worker held is finished.
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

    // One result per job: no job finished twice, and every job the survivor
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
        if job_field(&mut c, &ns, id, "worker").as_deref() == Some(b_name.as_str()) {
            assert_eq!(n, 1, "job {id} run by the survivor has no single finish");
        }
    }
    assert_eq!(pending_count(&mut c, &stream), 0, "entries left pending");
    eprintln!(
        "killed worker held {} jobs ({} started), {} re-run (attempt 2) of {}; its jobs all finished {:?} after the kill (lease 3 s)",
        held_jobs.len(),
        started.len(),
        retaken.len(),
        total,
        takeover
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_workers_late_result_is_discarded() {
    let redis = RedisServer::start();
    let ns = unique_namespace("stall");
    let models = ModelsDir::with(&[("slow", "testdata/slow.onnx")]);
    let args = [
        "--lease-ms",
        "1000",
        "--block-ms",
        "200",
        "--concurrency",
        "1",
    ];
    let a = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &args);
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let client = api.client();
    client
        .wait_for_models(&["slow"], Duration::from_secs(30))
        .await;

    let id = client.submit("slow", &json!({ "features": [0.5] })).await;
    wait_status(&client, &id, "running", Duration::from_secs(10)).await;
    a.proc.signal("STOP");
    let b = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &args);
    let b_name = b.consumer_name(Duration::from_secs(10));

    let job = client.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(job["result"]["prediction"], 0.5, "{job}");
    let mut c = conn(&redis);
    assert_eq!(job_field(&mut c, &ns, &id, "worker"), Some(b_name));

    a.proc.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    while a
        .log_events("result discarded: another attempt owns the job")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "stalled worker never tried its late write:\n{}",
            a.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = client.job(&id, None).await.json;
    assert_eq!(after, job, "the late result changed the job");
    assert_eq!(pending_count(&mut c, &e2e::keys(&ns).stream("slow", 0)), 0);
    assert!(
        a.log_events("job finished").is_empty(),
        "the stalled worker reported a finish"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_job_survives_redis_being_killed_and_restarted() {
    let mut redis = RedisServer::start_persistent();
    let ns = unique_namespace("restart");
    let args = ["--lease-ms", "2000", "--block-ms", "200"];
    let _w1 = Worker::spawn(&redis.url(), &ns, &args);
    let _w2 = Worker::spawn(&redis.url(), &ns, &args);
    let api = Api::spawn(&redis.url(), &ns, &["--redis-timeout-ms", "500"]);
    let client = api.client();
    client
        .wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let cases = Fixture::load("mlp128").cases;

    let total = 1500;
    let accepted = Arc::new(AtomicUsize::new(0));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let mut submitters = tokio::task::JoinSet::new();
    for s in 0..16 {
        let (client, cases) = (client.clone(), cases.clone());
        let (accepted, unavailable) = (Arc::clone(&accepted), Arc::clone(&unavailable));
        submitters.spawn(async move {
            let mut ids = Vec::new();
            for i in (s..total).step_by(16) {
                let body = json!({ "inputs": cases[i % cases.len()].inputs });
                loop {
                    let r = client.predict("mlp128", &body).await;
                    if r.status == StatusCode::ACCEPTED {
                        ids.push((i, r.json["job_id"].as_str().expect("id").to_owned()));
                        accepted.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
                    assert_eq!(r.error_code(), "redis_unavailable");
                    unavailable.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            ids
        });
    }
    while accepted.load(Ordering::Relaxed) < 300 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // kill -9: with AOF every write reached the OS before its reply, so
    // even an unclean stop of the Redis process loses no accepted job.
    let redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        std::thread::sleep(Duration::from_secs(1));
        redis.start_again();
        redis
    })
    .await
    .expect("restart");

    let mut submitted = Vec::new();
    while let Some(r) = submitters.join_next().await {
        submitted.extend(r.expect("submitter"));
    }
    assert!(
        unavailable.load(Ordering::Relaxed) > 0,
        "no request saw the outage: the test did not test it"
    );
    for (i, id) in &submitted {
        let job = client.wait_terminal(id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_outputs_match(
            &job["result"]["outputs"],
            &cases[i % cases.len()].outputs,
            TOL,
        );
    }
    let mut c = conn(&redis);
    assert_eq!(
        pending_count(&mut c, &e2e::keys(&ns).stream("mlp128", 0)),
        0
    );
    eprintln!(
        "{} jobs accepted, all succeeded; {} submits answered 503 during the restart",
        submitted.len(),
        unavailable.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_retry_into_dead_letters_and_permanent_ones_fail_at_once() {
    let redis = RedisServer::start();
    let ns = unique_namespace("poison");
    let models = ModelsDir::with(&[
        ("flaky", "testdata/flaky_broken.onnx"),
        ("inf", "testdata/inf_output.onnx"),
    ]);
    let args = [
        "--max-attempts",
        "3",
        "--retry-base-ms",
        "100",
        "--retry-max-ms",
        "400",
        "--block-ms",
        "200",
    ];
    let w = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &args);
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let client = api.client();
    client
        .wait_for_models(&["flaky", "inf"], Duration::from_secs(30))
        .await;

    // A non-finite output is never a success, and retrying cannot help.
    let inf = client.submit("inf", &json!({ "features": [1.0] })).await;
    let job = client.wait_terminal(&inf, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["result"].is_null(), "{job}");
    assert_eq!(job["error"]["code"], "non_finite_output", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");

    // A model that cannot run its input: retried with back-off, then dead.
    let started = Instant::now();
    let id = client
        .submit("flaky", &json!({ "features": [1.0, 2.0, 3.0, 4.0] }))
        .await;
    let job = client.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 3, "{job}");
    assert_eq!(job["error"]["code"], "inference_error", "{job}");
    // Two back-offs of at least half of 100 ms and 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    let retries = w.log_events("job will be retried");
    assert_eq!(retries.len(), 2, "{retries:?}");

    let mut c = conn(&redis);
    let dead: StreamRangeReply = redis::cmd("XRANGE")
        .arg(e2e::keys(&ns).dead_letters(0))
        .arg("-")
        .arg("+")
        .query(&mut c)
        .expect("xrange dead");
    assert_eq!(dead.ids.len(), 1, "exactly the flaky job is dead-lettered");
    let entry = &dead.ids[0];
    let text = |k: &str| match entry.map.get(k) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("dead letter field {k}: {other:?}"),
    };
    assert_eq!(text("id"), id);
    assert_eq!(text("model"), "flaky");
    assert_eq!(text("attempts"), "3");
    let err: Value = serde_json::from_str(&text("error")).expect("error json");
    assert_eq!(err["code"], "inference_error");
    let Some(redis::Value::BulkString(payload)) = entry.map.get("job") else {
        panic!("dead letter without payload")
    };
    let env = JobEnvelope::decode(payload).expect("dead letter payload decodes");
    assert_eq!(env.id.to_string(), id);
    assert_eq!(pending_count(&mut c, &e2e::keys(&ns).stream("flaky", 0)), 0);

    // The cause is fixed (the model file replaced, the worker restarted);
    // the operator replays the dead letter and it succeeds.
    drop(w);
    models.put("flaky", "testdata/flaky_fixed.onnx");
    let _w = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &args);
    let out = std::process::Command::new(e2e::binary("jobctl"))
        .args([
            "--redis-url",
            &redis.url(),
            "--namespace",
            &ns,
            "replay",
            "--id",
            &id,
            "--yes",
        ])
        .output()
        .expect("run jobctl");
    assert!(
        out.status.success(),
        "jobctl replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = client.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["result"]["outputs"][0]["data"],
        json!([2.0, 4.0, 6.0, 8.0]),
        "{job}"
    );
    let len: usize = redis::cmd("XLEN")
        .arg(e2e::keys(&ns).dead_letters(0))
        .query(&mut c)
        .expect("xlen");
    assert_eq!(
        len, 0,
        "replayed dead letter still in the dead-letter stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_worker_finish_its_jobs_and_loses_none() {
    let redis = RedisServer::start();
    let ns = unique_namespace("drain");
    let models = ModelsDir::with(&[("slow", "testdata/slow.onnx")]);
    let args = [
        "--concurrency",
        "1",
        "--block-ms",
        "200",
        "--lease-ms",
        "10000",
    ];
    let mut a = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &args);
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let client = api.client();
    client
        .wait_for_models(&["slow"], Duration::from_secs(30))
        .await;

    let mut ids = Vec::new();
    for x in [0.25, 0.5, 0.75] {
        ids.push(client.submit("slow", &json!({ "features": [x] })).await);
    }
    wait_status(&client, &ids[0], "running", Duration::from_secs(10)).await;
    a.proc.signal("TERM");
    let code = a.proc.wait_exit(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(Some(0)),
        "worker did not exit cleanly after SIGTERM"
    );
    // The job it was running finished before it left.
    let first = client.job(&ids[0], None).await.json;
    assert_eq!(first["status"], "succeeded", "{first}");

    // Whatever it had not started is still queued for the next worker.
    let _b = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &args);
    for (id, x) in ids.iter().zip([0.25, 0.5, 0.75]) {
        let job = client.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "a drained job ran twice: {job}");
        assert_eq!(job["result"]["prediction"], x, "{job}");
    }
    let mut c = conn(&redis);
    assert_eq!(pending_count(&mut c, &e2e::keys(&ns).stream("slow", 0)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_expire_and_streams_are_trimmed_of_acked_entries() {
    let redis = RedisServer::start();
    let ns = unique_namespace("retain");
    let _w = Worker::spawn(
        &redis.url(),
        &ns,
        &[
            "--result-ttl-secs",
            "2",
            "--trim-interval-secs",
            "1",
            "--block-ms",
            "200",
        ],
    );
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let client = api.client();
    client
        .wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let mut c = conn(&redis);
    let stream = e2e::keys(&ns).stream("mlp128", 0);

    // Each task submits and long-polls its job at once, well within the TTL.
    let body = json!({ "features": vec![0.1f32; 128] });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let (client, body) = (client.clone(), body.clone());
        tasks.spawn(async move {
            let id = client.submit("mlp128", &body).await;
            client.wait_terminal(&id, Duration::from_secs(60)).await
        });
    }
    while let Some(job) = tasks.join_next().await {
        assert_eq!(job.expect("job task")["status"], "succeeded");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let len: usize = redis::cmd("XLEN").arg(&stream).query(&mut c).expect("xlen");
        let jobs: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{ns}:*:job:*"))
            .query(&mut c)
            .expect("keys");
        if len <= 1 && jobs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {len} stream entries and {} job records",
            jobs.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing pending was trimmed: a new job still flows.
    let id = client.submit("mlp128", &body).await;
    assert_eq!(
        client.wait_terminal(&id, Duration::from_secs(30)).await["status"],
        "succeeded"
    );
}
