//! "A 202 is a promise", API side, through real processes: cancel,
//! idempotent submits, deadlines, bounded queues (429), load shedding (503),
//! Redis outages, graceful shutdown, and a seeded fuzz run that must never
//! produce a 5xx or a non-JSON error.
//!
//! Tests that need jobs to stay queued run without a worker and publish the
//! model signatures themselves (what a worker does at start-up), so the API
//! validates against the same signatures the demo models have.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{Api, Client, RedisServer, Reply, StatusCode, Worker, unique_namespace};
use serde_json::{Value, json};
use shared::Keys;
use shared::model::ModelInfo;
use shared::queue::consume;
use shared::tensor::{DataType, TensorSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    }
}

/// The signatures of the demo models `mlp128` and `breast_cancer`.
fn demo_signatures() -> Vec<ModelInfo> {
    let info = |name: &str, inputs, outputs| ModelInfo {
        name: name.into(),
        version: "0000000000000000".into(),
        inputs,
        outputs,
        updated_at_ms: shared::time::now_ms(),
    };
    vec![
        info(
            "mlp128",
            vec![spec("features", DataType::Fp32, &[-1, 128])],
            vec![spec("prediction", DataType::Fp32, &[-1, 1])],
        ),
        info(
            "breast_cancer",
            vec![spec("features", DataType::Fp32, &[-1, 30])],
            vec![
                spec("label", DataType::Int64, &[-1]),
                spec("probabilities", DataType::Fp32, &[-1, 2]),
            ],
        ),
    ]
}

/// Publishes the demo signatures as a worker would, without running one.
async fn publish_signatures(redis: &RedisServer, ns: &str) {
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    for info in demo_signatures() {
        consume::publish_model(&mut conn, &Keys::new(ns), &info)
            .await
            .expect("publish signature");
    }
}

fn row(n: usize, v: f32) -> Value {
    json!({ "features": vec![v; n] })
}

fn conn(redis: &RedisServer) -> redis::Connection {
    redis.client().get_connection().expect("redis connection")
}

fn xlen(redis: &RedisServer, key: &str) -> usize {
    redis::cmd("XLEN")
        .arg(key)
        .query(&mut conn(redis))
        .expect("XLEN")
}

