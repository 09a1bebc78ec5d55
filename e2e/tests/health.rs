//! Liveness and readiness of the API and of a worker, against a Redis that
//! is killed and comes back: `/readyz` reports the workers with a fresh
//! heartbeat (per model on the operator listener, as a count on the public
//! one), flips to 503 `redis_unavailable` within seconds of Redis going away
//! and back to 200 when it returns; `/healthz` never depends on Redis;
//! workers going away leave the API ready.

use std::time::{Duration, Instant};

use e2e::prom::Scrape;
use e2e::{Api, Client, RedisServer, Reply, StatusCode, Worker, free_port, unique_namespace};

const MODELS: [&str; 3] = ["breast_cancer", "mlp128", "two_input"];

/// GETs `path` until `ok` holds for the reply, or panics after `within`.
async fn poll(c: &Client, path: &str, within: Duration, ok: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = Instant::now() + within;
    loop {
        let r = c.get(path).await;
        if ok(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{}{path} not as expected after {within:?}: {} {}",
            c.base,
            r.status,
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn workers(r: &Reply, model: &str) -> Option<u64> {
    r.json["models"][model]["workers"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_and_reports_workers_per_model() {
    let mut redis = RedisServer::start();
    let ns = unique_namespace("health");
    let api = Api::spawn(
        &redis.url(),
        &ns,
        &["--redis-timeout-ms", "500", "--ops-listen", "127.0.0.1:0"],
    );
    let public = api.client();
    // The per-model detail is on the operator listener.
    let c = api.ops_client();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut worker = Worker::spawn(
        &redis.url(),
        &ns,
        &[
            "--metrics-listen",
            &listen,
            "--redis-timeout-ms",
            "500",
            "--block-ms",
            "300",
            // A restarted Redis without persistence is empty: re-publish soon.
            "--publish-interval-secs",
            "1",
        ],
    );
    let wc = Client::new(&format!("http://{listen}"));
    public
        .wait_for_models(&MODELS, Duration::from_secs(30))
        .await;

    // ------------------------------------------------------ all is well
    let r = poll(&c, "/readyz", Duration::from_secs(10), |r| {
        r.status == StatusCode::OK && MODELS.iter().all(|m| workers(r, m) == Some(1))
    })
    .await;
    assert_eq!(r.json["status"], "ready", "{}", r.text);
    assert_eq!(r.json["redis"], "ok", "{}", r.text);
    assert_eq!(r.json["worker_heartbeat_window_seconds"], 10, "{}", r.text);
    for m in MODELS {
        let age = r.json["models"][m]["last_heartbeat_age_seconds"]
            .as_f64()
            .unwrap_or_else(|| panic!("no heartbeat age for {m}: {}", r.text));
        assert!((0.0..10.0).contains(&age), "{m}: {age}");
    }
    assert_eq!(
        r.json["models"].as_object().map(|o| o.len()),
        Some(MODELS.len()),
        "{}",
        r.text
    );
    assert_eq!(
        r.json["workers"], 1,
        "one worker serves all three: {}",
        r.text
    );
    // The public listener: the same readiness, no model names.
    let r = public.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json,
        serde_json::json!({"status": "ready", "redis": "ok",
                           "worker_heartbeat_window_seconds": 10, "workers": 1}),
        "{}",
        r.text
    );

    let r = wc.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "ready");
    assert_eq!(r.json["redis"], "ok");
    assert_eq!(r.json["models_loaded"], MODELS.len());
    assert_eq!(r.json["models"], serde_json::json!(MODELS));
    assert_eq!(
        r.json["consumer"].as_str(),
        Some(worker.consumer_name(Duration::from_secs(5)).as_str())
    );
    for client in [&public, &c, &wc] {
        let r = client.get("/healthz").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json, serde_json::json!({"status": "ok"}));
    }

    // ----------------------------------------------------- Redis is gone
    redis.kill();
    let gone = Instant::now();
    for client in [&public, &c, &wc] {
        let r = poll(client, "/readyz", Duration::from_secs(5), |r| {
            r.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await;
        assert_eq!(r.error_code(), "redis_unavailable");
        assert_eq!(
            client.get("/healthz").await.status,
            StatusCode::OK,
            "liveness must not depend on redis"
        );
    }
    assert!(
        gone.elapsed() < Duration::from_secs(5),
        "{:?}",
        gone.elapsed()
    );
    // The API's metrics still answer, without the queue gauges it cannot
    // sample, and count the failed Redis calls.
    let r = c.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    let m = Scrape::parse(&r.text).expect("API scrape parses");
    assert_eq!(m.find("onnxq_stream_length", &[]).count(), 0, "{}", r.text);
    assert!(
        m.sum("onnxq_redis_errors_total", &[("op", "readyz")]) >= 1.0,
        "{}",
        r.text
    );
    assert!(
        m.sum("onnxq_redis_errors_total", &[("op", "stream_stats")]) >= 1.0,
        "{}",
        r.text
    );

    // ------------------------------------------------------ Redis is back
    redis.restart();
    let r = poll(&c, "/readyz", Duration::from_secs(15), |r| {
        r.status == StatusCode::OK && MODELS.iter().all(|m| workers(r, m) == Some(1))
    })
    .await;
    assert_eq!(r.json["status"], "ready", "{}", r.text);
    poll(&wc, "/readyz", Duration::from_secs(15), |r| {
        r.status == StatusCode::OK
    })
    .await;
    let m = Scrape::parse(&wc.get("/metrics").await.text).expect("worker scrape parses");
    assert!(
        m.sum("onnxq_redis_errors_total", &[]) >= 1.0,
        "the worker counts the Redis calls that failed"
    );
    assert!(
        m.find("onnxq_redis_errors_total", &[])
            .all(|s| s.labels.keys().eq(["op"])),
        "op is the only label"
    );

    // ------------------------------------- workers gone, the API is ready
    worker.proc.signal("TERM");
    assert!(
        worker.proc.wait_exit(Duration::from_secs(15)).is_some(),
        "worker did not stop"
    );
    let r = c.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for m in MODELS {
        assert_eq!(
            workers(&r, m),
            Some(0),
            "a stopped worker withdraws its heartbeat: {}",
            r.text
        );
    }
}
