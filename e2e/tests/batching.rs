//! Dynamic batching across jobs: jobs stacked into one ONNX Runtime run get
//! exactly the results they get alone.

use std::time::Duration;

use e2e::{
    Api, Client, Fixture, RedisServer, Worker, assert_outputs_match, free_port, unique_namespace,
};
use serde_json::{Value, json};

/// Rows per ONNX Runtime run of mlp128 (one sample per run).
const ROWS_SUM: &str = r#"onnxq_worker_inference_batch_rows_sum{model="mlp128"}"#;
const ROWS_COUNT: &str = r#"onnxq_worker_inference_batch_rows_count{model="mlp128"}"#;

fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_jobs_get_bit_identical_results() {
    let redis = RedisServer::start();
    let ns = unique_namespace("batch");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let w = Worker::spawn(
        &redis.url(),
        &ns,
        &[
            "--max-batch",
            "64",
            "--concurrency",
            "1",
            "--metrics-listen",
            &listen,
        ],
    );
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let client = api.client();
    client
        .wait_for_models(
            &["mlp128", "breast_cancer", "two_input"],
            Duration::from_secs(30),
        )
        .await;
    let metrics = Client::new(&format!("http://{listen}"));

    // Inputs with a fixed pseudo-random pattern (xorshift), one row each.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let rows: Vec<Vec<f32>> = (0..40)
        .map(|_| {
            (0..128)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
                })
                .collect()
        })
        .collect();

    // Alone: one job at a time, so every run has one row.
    let mut alone = Vec::new();
    for r in &rows {
        let id = client.submit("mlp128", &json!({ "features": r })).await;
        let job = client.wait_terminal(&id, Duration::from_secs(30)).await;
        alone.push(job["result"]["outputs"][0]["data"].clone());
    }
    let m = metrics.get("/metrics").await.text;
    let (sum, count) = (sample(&m, ROWS_SUM), sample(&m, ROWS_COUNT));
    assert_eq!(
        (sum, count),
        (40.0, 40.0),
        "phase one must run every job alone"
    );

    // Stacked: queue everything while the worker is paused, so one read
    // takes them all; the other models' fixtures ride along.
    w.proc.signal("STOP");
    let mut ids = Vec::new();
    for r in &rows {
        ids.push(client.submit("mlp128", &json!({ "features": r })).await);
    }
    let mut others = Vec::new();
    for model in ["breast_cancer", "two_input"] {
        for case in Fixture::load(model).cases {
            let id = client
                .submit(model, &json!({ "inputs": case.inputs }))
                .await;
            others.push((id, case.outputs));
        }
    }
    w.proc.signal("CONT");
    for (id, want) in ids.iter().zip(&alone) {
        let job = client.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let got: &Value = &job["result"]["outputs"][0]["data"];
        assert_eq!(got, want, "stacked result differs from the job alone");
    }
    for (id, want) in &others {
        let job = client.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_outputs_match(&job["result"]["outputs"], want, 1e-5);
    }
    let m = metrics.get("/metrics").await.text;
    let stacked_rows = sample(&m, ROWS_SUM) - 40.0;
    let stacked_runs = sample(&m, ROWS_COUNT) - 40.0;
    assert!(
        stacked_rows > stacked_runs * 4.0,
        "jobs were not stacked: {stacked_rows} rows over {stacked_runs} runs"
    );
}
