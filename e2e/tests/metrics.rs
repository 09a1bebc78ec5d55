//! `/metrics` of the API and of a worker after a known run of jobs: two
//! successes, one failure at inference (a NaN/infinite output), one job
//! canceled while it waited, one idempotent repeat and two rejected
//! submissions. Every counter, histogram count and queue gauge is checked
//! for its exact value and label set, from a properly parsed scrape.

use std::time::{Duration, Instant};

use e2e::prom::Scrape;
use e2e::{Api, Client, ModelsDir, RedisServer, StatusCode, Worker, free_port, unique_namespace};
use serde_json::{Value, json};

const PREDICT_ROUTE: &str = "/v1/models/{model}/predict";

fn row(v: f32) -> Value {
    json!({ "features": vec![v; 128] })
}

async fn scrape(c: &Client) -> (Scrape, String) {
    let r = c.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("text/plain"), "content type {ct}");
    let parsed = Scrape::parse(&r.text).unwrap_or_else(|e| panic!("{e}\n{}", r.text));
    (parsed, r.text)
}

/// Scrapes until `ready` holds (the API reuses a queue sample for up to a
/// second), then returns that scrape.
async fn scrape_until(c: &Client, what: &str, ready: impl Fn(&Scrape) -> bool) -> (Scrape, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, text) = scrape(c).await;
        if ready(&s) {
            return (s, text);
        }
        assert!(Instant::now() < deadline, "{what} never held:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_run_exactly() {
    let redis = RedisServer::start();
    let ns = unique_namespace("metrics");
    let models = ModelsDir::with(&[
        ("mlp128", "mlp128.onnx"),
        ("inf", "testdata/inf_output.onnx"),
    ]);
    let api = Api::spawn(&redis.url(), &ns, &["--ops-listen", "127.0.0.1:0"]);
    let c = api.client();
    // No trimming during the test, so stream lengths are exact.
    let worker_args = ["--trim-interval-secs", "3600", "--block-ms", "200"];

    // A first worker publishes the models and joins their consumer groups,
    // then shuts down cleanly: from here on nobody serves the models.
    {
        let mut first = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &worker_args);
        c.wait_for_models(&["mlp128", "inf"], Duration::from_secs(30))
            .await;
        first.proc.signal("TERM");
        assert!(
            first.proc.wait_exit(Duration::from_secs(15)).is_some(),
            "first worker did not stop"
        );
    }

    // With no worker: two jobs queue up, one of them is canceled, two
    // submissions are refused.
    let a_submitted = Instant::now();
    let a = c.submit("mlp128", &row(0.5)).await;
    let b = c.submit("mlp128", &row(0.25)).await;
    let r = c.cancel(&b).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "canceled");
    let r = c
        .predict("mlp128", &json!({ "features": [1.0, 2.0] }))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = c.predict("no_such_model", &row(0.5)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    let (m, text) = scrape_until(&c, "two entries in the mlp128 stream", |m| {
        m.value("onnxq_stream_length", &[("model", "mlp128")]) == Some(2.0)
    })
    .await;
    for (name, model, want) in [
        ("onnxq_stream_length", "mlp128", 2.0),
        ("onnxq_stream_lag", "mlp128", 2.0),
        ("onnxq_stream_pending", "mlp128", 0.0),
        ("onnxq_stream_oldest_pending_age_seconds", "mlp128", 0.0),
        // Redis registers a consumer with its first delivery: the first
        // worker never got one.
        ("onnxq_stream_consumers", "mlp128", 0.0),
        ("onnxq_workers_ready", "mlp128", 0.0),
        ("onnxq_stream_length", "inf", 0.0),
        ("onnxq_stream_lag", "inf", 0.0),
        ("onnxq_workers_ready", "inf", 0.0),
    ] {
        assert_eq!(
            m.value(name, &[("model", model)]),
            Some(want),
            "{name}{{model={model}}}:\n{text}"
        );
    }
    assert_eq!(
        m.types.get("onnxq_stream_lag").map(String::as_str),
        Some("gauge")
    );
    assert_eq!(m.value("onnxq_delayed_jobs", &[]), Some(0.0), "{text}");
    assert_eq!(m.value("onnxq_dead_letters", &[]), Some(0.0), "{text}");
    // Workers are down, the API still takes jobs: ready, with the detail.
    let r = api.ops_client().get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["models"]["mlp128"]["workers"], 0, "{}", r.text);

    // Job A has waited at least this long when a worker comes.
    let min_wait = Duration::from_millis(600);
    tokio::time::sleep(min_wait.saturating_sub(a_submitted.elapsed())).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = worker_args.to_vec();
    args.extend(["--metrics-listen", &listen]);
    let _worker = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &args);
    let wc = Client::new(&format!("http://{listen}"));

    let job = c.wait_terminal(&a, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let first = c.predict_with_key("mlp128", &row(0.75), "metrics-c").await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    let again = c.predict_with_key("mlp128", &row(0.75), "metrics-c").await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
    assert_eq!(again.json["job_id"], first.json["job_id"]);
    let cid = first.json["job_id"].as_str().expect("job id").to_owned();
    let job = c.wait_terminal(&cid, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let e = c.submit("inf", &json!({ "features": [1.0] })).await;
    let job = c.wait_terminal(&e, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "non_finite_output", "{job}");

    // ---------------------------------------------------------------- worker
    let (w, wtext) = scrape_until(&wc, "the canceled job counted", |w| {
        w.value(
            "onnxq_worker_jobs_finished_total",
            &[
                ("model", "mlp128"),
                ("kind", "predict"),
                ("status", "canceled"),
                ("reason", "none"),
            ],
        ) == Some(1.0)
    })
    .await;
    let finished = |model: &str, status: &str, reason: &str| {
        w.value(
            "onnxq_worker_jobs_finished_total",
            &[
                ("model", model),
                ("kind", "predict"),
                ("status", status),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(
        finished("mlp128", "succeeded", "none"),
        Some(2.0),
        "{wtext}"
    );
    assert_eq!(
        finished("inf", "failed", "non_finite_output"),
        Some(1.0),
        "{wtext}"
    );
    assert_eq!(
        w.sum("onnxq_worker_jobs_finished_total", &[]),
        4.0,
        "no other outcome: {wtext}"
    );
    assert_eq!(
        w.types
            .get("onnxq_worker_jobs_finished_total")
            .map(String::as_str),
        Some("counter")
    );

    // Histograms: one sample per started job (A and C, E); the canceled job
    // B never started.
    let hist = |name: &str, model: &str| {
        w.histogram(name, &[("model", model)])
            .unwrap_or_else(|| panic!("no {name}{{model={model}}}:\n{wtext}"))
    };
    for name in [
        "onnxq_worker_queue_wait_seconds",
        "onnxq_worker_run_seconds",
        "onnxq_worker_end_to_end_seconds",
        "onnxq_worker_inference_seconds",
    ] {
        assert_eq!(
            w.types.get(name).map(String::as_str),
            Some("histogram"),
            "{name}"
        );
        assert_eq!(hist(name, "mlp128").count, 2.0, "{name} mlp128: {wtext}");
        assert_eq!(hist(name, "inf").count, 1.0, "{name} inf: {wtext}");
        // The catalogue's explicit buckets, not a summary.
        for le in [0.0005, 0.001, 0.01, 0.1, 1.0, 10.0, 60.0] {
            assert!(hist(name, "mlp128").bucket(le).is_some(), "{name} le={le}");
        }
    }
    // A waited at least `min_wait` for a worker, C did not: exactly one of
    // them lies above the bucket below that.
    let wait = hist("onnxq_worker_queue_wait_seconds", "mlp128");
    assert!(wait.sum >= min_wait.as_secs_f64(), "{wait:?}");
    assert!(wait.bucket(0.5).is_some_and(|n| n <= 1.0), "{wait:?}");
    assert_eq!(wait.bucket(60.0), Some(2.0), "{wait:?}");
    let e2e = hist("onnxq_worker_end_to_end_seconds", "mlp128");
    assert!(e2e.sum >= min_wait.as_secs_f64(), "{e2e:?}");
    // Each job ran alone: one ONNX Runtime run of one row each.
    let rows = w
        .histogram("onnxq_worker_inference_batch_rows", &[("model", "mlp128")])
        .expect("batch rows");
    assert_eq!((rows.count, rows.sum), (2.0, 2.0), "{rows:?}");
    assert_eq!(rows.bucket(1.0), Some(2.0), "{rows:?}");
    let rows = w
        .histogram("onnxq_worker_inference_batch_rows", &[("model", "inf")])
        .expect("batch rows");
    assert_eq!((rows.count, rows.sum), (1.0, 1.0), "{rows:?}");
    // Every delivered entry passed through a read, the canceled one too.
    let reads = w
        .histogram("onnxq_worker_batch_size", &[])
        .expect("batch size");
    assert_eq!(reads.sum, 4.0, "{reads:?}");
    assert!(reads.bucket(256.0).is_some(), "{reads:?}");

    assert_eq!(
        w.value("onnxq_worker_models_loaded", &[]),
        Some(2.0),
        "{wtext}"
    );
    for model in ["mlp128", "inf"] {
        assert_eq!(
            w.value("onnxq_worker_model_swaps_total", &[("model", model)]),
            Some(0.0),
            "{wtext}"
        );
    }
    for name in [
        "onnxq_worker_job_retries_total",
        "onnxq_worker_jobs_dead_lettered_total",
        "onnxq_worker_jobs_reclaimed_total",
        "onnxq_worker_results_discarded_total",
        "onnxq_redis_errors_total",
    ] {
        assert_eq!(w.sum(name, &[]), 0.0, "{name}: {wtext}");
    }

    // ------------------------------------------------------------------- API
    let (m, text) = scrape_until(&c, "the worker's heartbeat and an empty backlog", |m| {
        m.value("onnxq_workers_ready", &[("model", "mlp128")]) == Some(1.0)
            && m.value("onnxq_stream_length", &[("model", "inf")]) == Some(1.0)
    })
    .await;
    let value = |name: &str, labels: &[(&str, &str)]| m.value(name, labels);
    assert_eq!(
        value(
            "onnxq_jobs_submitted_total",
            &[("model", "mlp128"), ("kind", "predict")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            "onnxq_jobs_submitted_total",
            &[("model", "inf"), ("kind", "predict")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("onnxq_jobs_deduplicated_total", &[("model", "mlp128")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("onnxq_jobs_canceled_total", &[("model", "mlp128")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "onnxq_jobs_rejected_total",
            &[("model", "mlp128"), ("reason", "invalid_input")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "onnxq_jobs_rejected_total",
            &[("model", "unknown"), ("reason", "model_not_found")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(m.sum("onnxq_jobs_rejected_total", &[]), 2.0, "{text}");

    let http = |method: &str, route: &str, status: &str| {
        value(
            "onnxq_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(http("POST", PREDICT_ROUTE, "202"), Some(5.0), "{text}");
    assert_eq!(http("POST", PREDICT_ROUTE, "422"), Some(1.0), "{text}");
    assert_eq!(http("POST", PREDICT_ROUTE, "404"), Some(1.0), "{text}");
    assert_eq!(
        http("POST", "/v1/jobs/{id}/cancel", "200"),
        Some(1.0),
        "{text}"
    );
    let latency = m
        .histogram(
            "onnxq_http_request_duration_seconds",
            &[
                ("method", "POST"),
                ("route", PREDICT_ROUTE),
                ("status", "202"),
            ],
        )
        .expect("predict latency");
    assert_eq!(latency.count, 5.0, "{latency:?}");
    assert!(latency.bucket(0.0005).is_some() && latency.bucket(60.0).is_some());

    for (name, model, want) in [
        ("onnxq_stream_length", "mlp128", 3.0),
        ("onnxq_stream_length", "inf", 1.0),
        ("onnxq_stream_lag", "mlp128", 0.0),
        ("onnxq_stream_lag", "inf", 0.0),
        ("onnxq_stream_pending", "mlp128", 0.0),
        ("onnxq_stream_pending", "inf", 0.0),
        ("onnxq_stream_oldest_pending_age_seconds", "mlp128", 0.0),
        ("onnxq_stream_consumers", "mlp128", 1.0),
        ("onnxq_stream_consumers", "inf", 1.0),
        ("onnxq_workers_ready", "mlp128", 1.0),
        ("onnxq_workers_ready", "inf", 1.0),
    ] {
        assert_eq!(
            m.value(name, &[("model", model)]),
            Some(want),
            "{name}{{model={model}}}:\n{text}"
        );
    }
    assert_eq!(m.value("onnxq_delayed_jobs", &[]), Some(0.0), "{text}");
    assert_eq!(m.value("onnxq_dead_letters", &[]), Some(0.0), "{text}");
    assert_eq!(m.sum("onnxq_redis_errors_total", &[]), 0.0, "{text}");

    for id in [&a, &b, &cid, &e] {
        assert!(
            !text.contains(id.as_str()) && !wtext.contains(id.as_str()),
            "job ids must never be labels"
        );
    }
}

/// A transient failure on every attempt: retried with back-off, then
/// dead-lettered. Retries and dead letters are counted with their reason, the
/// job is finished once, and the API's dead-letter gauge shows the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_dead_letters_are_counted_by_reason() {
    let redis = RedisServer::start();
    let ns = unique_namespace("metrics-dead");
    let models = ModelsDir::with(&[("flaky", "testdata/flaky_broken.onnx")]);
    let listen = format!("127.0.0.1:{}", free_port());
    let _worker = Worker::spawn_with_models(
        &redis.url(),
        &ns,
        &models.path,
        &[
            "--max-attempts",
            "3",
            "--retry-base-ms",
            "50",
            "--retry-max-ms",
            "100",
            "--block-ms",
            "200",
            "--metrics-listen",
            &listen,
        ],
    );
    let api = Api::spawn(&redis.url(), &ns, &["--ops-listen", "127.0.0.1:0"]);
    let c = api.client();
    c.wait_for_models(&["flaky"], Duration::from_secs(30)).await;
    let wc = Client::new(&format!("http://{listen}"));

    let id = c
        .submit("flaky", &json!({ "features": [1.0, 2.0, 3.0, 4.0] }))
        .await;
    let job = c.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 3, "{job}");
    assert_eq!(job["error"]["code"], "inference_error", "{job}");

    let (w, wtext) = scrape(&wc).await;
    let flaky = [("model", "flaky"), ("reason", "inference_error")];
    assert_eq!(
        w.value("onnxq_worker_job_retries_total", &flaky),
        Some(2.0),
        "{wtext}"
    );
    assert_eq!(
        w.value("onnxq_worker_jobs_dead_lettered_total", &flaky),
        Some(1.0),
        "{wtext}"
    );
    assert_eq!(
        w.value(
            "onnxq_worker_jobs_finished_total",
            &[
                ("model", "flaky"),
                ("kind", "predict"),
                ("status", "failed"),
                ("reason", "inference_error")
            ]
        ),
        Some(1.0),
        "counted once, not per attempt: {wtext}"
    );
    assert_eq!(
        w.sum("onnxq_worker_jobs_finished_total", &[]),
        1.0,
        "{wtext}"
    );
    let count = |name: &str| {
        w.histogram(name, &[("model", "flaky")])
            .unwrap_or_else(|| panic!("no {name}:\n{wtext}"))
            .count
    };
    // Three attempts: three starts, three failed runs, three outcomes
    // written; one end.
    assert_eq!(count("onnxq_worker_queue_wait_seconds"), 3.0, "{wtext}");
    assert_eq!(count("onnxq_worker_inference_seconds"), 3.0, "{wtext}");
    assert_eq!(count("onnxq_worker_run_seconds"), 3.0, "{wtext}");
    assert_eq!(count("onnxq_worker_end_to_end_seconds"), 1.0, "{wtext}");

    let (m, text) = scrape_until(&c, "one dead letter", |m| {
        m.value("onnxq_dead_letters", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(m.value("onnxq_delayed_jobs", &[]), Some(0.0), "{text}");
    assert_eq!(
        m.value("onnxq_stream_pending", &[("model", "flaky")]),
        Some(0.0),
        "{text}"
    );
}
