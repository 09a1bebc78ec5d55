//! A retrain job cannot hold a training slot for ever: through real
//! redis-server, api and worker processes, a job past `--max-train-secs`
//! fails `training_timeout`, a job over the workers' `--max-train-work`
//! fails `training_budget_exceeded`, a running one is canceled between two
//! epochs, and after each the slot takes the next job at once.

use std::time::{Duration, Instant};

use e2e::{Api, Client, RedisServer, StatusCode, Worker, repo_root, unique_namespace};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

async fn put_dataset(c: &Client) {
    let csv = std::fs::read(repo_root().join("models/datasets/breast_cancer.csv")).expect("csv");
    let r = c.put_dataset("bc", csv).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

async fn retrain(c: &Client, params: Value) -> String {
    let body = json!({"dataset": "bc", "params": params, "promote": "never"});
    let r = c
        .send(
            c.http
                .post(format!("{}/v1/models/bc_limits/retrain", c.base))
                .json(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    r.json["job_id"].as_str().expect("job_id").to_owned()
}

/// Enough epochs of one-row batches to run for many seconds, within the
/// work budget below (50,000 x 569 rows x 30 features < 10^9).
fn endless() -> Value {
    json!({"epochs": 50_000, "batch_size": 1})
}

async fn wait_running_with_progress(c: &Client, id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = c.job(id, None).await;
        if r.json["status"] == "running" && !r.json["progress"]["epoch"].is_null() {
            return r.json;
        }
        assert!(Instant::now() < deadline, "not training: {}", r.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_is_bounded_in_time_and_work_and_can_be_canceled() {
    let redis = RedisServer::start();
    let ns = unique_namespace("trainlimits");
    // The API lets a big job through (its budget is larger), so the
    // worker's own check is the one that refuses it.
    let api = Api::spawn(&redis.url(), &ns, &["--max-train-work", "1000000000000"]);
    let c = api.client();
    let _worker = Worker::spawn(
        &redis.url(),
        &ns,
        &[
            "--max-train-secs",
            "2",
            "--max-train-work",
            "1000000000",
            "--train-slots",
            "1",
        ],
    );
    c.wait_for_models(&["breast_cancer"], WAIT).await;
    put_dataset(&c).await;

    // Past --max-train-secs: stopped and failed, not retried.
    let t = Instant::now();
    let slow = retrain(&c, endless()).await;
    let job = c.wait_terminal(&slow, WAIT).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "training_timeout", "{job}");
    assert_eq!(job["attempts"], 1, "a limit is not retried: {job}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the slot was held for {:?}",
        t.elapsed()
    );

    // Over the workers' budget: refused before training starts.
    let big = retrain(&c, json!({"epochs": 100_000, "batch_size": 32})).await;
    let job = c.wait_terminal(&big, WAIT).await;
    assert_eq!(job["error"]["code"], "training_budget_exceeded", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("1000000000")),
        "{job}"
    );

    // Canceled while it trains: it stops at the next epoch and ends
    // canceled; what it reported so far stays readable.
    let running = retrain(&c, endless()).await;
    let seen = wait_running_with_progress(&c, &running).await;
    let r = c.delete(&format!("/v1/jobs/{running}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json["status"], "running");
    let t = Instant::now();
    let job = c.wait_terminal(&running, WAIT).await;
    assert_eq!(job["status"], "canceled", "{job}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the cancel took {:?}",
        t.elapsed()
    );
    assert!(job["cancel_requested_at"].is_string(), "{job}");
    assert!(job["progress"]["epoch"].as_u64() >= seen["progress"]["epoch"].as_u64());

    // The slot is free for an honest job.
    let ok = retrain(&c, json!({"epochs": 20})).await;
    let job = c.wait_terminal(&ok, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
}