/// Entries of the `workers` group delivered but not acknowledged.
fn pending(redis: &RedisServer, stream: &str) -> usize {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("workers")
        .query(&mut conn(redis))
        .expect("XPENDING");
    match reply {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => usize::try_from(*n).unwrap_or(usize::MAX),
            other => panic!("unexpected XPENDING reply {other:?}"),
        },
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

/// The value of one Prometheus sample whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with('{') || rest.starts_with(' '))
        .find(|rest| {
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|rest| rest.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn retry_after(r: &Reply) -> u64 {
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After: {:?}", r.headers))
}

// ---------------------------------------------------------------- cancel

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_queued_job_for_good_and_wakes_its_long_polls() {
    let redis = RedisServer::start();
    let ns = unique_namespace("cancel");
    publish_signatures(&redis, &ns).await;
    let api = Api::spawn(&redis.url(), &ns, &["--canceled-ttl-secs", "600"]);
    let c = api.client();
    let a = c.submit("mlp128", &row(128, 0.5)).await;

    // The long-poll waits on another API process: only the published event
    // can reach it.
    let other = Api::spawn(&redis.url(), &ns, &[]);
    let poll = {
        let (c, a) = (other.client(), a.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            (c.job(&a, Some(20.0)).await, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The deprecated spelling: the same answer, and headers that say so.
    let r = c.delete(&format!("/v1/jobs/{a}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.headers["deprecation"], "@1796169600");
    assert_eq!(
        r.headers["link"],
        format!("</v1/jobs/{a}/cancel>; rel=\"successor-version\"").as_str()
    );
    assert_eq!(r.json["job_id"], a.as_str());
    assert_eq!(r.json["status"], "canceled");
    assert_eq!(r.json["attempts"], 0);
    assert!(r.json["finished_at"].is_string(), "{}", r.text);
    assert!(r.json["started_at"].is_null(), "{}", r.text);

    let (polled, took) = poll.await.expect("long-poll task");
    assert_eq!(polled.status, StatusCode::OK, "{}", polled.text);
    assert_eq!(polled.json["status"], "canceled");
    assert!(
        took < Duration::from_secs(5),
        "the long-poll slept through the cancel ({took:?})"
    );
    // DELETE answers with exactly what GET shows.
    assert_eq!(c.job(&a, None).await.json, r.json);

    let ttl: i64 = redis::cmd("TTL")
        .arg(e2e::job_key(&ns, &a.to_string()))
        .query(&mut conn(&redis))
        .expect("TTL");
    assert!(
        (500..=600).contains(&ttl),
        "canceled TTL {ttl}, expected --canceled-ttl-secs"
    );

    let again = c.cancel(&a).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert_eq!(again.error_code(), "job_not_cancelable");
    assert!(
        again.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("canceled")),
        "{}",
        again.text
    );
    let unknown = c.cancel(uuid::Uuid::now_v7()).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error_code(), "job_not_found");
    let bad = c.delete("/v1/jobs/not-a-uuid").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_code(), "invalid_job_id");

    // A worker started now reads A's entry before B's (stream order): it must
    // acknowledge A without running it, and run B.
    let b = c.submit("mlp128", &row(128, 0.25)).await;
    let _worker = Worker::spawn(&redis.url(), &ns, &[]);
    let jb = c.wait_terminal(&b, Duration::from_secs(30)).await;
    assert_eq!(jb["status"], "succeeded", "{jb}");
    let ja = c.job(&a, None).await;
    assert_eq!(ja.json["status"], "canceled", "{}", ja.text);
    assert_eq!(ja.json["attempts"], 0, "a canceled job was started");
    assert!(ja.json["started_at"].is_null(), "{}", ja.text);
    assert!(ja.json["result"].is_null(), "{}", ja.text);
    let stream = e2e::keys(&ns).stream("mlp128", 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pending(&redis, &stream) > 0 {
        assert!(
            Instant::now() < deadline,
            "the canceled job's entry stays unacknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let done = c.cancel(&b).await;
    assert_eq!(done.status, StatusCode::CONFLICT, "{}", done.text);
    assert_eq!(done.error_code(), "job_not_cancelable");
    assert!(done.text.contains("succeeded"), "{}", done.text);

    let m = c.get("/metrics").await.text;
    assert_eq!(
        metric(&m, "onnxq_jobs_canceled_total", &[("model", "mlp128")]),
        Some(1.0),
        "{m}"
    );
}

// ----------------------------------------------------------- idempotency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_first_job_per_model() {
    let redis = RedisServer::start();
    let ns = unique_namespace("idem");
    publish_signatures(&redis, &ns).await;
    let api = Api::spawn(&redis.url(), &ns, &["--result-ttl-secs", "1000"]);
    let c = api.client();
    let body = row(128, 0.5);

    let first = c.predict_with_key("mlp128", &body, "order-17").await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    let id = first.json["job_id"].as_str().expect("job_id").to_owned();
    assert!(first.headers.get("idempotent-replayed").is_none());

    let second = c.predict_with_key("mlp128", &body, "order-17").await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{}", second.text);
    assert_eq!(second.json["job_id"], id.as_str());
    assert_eq!(second.json["status"], "queued");
    assert_eq!(
        second.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    assert_eq!(
        second
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );

    // Twenty simultaneous retries still make one job: the check and the
    // write are one atomic step.
    let racers: Vec<_> = (0..20)
        .map(|_| {
            let (c, body) = (c.clone(), body.clone());
            tokio::spawn(async move { c.predict_with_key("mlp128", &body, "order-18").await })
        })
        .collect();
    let mut ids = HashSet::new();
    for r in racers {
        let r = r.await.expect("racer");
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        ids.insert(r.json["job_id"].as_str().expect("job_id").to_owned());
    }
    assert_eq!(ids.len(), 1, "one key, several jobs: {ids:?}");
    let mlp_stream = e2e::keys(&ns).stream("mlp128", 0);
    assert_eq!(xlen(&redis, &mlp_stream), 2, "one entry per key");

    let reused = c
        .predict_with_key("mlp128", &row(128, 0.75), "order-17")
        .await;
    assert_eq!(
        reused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reused.text
    );
    assert_eq!(reused.error_code(), "idempotency_key_reused");
    // The raw bytes are compared: the same JSON spelled differently is a
    // different body.
    let spaced = serde_json::to_vec_pretty(&body).expect("json");
    let r = c
        .send(
            c.http
                .post(format!("{}/v1/models/mlp128/predict", c.base))
                .header("content-type", "application/json")
                .header("idempotency-key", "order-17")
                .body(spaced),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(xlen(&redis, &mlp_stream), 2);

    // Keys are per model.
    let other = c
        .predict_with_key("breast_cancer", &row(30, 0.5), "order-17")
        .await;
    assert_eq!(other.status, StatusCode::ACCEPTED, "{}", other.text);
    assert_ne!(other.json["job_id"], id.as_str());
    assert!(other.headers.get("idempotent-replayed").is_none());
    assert_eq!(xlen(&redis, &e2e::keys(&ns).stream("breast_cancer", 0)), 1);

    for bad in ["x".repeat(257), String::new()] {
        let r = c.predict_with_key("mlp128", &body, &bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.error_code(), "invalid_idempotency_key");
    }
    assert_eq!(
        c.predict_with_key("mlp128", &row(128, 0.1), &"k".repeat(256))
            .await
            .status,
        StatusCode::ACCEPTED
    );

    // Remembered for --result-ttl-secs.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ns}:*:idem:mlp128:*"))
        .query(&mut conn(&redis))
        .expect("KEYS");
    assert_eq!(keys.len(), 3, "{keys:?}");
    for k in keys {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&k)
            .query(&mut conn(&redis))
            .expect("TTL");
        assert!((900..=1000).contains(&ttl), "{k}: TTL {ttl}");
    }

    let m = c.get("/metrics").await.text;
    let count = |name, model| metric(&m, name, &[("model", model)]);
    assert_eq!(
        count("onnxq_jobs_submitted_total", "mlp128"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        count("onnxq_jobs_deduplicated_total", "mlp128"),
        Some(20.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "onnxq_jobs_rejected_total",
            &[("model", "mlp128"), ("reason", "idempotency_key_reused")]
        ),
        Some(2.0),
        "{m}"
    );
}

// -------------------------------------------------------------- deadline

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_not_started_before_its_deadline_fails_with_deadline_exceeded() {
    let redis = RedisServer::start();
    let ns = unique_namespace("deadline");
    publish_signatures(&redis, &ns).await;
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let c = api.client();

    let mut late = row(128, 0.5);
    late["deadline"] = json!(1);
    let late = c.submit("mlp128", &late).await;
    let view = c.job(&late, None).await.json;
    let (created, deadline) = (
        view["created_at"].as_str().expect("created_at"),
        view["deadline"].as_str().expect("deadline in the job view"),
    );
    assert!(deadline > created && deadline.ends_with('Z'), "{view}");

    let in_time = shared::time::rfc3339_ms(shared::time::now_ms() + 300_000);
    let mut ok = row(128, 0.5);
    ok["deadline"] = json!(in_time);
    let ok = c.submit("mlp128", &ok).await;
    let mut none = row(128, 0.5);
    none["deadline"] = Value::Null;
    let none = c.submit("mlp128", &none).await;
    assert!(c.job(&none, None).await.json["deadline"].is_null());

    for bad in [
        json!(0),
        json!(-1),
        json!(604_801),
        json!(1e300),
        json!("yesterday"),
        json!("2001-01-01T00:00:00Z"),
        json!("2999-01-01T00:00:00Z"),
        json!(true),
        json!([1]),
    ] {
        let mut body = row(128, 0.5);
        body["deadline"] = bad.clone();
        let r = c.predict("mlp128", &body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.text
        );
        assert_eq!(r.error_code(), "invalid_input", "{bad}");
        assert!(r.text.contains("deadline"), "{bad}: {}", r.text);
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _worker = Worker::spawn(&redis.url(), &ns, &[]);
    let job = c.wait_terminal(&late, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "deadline_exceeded", "{job}");
    let attempts = job["attempts"].as_u64().expect("attempts");
    assert!(attempts <= 1, "{job}");
    assert!(job["result"].is_null(), "{job}");
    for id in [ok, none] {
        let job = c.wait_terminal(&id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
}

// -------------------------------------------------------------- overload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_until_workers_drain_it() {
    let redis = RedisServer::start();
    let ns = unique_namespace("full");
    publish_signatures(&redis, &ns).await;
    let api = Api::spawn(&redis.url(), &ns, &["--max-queue-depth", "5"]);
    let c = api.client();

    let keyed = c.predict_with_key("mlp128", &row(128, 0.0), "k1").await;
    assert_eq!(keyed.status, StatusCode::ACCEPTED, "{}", keyed.text);
    let mut accepted = vec![keyed.json["job_id"].as_str().expect("job_id").to_owned()];
    for i in 1..5 {
        accepted.push(c.submit("mlp128", &row(128, i as f32)).await);
    }
    let r = c.predict("mlp128", &row(128, 9.0)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.error_code(), "queue_full");
    assert!(retry_after(&r) >= 1);
    // Refused, not dropped: the queue holds exactly the five accepted jobs.
    let stream = e2e::keys(&ns).stream("mlp128", 0);
    assert_eq!(xlen(&redis, &stream), 5);
    // The bound is per model.
    c.submit("breast_cancer", &row(30, 0.5)).await;
    // A retry of an accepted job is an answer, not new work: a client whose
    // 202 got lost still learns its job id while the queue is full.
    let retry = c.predict_with_key("mlp128", &row(128, 0.0), "k1").await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.text);
    assert_eq!(retry.json["job_id"], accepted[0].as_str());

    let _worker = Worker::spawn(&redis.url(), &ns, &[]);
    for id in &accepted {
        let job = c.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let r = c.predict("mlp128", &row(128, 9.0)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "drained, yet: {}", r.text);

    let m = c.get("/metrics").await.text;
    assert_eq!(
        metric(
            &m,
            "onnxq_jobs_rejected_total",
            &[("model", "mlp128"), ("reason", "queue_full")]
        ),
        Some(1.0),
        "{m}"
    );
}

/// A request that holds its slot: a model upload whose body never ends.
async fn slow_upload(addr: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"POST /v1/models/slow/versions HTTP/1.1\r\nhost: x\r\n\
          content-type: application/octet-stream\r\ncontent-length: 1000\r\n\r\nonnx",
    )
    .await
    .expect("write");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_limit_requests_are_shed_with_503() {
    let redis = RedisServer::start();
    let ns = unique_namespace("shed");
    publish_signatures(&redis, &ns).await;
    let api = Api::spawn(
        &redis.url(),
        &ns,
        &["--max-concurrent-requests", "2", "--max-long-polls", "2"],
    );
    let c = api.client();
    let job = c.submit("mlp128", &row(128, 0.5)).await;
    let addr = api.base_url.trim_start_matches("http://").to_owned();

    // Waiting polls fill their own pool, not the request pool.
    let polls: Vec<_> = (0..2)
        .map(|_| {
            let (c, job) = (c.clone(), job.clone());
            tokio::spawn(async move { c.job(&job, Some(2.0)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = Instant::now();
    let r = c.job(&job, Some(1.0)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.error_code(), "overloaded");
    assert_eq!(retry_after(&r), 1);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "shedding must be immediate"
    );
    let r = c.job(&job, None).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a plain poll has its slots: {}",
        r.text
    );
    assert_eq!(
        c.predict("mlp128", &row(128, 0.5)).await.status,
        StatusCode::ACCEPTED
    );

    // Two requests in progress fill the request pool.
    let slow = [slow_upload(&addr).await, slow_upload(&addr).await];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let r = c.job(&job, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.error_code(), "overloaded");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "shedding must be immediate"
    );
    let r = c.predict("mlp128", &row(128, 0.5)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.error_code(), "overloaded");
    let r = c.get("/nope").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    // Probes and scrapes are never shed.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = c.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    }
    let m = c.get("/metrics").await.text;
    assert_eq!(
        metric(
            &m,
            "onnxq_jobs_rejected_total",
            &[("model", "mlp128"), ("reason", "overloaded")]
        ),
        Some(1.0),
        "{m}"
    );

    for p in polls {
        let r = p.await.expect("long-poll");
        assert_eq!(
            r.status,
            StatusCode::OK,
            "admitted requests complete: {}",
            r.text
        );
        assert_eq!(r.json["status"], "queued");
    }
    drop(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c.job(&job, None).await;
    assert_eq!(r.status, StatusCode::OK, "slots are given back: {}", r.text);
}

// ---------------------------------------------------------- redis outage

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_requests_get_a_quick_503_and_the_api_recovers() {
    let mut redis = RedisServer::start();
    let ns = unique_namespace("outage");
    publish_signatures(&redis, &ns).await;
    let mut api = Api::spawn(&redis.url(), &ns, &["--redis-timeout-ms", "500"]);
    let c = api.client();
    let job = c.submit("mlp128", &row(128, 0.5)).await;

    redis.kill();
    let budget = Duration::from_millis(2500);
    let id_path = format!("/v1/jobs/{job}");
    let wait_path = format!("/v1/jobs/{job}?wait=5");
    for _ in 0..2 {
        let cases: Vec<(&str, Reply)> = vec![
            ("predict", {
                let t = Instant::now();
                let r = c.predict("mlp128", &row(128, 0.5)).await;
                assert!(t.elapsed() < budget, "predict took {:?}", t.elapsed());
                r
            }),
            ("get job", {
                let t = Instant::now();
                let r = c.get(&id_path).await;
                assert!(t.elapsed() < budget, "get took {:?}", t.elapsed());
                r
            }),
            ("long-poll", {
                let t = Instant::now();
                let r = c.get(&wait_path).await;
                assert!(t.elapsed() < budget, "long-poll took {:?}", t.elapsed());
                r
            }),
            ("cancel", {
                let t = Instant::now();
                let r = c.delete(&id_path).await;
                assert!(t.elapsed() < budget, "cancel took {:?}", t.elapsed());
                r
            }),
            ("models", c.get("/v1/models").await),
            ("readyz", c.get("/readyz").await),
        ];
        for (what, r) in cases {
            assert_eq!(
                r.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{what}: {}",
                r.text
            );
            assert_eq!(r.error_code(), "redis_unavailable", "{what}");
            assert_eq!(retry_after(&r), 1, "{what}");
        }
        assert_eq!(c.get("/healthz").await.status, StatusCode::OK);
    }
    assert!(api.proc.try_exit().is_none(), "the api died with redis");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.get("/readyz").await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "not ready after redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restarted Redis is empty (no persistence): workers re-publish.
    publish_signatures(&redis, &ns).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let r = c.predict("mlp128", &row(128, 0.5)).await;
        if r.status == StatusCode::ACCEPTED {
            break r.json["job_id"].as_str().expect("job_id").to_owned();
        }
        assert!(Instant::now() < deadline, "cannot submit again: {}", r.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let r = c.job(&id, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = c.cancel(&id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

// ------------------------------------------------------ graceful shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_and_finishes_every_request_in_flight() {
    let redis = RedisServer::start();
    let ns = unique_namespace("drain");
    publish_signatures(&redis, &ns).await;
    let mut api = Api::spawn(&redis.url(), &ns, &[]);
    let c = api.client();
    let job = c.submit("mlp128", &row(128, 0.5)).await;
    let addr = api
        .base_url
        .strip_prefix("http://")
        .expect("http base url")
        .to_owned();

    // Twenty long-polls parked on a job nobody will run...
    let polls: Vec<_> = (0..20)
        .map(|_| {
            let (c, job) = (c.clone(), job.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let r = c
                    .http
                    .get(format!("{}/v1/jobs/{job}?wait=10", c.base))
                    .send()
                    .await;
                let r = match r {
                    Ok(r) => (r.status(), r.text().await.map_err(|e| e.to_string())),
                    Err(e) => panic!("long-poll got no answer: {e}"),
                };
                (r, t.elapsed())
            })
        })
        .collect();
    // ...and one upload stalled half way through its body.
    let body = serde_json::to_vec(&row(128, 0.5)).expect("json");
    let (head, tail) = body.split_at(body.len() / 2);
    let mut upload = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let request = format!(
        "POST /v1/models/mlp128/predict HTTP/1.1\r\nhost: {addr}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    upload
        .write_all(request.as_bytes())
        .await
        .expect("send head");
    upload.write_all(head).await.expect("send half the body");
    // ...and two connections without a request: one never sent anything,
    // one is kept alive after an answer.
    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let mut kept = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).await.expect("healthz answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(500)).await;

    api.proc.signal("TERM");
    for (what, conn) in [("silent", &mut silent), ("kept-alive", &mut kept)] {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "a {what} connection must be closed at shutdown, not held to its timeout"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match std::net::TcpStream::connect(&addr) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting after SIGTERM: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    for p in polls {
        let ((status, text), took) = p.await.expect("long-poll task");
        let text = text.expect("complete long-poll body");
        assert_eq!(status, StatusCode::OK, "{text}");
        let v: Value = serde_json::from_str(&text).expect("long-poll JSON");
        assert_eq!(v["status"], "queued");
        assert!(
            took < Duration::from_secs(5),
            "long-polls must answer at shutdown, not sleep out their wait ({took:?})"
        );
    }
    assert!(
        api.proc.try_exit().is_none(),
        "exited with a request still in flight"
    );

    upload.write_all(tail).await.expect("send the rest");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), upload.read_to_end(&mut response))
        .await
        .expect("the stalled upload is answered")
        .expect("read the answer");
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 202"),
        "stalled upload: {response}"
    );
    let json = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(json).expect("complete 202 body");
    assert!(v["job_id"].is_string(), "{v}");

    let code = api.proc.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(Some(0)), "exit after draining");
}

// ------------------------------------------------------------------ fuzz

/// xorshift64*: tiny, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Bytes a header value may carry (visible ASCII, space, tab, obs-text).
    fn header_bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                loop {
                    let b = self.next() as u8;
                    if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 {
                        break b;
                    }
                }
            })
            .collect()
    }

    /// A random JSON-ish value: valid JSON text, with numbers JSON allows
    /// but no model datatype holds.
    fn json(&mut self, depth: usize) -> String {
        const ATOMS: [&str; 16] = [
            "1e400",
            "-1e400",
            "1e39",
            "-0",
            "9e18",
            "9223372036854775808",
            "-2147483649",
            "0.5",
            "1",
            "null",
            "true",
            "\"x\"",
            "\"\"",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "1.5e-320",
        ];
        match self.below(if depth > 3 { 1 } else { 4 }) {
            0 => (*self.pick(&ATOMS)).to_owned(),
            1 => {
                let n = self.below(6);
                let items: Vec<String> = (0..n).map(|_| self.json(depth + 1)).collect();
                format!("[{}]", items.join(","))
            }
            2 => {
                const KEYS: [&str; 8] = [
                    "features", "inputs", "deadline", "name", "shape", "datatype", "data", "id",
                ];
                let n = self.below(4);
                let items: Vec<String> = (0..n)
                    .map(|_| format!("\"{}\":{}", self.pick(&KEYS), self.json(depth + 1)))
                    .collect();
                format!("{{{}}}", items.join(","))
            }
            _ => format!("[{}]", vec!["0.5"; self.below(200)].join(",")),
        }
    }
}

struct FuzzRequest {
    what: &'static str,
    method: reqwest::Method,
    path: String,
    content_type: Option<Vec<u8>>,
    idempotency_key: Option<Vec<u8>>,
    body: Vec<u8>,
}

fn valid_body(rng: &mut Rng) -> String {
    let v: Vec<String> = (0..128).map(|_| format!("{}", rng.below(100))).collect();
    format!("{{\"features\":[{}]}}", v.join(","))
}

fn two_input_body(rng: &mut Rng) -> String {
    const DTYPES: [&str; 7] = ["FP32", "INT64", "INT32", "BOOL", "FP64", "fp32", ""];
    const DATA: [&str; 8] = [
        "[1,2,3,4]",
        "[9e18]",
        "[1e400]",
        "[-0]",
        "[[1,2],[3,4]]",
        "[true]",
        "\"abc\"",
        "[]",
    ];
    const SHAPES: [&str; 7] = [
        "[1,4]", "[1,1]", "[-1,4]", "[]", "[9e18,1]", "[1,4,1]", "[0,4]",
    ];
    format!(
        r#"{{"inputs":[{{"name":"x","shape":{},"datatype":"{}","data":{}}},{{"name":"k","shape":{},"datatype":"{}","data":{}}}]}}"#,
        rng.pick(&SHAPES),
        rng.pick(&DTYPES),
        rng.pick(&DATA),
        rng.pick(&SHAPES),
        rng.pick(&DTYPES),
        rng.pick(&DATA),
    )
}

fn fuzz_request(rng: &mut Rng, job_ids: &[String]) -> FuzzRequest {
    const MODELS: [&str; 6] = ["mlp128", "two_input", "breast_cancer", "nope", "a:b", ".x"];
    const WAITS: [&str; 16] = [
        "",
        "0",
        "0.01",
        "0.2",
        "1",
        "-1",
        "1e400",
        "NaN",
        "inf",
        "abc",
        "%00",
        "%FF",
        "99999999999999999999",
        "0x10",
        "1&wait=2",
        "0.1&wait",
    ];
    const ODD_PATHS: [&str; 14] = [
        "/v1/jobs/%00",
        "/v1/jobs/%FF%FE",
        "/v1/jobs/",
        "/v1/jobs",
        "//v1/jobs",
        "/v1/models/%2e%2e/predict",
        "/v1/models/..%2F..%2Fetc/predict",
        "/v1/models/%00/predict",
        "/v1/models//predict",
        "/v1/models/mlp128/predict/extra",
        "/v1/jobs/00000000-0000-0000-0000-000000000000",
        "/v1/jobs/{00000000-0000-0000-0000-000000000000}",
        "/%",
        "/v1/models/mlp128%2Fpredict",
    ];
    const CONTENT_TYPES: [&str; 8] = [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/jsonx",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin1",
        "APPLICATION/JSON",
    ];
    let post = reqwest::Method::POST;
    let json_ct = Some(b"application/json".to_vec());
    let predict_path = |rng: &mut Rng| format!("/v1/models/{}/predict", rng.pick(&MODELS));
    let job_id = |rng: &mut Rng| {
        if rng.chance(70) {
            rng.pick(job_ids).clone()
        } else {
            uuid::Uuid::now_v7().to_string()
        }
    };
    let base = |what, method, path, body: Vec<u8>| FuzzRequest {
        what,
        method,
        path,
        content_type: Some(b"application/json".to_vec()),
        idempotency_key: None,
        body,
    };
    match rng.below(14) {
        0 => {
            let body = format!("{{\"features\":{}}}", rng.json(0));
            base(
                "wrong json types",
                post,
                predict_path(rng),
                body.into_bytes(),
            )
        }
        1 => {
            let body = two_input_body(rng);
            base(
                "odd tensors",
                post,
                "/v1/models/two_input/predict".into(),
                body.into_bytes(),
            )
        }
        2 => {
            let depth = [10_000, 129, 1_000][rng.below(3)];
            let body = if rng.chance(50) {
                "[".repeat(depth)
            } else {
                format!("{{\"features\":{}", "[".repeat(depth))
            };
            base("deep nesting", post, predict_path(rng), body.into_bytes())
        }
        3 => {
            let mut body = valid_body(rng).into_bytes();
            let at = rng.below(body.len());
            body.splice(at..at, [0xff, 0xfe, 0xc0]);
            base("invalid utf-8", post, predict_path(rng), body)
        }
        4 => base("empty body", post, predict_path(rng), Vec::new()),
        5 => {
            let body = valid_body(rng);
            let cut = rng.below(body.len());
            base(
                "truncated json",
                post,
                predict_path(rng),
                body.as_bytes()[..cut].to_vec(),
            )
        }
        6 => {
            let n = rng.below(2_000);
            base("random bytes", post, predict_path(rng), rng.bytes(n))
        }
        7 => {
            let methods = [
                "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO",
            ];
            let method =
                reqwest::Method::from_bytes(rng.pick(&methods).as_bytes()).expect("method");
            let id = job_id(rng);
            let paths = [
                predict_path(rng),
                "/v1/models".to_owned(),
                "/v1/models/mlp128".to_owned(),
                format!("/v1/jobs/{id}"),
                "/healthz".to_owned(),
                "/readyz".to_owned(),
                "/metrics".to_owned(),
            ];
            let path = rng.pick(&paths).clone();
            let body = if rng.chance(50) {
                valid_body(rng).into_bytes()
            } else {
                Vec::new()
            };
            base("method x route", method, path, body)
        }
        8 => {
            let path = if rng.chance(30) {
                let n = 1 + rng.below(6_000);
                format!("/v1/jobs/{}", "a".repeat(n))
            } else if rng.chance(30) {
                let n = 1 + rng.below(3_000);
                format!("/v1/models/{}/predict", "m".repeat(n))
            } else {
                (*rng.pick(&ODD_PATHS)).to_owned()
            };
            let method = if path.ends_with("predict") {
                post
            } else {
                reqwest::Method::GET
            };
            base("odd path", method, path, valid_body(rng).into_bytes())
        }
        9 => {
            let content_type = match rng.below(3) {
                0 => None,
                1 => Some(rng.pick(&CONTENT_TYPES).as_bytes().to_vec()),
                _ => {
                    let n = rng.below(60);
                    Some(rng.header_bytes(n))
                }
            };
            FuzzRequest {
                content_type,
                ..base(
                    "content type",
                    post,
                    predict_path(rng),
                    valid_body(rng).into_bytes(),
                )
            }
        }
        10 => {
            let n = 65_537 + rng.below(200_000);
            let mut body = b"{\"features\":[".to_vec();
            while body.len() < n {
                body.extend_from_slice(b"0.123456,");
            }
            body.extend_from_slice(b"1]}");
            FuzzRequest {
                content_type: if rng.chance(80) { json_ct } else { None },
                ..base("oversized", post, predict_path(rng), body)
            }
        }
        11 => {
            let n = rng.below(400);
            FuzzRequest {
                idempotency_key: Some(rng.header_bytes(n)),
                ..base(
                    "idempotency key",
                    post,
                    "/v1/models/mlp128/predict".into(),
                    valid_body(rng).into_bytes(),
                )
            }
        }
        12 => {
            let id = job_id(rng);
            let path = format!("/v1/jobs/{id}?wait={}", rng.pick(&WAITS));
            base("wait", reqwest::Method::GET, path, Vec::new())
        }
        _ => {
            let mut body = valid_body(rng);
            if rng.chance(50) {
                body.truncate(body.len() - 1);
                body.push_str(&format!(",\"deadline\":{}}}", rng.json(2)));
            }
            let method = if rng.chance(20) {
                reqwest::Method::DELETE
            } else {
                post
            };
            let path = if method == reqwest::Method::DELETE {
                format!("/v1/jobs/{}", job_id(rng))
            } else {
                "/v1/models/mlp128/predict".into()
            };
            base("valid or deadline", method, path, body.into_bytes())
        }
    }
}

/// Why one answer breaks the contract, if it does.
fn contract_violation(
    req: &FuzzRequest,
    status: StatusCode,
    ct: &str,
    body: &[u8],
) -> Option<String> {
    if status.is_server_error() {
        return Some(format!("server error {status}"));
    }
    if status.is_success() || req.method == reqwest::Method::HEAD {
        return None;
    }
    if !ct.starts_with("application/json") {
        return Some(format!("{status} with content type {ct:?}"));
    }
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Some(format!("{status} body is not JSON: {e}")),
    };
    let shape_ok = v.as_object().is_some_and(|o| o.len() == 1)
        && v["error"].as_object().is_some_and(|e| e.len() == 2)
        && v["error"]["code"].as_str().is_some_and(|c| !c.is_empty())
        && v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty());
    (!shape_ok).then(|| format!("{status} error body has the wrong shape: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_malformed_requests_get_no_5xx_and_only_json_errors() {
    const SEED: u64 = 0x5EED_2026_A202_0001;
    const REQUESTS: usize = 3_000;
    let redis = RedisServer::start();
    let ns = unique_namespace("fuzz");
    let worker = Worker::spawn(&redis.url(), &ns, &[]);
    let mut api = Api::spawn(
        &redis.url(),
        &ns,
        &["--max-body-bytes", "65536", "--max-wait-secs", "1"],
    );
    let c = api.client();
    c.wait_for_models(
        &["mlp128", "two_input", "breast_cancer"],
        Duration::from_secs(30),
    )
    .await;
    let mut job_ids = Vec::new();
    for i in 0..5 {
        job_ids.push(c.submit("mlp128", &row(128, i as f32)).await);
    }

    let mut rng = Rng(SEED);
    let requests: Vec<FuzzRequest> = (0..REQUESTS)
        .map(|_| fuzz_request(&mut rng, &job_ids))
        .collect();
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::with_capacity(REQUESTS);
    for (i, req) in requests.into_iter().enumerate() {
        let permit = Arc::clone(&slots).acquire_owned().await.expect("semaphore");
        let c: Client = c.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let mut b = c
                .http
                .request(req.method.clone(), format!("{}{}", c.base, req.path))
                .timeout(Duration::from_secs(15))
                .body(req.body.clone());
            if let Some(ct) = &req.content_type {
                b = b.header(
                    "content-type",
                    reqwest::header::HeaderValue::from_bytes(ct).expect("header bytes"),
                );
            }
            if let Some(k) = &req.idempotency_key {
                b = b.header(
                    "idempotency-key",
                    reqwest::header::HeaderValue::from_bytes(k).expect("header bytes"),
                );
            }
            let (status, violation) = match b.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let ct = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let violation = match resp.bytes().await {
                        Ok(body) => contract_violation(&req, status, &ct, &body),
                        Err(e) => Some(format!("{status}, body cut off: {e}")),
                    };
                    (Some(status.as_u16()), violation)
                }
                Err(e) => (None, Some(format!("no answer: {e:?}"))),
            };
            let violation = violation.map(|why| {
                format!(
                    "#{i} {} {} {} ({}): {why}",
                    req.what,
                    req.method,
                    clip(&req.path),
                    req.body.len()
                )
            });
            (status, violation)
        }));
    }
    let mut violations = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for t in tasks {
        let (status, violation) = t.await.expect("fuzz task");
        if let Some(s) = status {
            *statuses.entry(s).or_default() += 1;
        }
        violations.extend(violation);
    }
    assert!(
        violations.is_empty(),
        "{} of {REQUESTS} answers broke the contract (seed {SEED:#x}), first ones:\n{}",
        violations.len(),
        violations
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The generator must reach every kind of answer, or the run proves little.
    for expected in [200, 202, 400, 404, 405, 409, 413, 415, 422] {
        assert!(
            statuses.get(&expected).is_some_and(|&n| n >= 5),
            "too few {expected} answers: {statuses:?}"
        );
    }

    assert!(api.proc.try_exit().is_none(), "the api died");
    assert_eq!(c.get("/healthz").await.status, StatusCode::OK);
    let id = c.submit("mlp128", &row(128, 0.5)).await;
    let job = c.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    drop(worker);
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}
