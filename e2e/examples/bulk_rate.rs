//! Bulk submit against single submits, and what the job index costs: a
//! private redis-server and the API (no workers: submissions only, the
//! model's signature published as a worker would), all on 127.0.0.1.
//!
//! 1. Single submits: `--clients` tasks each `POST /v1/models/mlp128/predict`
//!    in a loop, `jobs` in all.
//! 2. Bulk submits: `--bulk-clients` tasks each
//!    `POST /v1/models/mlp128/predict/batch` with `batch` items, `jobs` in all.
//!
//! Prints jobs/s of each and their ratio, then the job index's memory:
//! `MEMORY USAGE <key> SAMPLES 0` summed over the index keys of phase 2
//! (found with `SCAN MATCH {ns}:*:jobs:*`), per job and per million jobs.
//!
//! `cargo run --release -p e2e --example bulk_rate -- 100000 1000` (a batch
//! of 0 runs the single submits alone, and with `E2E_BIN_DIR` any API
//! build: the Redis time per submit script is printed after them).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::{Api, Client, RedisServer, unique_namespace};
use serde_json::{Value, json};
use shared::Keys;
use shared::model::ModelInfo;
use shared::queue::consume;
use shared::tensor::{DataType, TensorSpec};

const CLIENTS: usize = 64;
const BULK_CLIENTS: usize = 4;

fn spec(name: &str, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        shape: shape.to_vec(),
    }
}

async fn publish_mlp128(redis: &RedisServer, ns: &str) {
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let info = ModelInfo {
        name: "mlp128".into(),
        version: "0000000000000000".into(),
        inputs: vec![spec("features", &[-1, 128])],
        outputs: vec![spec("prediction", &[-1, 1])],
        updated_at_ms: shared::time::now_ms(),
    };
    consume::publish_model(&mut conn, &Keys::new(ns), &info)
        .await
        .expect("publish signature");
}

fn row(i: usize) -> Value {
    json!({ "features": vec![(i % 97) as f32 / 97.0; 128] })
}

/// Runs `clients` tasks that take `unit` jobs at a time until `jobs` are
/// taken, each unit sent by `send`; answers jobs/s.
async fn run<F, Fut>(clients: usize, jobs: usize, unit: usize, send: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = usize> + Send,
{
    let taken = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let send = Arc::new(send);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (taken, done, send) = (taken.clone(), done.clone(), send.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let first = taken.fetch_add(unit, Ordering::Relaxed);
                if first >= jobs {
                    return;
                }
                let n = unit.min(jobs - first);
                let accepted = send(n).await;
                assert_eq!(accepted, n, "a submit was refused");
                done.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn index_bytes(redis: &RedisServer, ns: &str) -> (u64, usize) {
    let mut c = redis.client().get_connection().expect("redis");
    let mut cursor = 0u64;
    let (mut bytes, mut keys) = (0u64, 0usize);
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{ns}:*:jobs:*"))
            .arg("COUNT")
            .arg(1000)
            .query(&mut c)
            .expect("scan");
        for key in batch {
            let used: u64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&key)
                .arg("SAMPLES")
                .arg(0)
                .query(&mut c)
                .expect("memory usage");
            bytes += used;
            keys += 1;
        }
        cursor = next;
        if cursor == 0 {
            return (bytes, keys);
        }
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let batch: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let redis = RedisServer::start();
    let single_ns = unique_namespace("rate-single");
    let bulk_ns = unique_namespace("rate-bulk");
    publish_mlp128(&redis, &single_ns).await;
    publish_mlp128(&redis, &bulk_ns).await;
    let single_api = Api::spawn(&redis.url(), &single_ns, &["--max-queue-depth", "0"]);
    single_api
        .client()
        .wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    // Quotas: the default tenant's 1,000,000 jobs and 1 GiB are ample for
    // a run of 100,000 per phase.

    let mut stats = redis.client().get_connection().expect("redis");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut stats)
        .expect("CONFIG RESETSTAT");
    let c = Arc::new(single_api.client());
    let single = run(CLIENTS, jobs, 1, move |n| {
        let c: Arc<Client> = c.clone();
        async move {
            let r = c.predict("mlp128", &row(n)).await;
            usize::from(r.status == e2e::StatusCode::ACCEPTED)
        }
    })
    .await;
    println!("single submits: {jobs} jobs, {CLIENTS} clients: {single:.0} jobs/s");
    // What the submit script costs Redis per job (its index entry included).
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut stats)
        .expect("INFO commandstats");
    for line in info.lines().filter(|l| l.starts_with("cmdstat_evalsha")) {
        println!("redis, single submits: {line}");
    }
    if batch == 0 {
        return;
    }
    let unbounded = ["--max-queue-depth", "0", "--max-bulk", "10000"];
    let bulk_api = Api::spawn(&redis.url(), &bulk_ns, &unbounded);
    bulk_api
        .client()
        .wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;

    let c = Arc::new(bulk_api.client());
    let body = Arc::new(json!({ "items": (0..batch).map(row).collect::<Vec<_>>() }));
    let bulk = run(BULK_CLIENTS, jobs, batch, move |n| {
        let (c, body) = (c.clone(), body.clone());
        async move {
            let body = if n == batch {
                (*body).clone()
            } else {
                json!({ "items": (0..n).map(row).collect::<Vec<_>>() })
            };
            let r = c
                .send(
                    c.http
                        .post(format!("{}/v1/models/mlp128/predict/batch", c.base))
                        .json(&body),
                )
                .await;
            assert_eq!(r.status, e2e::StatusCode::ACCEPTED, "{}", r.text);
            r.json["accepted"].as_u64().unwrap_or(0) as usize
        }
    })
    .await;
    println!(
        "bulk submits: {jobs} jobs in batches of {batch}, {BULK_CLIENTS} clients: {bulk:.0} jobs/s"
    );
    println!("bulk / single: {:.1}x", bulk / single);

    report_index(&redis, &bulk_ns, jobs);

    // A small tenant's hour (at most 128 entries: a listpack).
    let small_ns = unique_namespace("rate-small");
    publish_mlp128(&redis, &small_ns).await;
    let small_api = Api::spawn(&redis.url(), &small_ns, &unbounded);
    let c = small_api.client();
    c.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let r = c
        .send(
            c.http
                .post(format!("{}/v1/models/mlp128/predict/batch", c.base))
                .json(&json!({ "items": (0..100).map(row).collect::<Vec<_>>() })),
        )
        .await;
    assert_eq!(r.json["accepted"], 100, "{}", r.text);
    report_index(&redis, &small_ns, 100);
}

fn report_index(redis: &RedisServer, ns: &str, jobs: usize) {
    let (bytes, keys) = index_bytes(redis, ns);
    let per_job = bytes as f64 / jobs as f64;
    println!(
        "job index: {keys} keys, {bytes} bytes for {jobs} jobs: {per_job:.1} bytes/job, \
         {:.1} MiB per million jobs",
        per_job * 1e6 / (1024.0 * 1024.0)
    );
}
