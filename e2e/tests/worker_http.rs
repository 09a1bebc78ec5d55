//! The worker's `--metrics-listen` endpoints against a real worker: counts
//! after real jobs (one success path, one permanent failure), readiness
//! following Redis.

use std::time::{Duration, Instant};

use e2e::prom::Scrape;
use e2e::{Api, Client, ModelsDir, RedisServer, StatusCode, Worker, free_port, unique_namespace};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_exposes_exact_job_counts_timings_and_readiness() {
    let mut redis = RedisServer::start();
    let ns = unique_namespace("whttp");
    let models = ModelsDir::with(&[
        ("mlp128", "mlp128.onnx"),
        ("inf", "testdata/inf_output.onnx"),
    ]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _w = Worker::spawn_with_models(
        &redis.url(),
        &ns,
        &models.path,
        &["--metrics-listen", &listen],
    );
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let client = api.client();
    client
        .wait_for_models(&["mlp128", "inf"], Duration::from_secs(30))
        .await;
    let worker = Client::new(&format!("http://{listen}"));

    assert_eq!(worker.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(worker.get("/readyz").await.status, StatusCode::OK);

    for _ in 0..2 {
        let id = client
            .submit("mlp128", &json!({ "features": vec![0.5f32; 128] }))
            .await;
        assert_eq!(
            client.wait_terminal(&id, Duration::from_secs(30)).await["status"],
            "succeeded"
        );
    }
    let id = client.submit("inf", &json!({ "features": [1.0] })).await;
    assert_eq!(
        client.wait_terminal(&id, Duration::from_secs(30)).await["status"],
        "failed"
    );

    let text = worker.get("/metrics").await.text;
    let m = Scrape::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let finished = "onnxq_worker_jobs_finished_total";
    assert_eq!(
        m.value(
            finished,
            &[
                ("model", "mlp128"),
                ("kind", "predict"),
                ("status", "succeeded"),
                ("reason", "none")
            ]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        m.value(
            finished,
            &[
                ("model", "inf"),
                ("kind", "predict"),
                ("status", "failed"),
                ("reason", "non_finite_output")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    let count = |name: &str, model: &str| {
        m.histogram(name, &[("model", model)])
            .unwrap_or_else(|| panic!("no {name}{{model={model}}}:\n{text}"))
            .count
    };
    // One job at a time: one ONNX Runtime run per job.
    assert_eq!(count("onnxq_worker_inference_seconds", "mlp128"), 2.0);
    assert_eq!(count("onnxq_worker_queue_wait_seconds", "inf"), 1.0);
    let reads = m
        .histogram("onnxq_worker_batch_size", &[])
        .expect("batch size");
    assert_eq!(reads.sum, 3.0, "{text}");
    assert!(!text.contains(&id), "job ids must never be metric labels");

    redis.kill();
    let started = Instant::now();
    let r = worker.get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.error_code(), "redis_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        worker.get("/healthz").await.status,
        StatusCode::OK,
        "liveness must not depend on redis"
    );
}
