//! Hot swap under load: 3000 predict jobs flow through two workers while a
//! new version is promoted. No job may fail, each must report the old or
//! the new version, and its result must be that version's output. Prints
//! the swap time: promote response → first job started on the new version,
//! per worker.
//!
//! Version 1 is `testdata/flaky_fixed.onnx` (`y = 2x`), version 2
//! `testdata/scale3.onnx` (`y = 3x`), same signature.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::prom::Scrape;
use e2e::{
    Api, Client, ModelsDir, RedisServer, StatusCode, Worker, free_port, repo_root, unique_namespace,
};
use serde_json::{Value, json};

const JOBS: usize = 3000;
const SUBMITTERS: usize = 6;
const PROMOTE_AFTER: usize = 1000;
const WAIT: Duration = Duration::from_secs(60);

fn x(i: usize) -> Vec<f32> {
    let b = (i % 997) as f32 * 0.25;
    vec![b, -b, b + 1.0, 0.5]
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promoting_under_load_fails_no_job_and_every_result_matches_its_version() {
    let redis = RedisServer::start();
    let ns = unique_namespace("hot-swap");
    let dir = ModelsDir::with(&[("m", "testdata/flaky_fixed.onnx")]);
    let listens: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let workers: Vec<Worker> = listens
        .iter()
        .map(|l| Worker::spawn_with_models(&redis.url(), &ns, &dir.path, &["--metrics-listen", l]))
        .collect();
    let consumers: Vec<String> = workers.iter().map(|w| w.consumer_name(WAIT)).collect();
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let c = api.client();
    c.wait_for_models(&["m"], WAIT).await;

    // Version 2 uploaded and validated before the load starts.
    let bytes = std::fs::read(repo_root().join("models/testdata/scale3.onnx")).expect("model");
    let r = c
        .post_raw(
            "/v1/models/m/versions",
            Some("application/octet-stream"),
            bytes,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = c
        .wait_terminal(r.json["job_id"].as_str().expect("job_id"), WAIT)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");

    let submitted = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..SUBMITTERS)
        .map(|_| {
            let c = api.client();
            let next = Arc::clone(&next);
            let submitted = Arc::clone(&submitted);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= JOBS {
                        return ids;
                    }
                    let body = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x(i)}]});
                    ids.push((i, c.submit("m", &body).await));
                    submitted.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while submitted.load(Ordering::Relaxed) < PROMOTE_AFTER {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = c
        .send(
            c.http
                .post(format!("{}/v1/models/m/promote", c.base))
                .json(&json!({"version": 2})),
        )
        .await;
    let promoted_at = now_ms();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut ids = Vec::with_capacity(JOBS);
    for t in tasks {
        ids.extend(t.await.expect("submitter"));
    }
    assert_eq!(ids.len(), JOBS);

    let mut redis_conn = redis.client().get_connection().expect("redis");
    let mut per_version: HashMap<String, usize> = HashMap::new();
    let mut first_new: HashMap<String, i64> = HashMap::new();
    let mut last_old_start = 0i64;
    for (i, id) in &ids {
        let job: Value = c.wait_terminal(id, WAIT).await;
        assert_eq!(job["status"], "succeeded", "job {i}: {job}");
        let version = job["model_version"].as_str().unwrap_or("").to_owned();
        let k = match version.as_str() {
            "1" => 2.0,
            "2" => 3.0,
            other => panic!("job {i} ran on version {other:?}: {job}"),
        };
        let expected: Vec<f64> = x(*i).iter().map(|&v| f64::from(v) * k).collect();
        let got: Vec<f64> = job["result"]["outputs"][0]["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect();
        assert_eq!(got, expected, "job {i} on version {version}");
        *per_version.entry(version.clone()).or_default() += 1;
        let (worker, started): (String, i64) = redis::cmd("HMGET")
            .arg(e2e::job_key(&ns, &id.to_string()))
            .arg("worker")
            .arg("started_at")
            .query(&mut redis_conn)
            .expect("hmget");
        if version == "2" {
            let e = first_new.entry(worker).or_insert(i64::MAX);
            *e = (*e).min(started);
        } else {
            last_old_start = last_old_start.max(started);
        }
    }
    let old = per_version.get("1").copied().unwrap_or(0);
    let new = per_version.get("2").copied().unwrap_or(0);
    assert!(
        old >= PROMOTE_AFTER / 2,
        "too few jobs before the swap: {per_version:?}"
    );
    assert!(new > 0, "no job ran on the new version: {per_version:?}");
    for consumer in &consumers {
        let Some(first) = first_new.get(consumer) else {
            panic!("worker {consumer} never ran the new version: {first_new:?}");
        };
        let swap_ms = first - promoted_at;
        println!(
            "SWAP worker {consumer}: first job on version 2 started {swap_ms} ms after the promote response"
        );
        assert!(
            swap_ms < 1000,
            "worker {consumer} switched {swap_ms} ms after the promotion"
        );
    }
    // Each worker swapped exactly once and serves one model.
    for l in &listens {
        let text = Client::new(&format!("http://{l}"))
            .get("/metrics")
            .await
            .text;
        let m = Scrape::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            m.value("onnxq_worker_model_swaps_total", &[("model", "m")]),
            Some(1.0),
            "{text}"
        );
        assert_eq!(m.value("onnxq_worker_models_loaded", &[]), Some(1.0));
    }
    println!(
        "SWAP {JOBS} jobs, 0 failed: {old} on version 1, {new} on version 2; last version-1 start {} ms after the promote response",
        last_old_start - promoted_at
    );
}
