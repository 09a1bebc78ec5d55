//! The worker's `--metrics-listen` endpoints against a real worker: counts
//! after real jobs (one success path, one permanent failure), readiness
//! following Redis.

use std::time::{Duration, Instant};

use e2e::{Api, Client, ModelsDir, RedisServer, StatusCode, Worker, free_port, unique_namespace};
use serde_json::json;

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

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

    let m = worker.get("/metrics").await.text;
    let finished = "worker_jobs_finished_total";
    assert_eq!(
        sample(
            &m,
            finished,
            &[
                "model=\"mlp128\"",
                "status=\"succeeded\"",
                "reason=\"none\""
            ]
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            finished,
            &[
                "model=\"inf\"",
                "status=\"failed\"",
                "reason=\"non_finite_output\""
            ]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "worker_inference_seconds_count", &["model=\"mlp128\""]),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "worker_queue_wait_seconds_count", &["model=\"inf\""]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "worker_batch_size_count", &[]), Some(3.0), "{m}");
    assert!(
        m.contains("worker_inference_seconds_bucket"),
        "histograms need explicit buckets: {m}"
    );
    assert!(!m.contains(&id), "job ids must never be metric labels");

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
