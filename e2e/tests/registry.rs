//! The model registry end to end: seeding from models dirs, uploads
//! validated by a worker in ONNX Runtime, promotion, rollback and pinned
//! versions, through real redis-server, api and worker processes.
//!
//! Two models with one signature (`x f32[N,4] -> y f32[N,4]`) tell the
//! versions apart by their outputs: `testdata/flaky_fixed.onnx` computes
//! `2x`, `testdata/scale3.onnx` computes `3x`.

use std::time::{Duration, Instant};

use e2e::{Api, Client, ModelsDir, RedisServer, StatusCode, Worker, repo_root, unique_namespace};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn model_bytes(source: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("models").join(source)).expect("read model")
}

fn conn(redis: &RedisServer) -> redis::Connection {
    redis.client().get_connection().expect("redis connection")
}

/// The registry's version numbers of `model`, ascending.
fn versions(c: &mut redis::Connection, ns: &str, model: &str) -> Vec<u32> {
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(e2e::keys(ns).registry(model))
        .query(c)
        .expect("hkeys");
    let mut v: Vec<u32> = fields.iter().filter_map(|f| f.parse().ok()).collect();
    v.sort_unstable();
    v
}

fn current(c: &mut redis::Connection, ns: &str, model: &str) -> Option<u32> {
    let v: Option<String> = redis::cmd("HGET")
        .arg(e2e::keys(ns).current())
        .arg(model)
        .query(c)
        .expect("hget");
    v.and_then(|v| v.parse().ok())
}

fn wait_started(w: &Worker) {
    w.consumer_name(WAIT);
}

fn x(i: usize) -> Vec<f32> {
    let b = (i % 100) as f32 * 0.5;
    vec![b, b + 1.0, b + 2.0, -b]
}

fn body(x: &[f32]) -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x}]})
}

/// Runs one predict job to its end; returns (model_version, y).
async fn run(c: &Client, model: &str, req: &Value) -> (String, Vec<f64>) {
    let id = c.submit(model, req).await;
    let job = c.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let y = job["result"]["outputs"][0]["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    (job["model_version"].as_str().unwrap_or("").to_owned(), y)
}

fn scaled(x: &[f32], k: f64) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v) * k).collect()
}

/// Predicts until a job reports `version` (a worker switches within a
/// second of a change); asserts it produced that version's outputs.
async fn until_version(c: &Client, model: &str, version: &str, k: f64) -> Duration {
    let started = Instant::now();
    loop {
        let input = x(started.elapsed().as_millis() as usize);
        let (v, y) = run(c, model, &body(&input)).await;
        if v == version {
            assert_eq!(y, scaled(&input, k), "version {v}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still on version {v}, expected {version}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn upload(c: &Client, model: &str, bytes: Vec<u8>) -> (u32, Value) {
    let r = c.upload_version(model, bytes).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let version = r.json["version"].as_u64().expect("version") as u32;
    let id = r.json["job_id"].as_str().expect("job_id").to_owned();
    assert_eq!(r.json["status_url"], format!("/v1/jobs/{id}"));
    let job = c.wait_terminal(&id, WAIT).await;
    assert_eq!(job["kind"], "validate", "{job}");
    (version, job)
}

async fn rollback(c: &Client, model: &str) -> e2e::Reply {
    c.send(
        c.http
            .post(format!("{}/v1/models/{model}/rollback", c.base)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_creates_one_version_per_content_and_a_changed_file_rolls_out() {
    let redis = RedisServer::start();
    let ns = unique_namespace("registry-seed");
    let dir = ModelsDir::with(&[("m", "testdata/flaky_fixed.onnx")]);
    let mut c = conn(&redis);

    // Two workers starting together with the same file: one version.
    let a = Worker::spawn_with_models(&redis.url(), &ns, &dir.path, &[]);
    let b = Worker::spawn_with_models(&redis.url(), &ns, &dir.path, &[]);
    wait_started(&a);
    wait_started(&b);
    assert_eq!(versions(&mut c, &ns, "m"), vec![1]);
    assert_eq!(current(&mut c, &ns, "m"), Some(1));

    let api = Api::spawn(&redis.url(), &ns, &[]);
    let client = api.client();
    client.wait_for_models(&["m"], WAIT).await;
    let r = client.get("/v1/models/m").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["current_version"], 1, "{}", r.text);
    assert_eq!(r.json["version"], "1", "{}", r.text);
    let v1 = &r.json["versions"][0];
    assert_eq!(v1["source"], "file");
    assert_eq!(v1["status"], "ready");
    assert_eq!(v1["inputs"][0]["shape"], json!([-1, 4]));
    assert_eq!(v1["sha256"].as_str().map(str::len), Some(64), "{}", r.text);
    let input = x(3);
    assert_eq!(
        run(&client, "m", &body(&input)).await,
        ("1".to_owned(), scaled(&input, 2.0))
    );

    // A restart with the same file creates nothing.
    drop((a, b));
    let a = Worker::spawn_with_models(&redis.url(), &ns, &dir.path, &[]);
    wait_started(&a);
    assert_eq!(versions(&mut c, &ns, "m"), vec![1]);
    drop(a);

    // A changed file is version 2 and becomes current (the current one
    // came from a file too).
    dir.put("m", "testdata/scale3.onnx");
    let a = Worker::spawn_with_models(&redis.url(), &ns, &dir.path, &[]);
    wait_started(&a);
    assert_eq!(versions(&mut c, &ns, "m"), vec![1, 2]);
    assert_eq!(current(&mut c, &ns, "m"), Some(2));
    until_version(&client, "m", "2", 3.0).await;

    // Back to the old bytes: version 1 is known, so nothing changes (a
    // restart never undoes an operator's decision).
    drop(a);
    dir.put("m", "testdata/flaky_fixed.onnx");
    let a = Worker::spawn_with_models(&redis.url(), &ns, &dir.path, &[]);
    wait_started(&a);
    assert_eq!(versions(&mut c, &ns, "m"), vec![1, 2]);
    assert_eq!(current(&mut c, &ns, "m"), Some(2));
    let r = client.get("/v1/models/m/versions").await;
    assert_eq!(r.json["current_version"], 2, "{}", r.text);
    assert_eq!(
        r.json["versions"][0]["version"], 2,
        "newest first: {}",
        r.text
    );

    // An operator's promotion of an upload survives a restart with a
    // changed file: the file becomes a version, not the current one.
    let (v3, job) = upload(&client, "m", model_bytes("testdata/flaky_fixed.onnx")).await;
    assert_eq!((v3, &job["status"]), (3, &json!("succeeded")), "{job}");
    let r = client.promote("m", 3).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    drop(a);
    dir.put("m", "two_input.onnx");
    let a = Worker::spawn_with_models(&redis.url(), &ns, &dir.path, &[]);
    wait_started(&a);
    assert_eq!(versions(&mut c, &ns, "m"), vec![1, 2, 3, 4]);
    assert_eq!(current(&mut c, &ns, "m"), Some(3));
    let meta = client.version("m", 4).await;
    assert_eq!(meta["source"], "file", "{meta}");
    until_version(&client, "m", "3", 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_validated_before_promotion_and_rollback_restores_the_previous_version() {
    let redis = RedisServer::start();
    let ns = unique_namespace("registry-upload");
    let dir = ModelsDir::with(&[("m", "testdata/flaky_fixed.onnx")]);
    let _w = Worker::spawn_with_models(&redis.url(), &ns, &dir.path, &[]);
    // Uploads may exceed the (default 4 MiB) body limit of other routes.
    let api = Api::spawn(&redis.url(), &ns, &["--max-model-bytes", "6000000"]);
    let c = api.client();
    c.wait_for_models(&["m"], WAIT).await;
    let mut rc = conn(&redis);

    // A valid upload: validated by a worker, ready, not current yet.
    let (v2, job) = upload(&c, "m", model_bytes("testdata/scale3.onnx")).await;
    assert_eq!(v2, 2);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["status"], "ready", "{job}");
    let meta = c.version("m", 2).await;
    assert_eq!(meta["status"], "ready", "{meta}");
    assert_eq!(meta["source"], "upload", "{meta}");
    assert_eq!(meta["outputs"][0]["name"], "y", "{meta}");
    assert_eq!(current(&mut rc, &ns, "m"), Some(1));

    // Invalid uploads (random bytes, a truncated model) fail validation
    // with `invalid_model` and can never become current.
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut truncated = model_bytes("testdata/scale3.onnx");
    truncated.truncate(truncated.len() / 2);
    for bad in [garbage, truncated] {
        let (v, job) = upload(&c, "m", bad).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["code"], "invalid_model", "{job}");
        let meta = c.version("m", v).await;
        assert_eq!(meta["status"], "invalid", "{meta}");
        assert!(
            meta["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{meta}"
        );
        let r = c.promote("m", v).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        assert_eq!(r.error_code(), "version_not_ready");
        assert_eq!(current(&mut rc, &ns, "m"), Some(1));
        // Pinning it is refused the same way.
        let mut pinned = body(&x(1));
        pinned["model_version"] = json!(v);
        let r = c.predict("m", &pinned).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    }
    let big = vec![7u8; 5_000_000];
    let (v, job) = upload(&c, "m", big).await;
    assert_eq!(job["error"]["code"], "invalid_model", "{job}");
    assert_eq!(c.version("m", v).await["size"], 5_000_000);
    let r = c
        .post_raw(
            "/v1/models/m/versions",
            Some("application/octet-stream"),
            vec![7u8; 6_000_001],
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
    let r = c
        .post_raw(
            "/v1/models/m/predict",
            Some("application/json"),
            vec![b' '; 5_000_000],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "other routes keep --max-body-bytes"
    );
    let r = c.promote("m", 99).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.error_code(), "version_not_found");
    let r = c
        .post_raw(
            "/v1/models/m/versions",
            Some("application/json"),
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.text);

    // A pinned predict runs on the version it names, current or not.
    let input = x(7);
    let mut pinned = body(&input);
    pinned["model_version"] = json!(2);
    assert_eq!(
        run(&c, "m", &pinned).await,
        ("2".to_owned(), scaled(&input, 3.0))
    );
    assert_eq!(
        run(&c, "m", &body(&input)).await,
        ("1".to_owned(), scaled(&input, 2.0))
    );
    let mut unknown = body(&input);
    unknown["model_version"] = json!(42);
    let r = c.predict("m", &unknown).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.error_code(), "version_not_found");

    // Promote: the next predicts run on version 2.
    let r = c.promote("m", 2).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"model": "m", "current_version": 2, "previous_version": 1})
    );
    let took = until_version(&c, "m", "2", 3.0).await;
    println!("promote -> first job on version 2: {took:?}");
    let r = c.get("/v1/models/m").await;
    assert_eq!(r.json["current_version"], 2, "{}", r.text);
    // Pinning the old version still works after the promotion.
    let mut old = body(&input);
    old["model_version"] = json!(1);
    assert_eq!(
        run(&c, "m", &old).await,
        ("1".to_owned(), scaled(&input, 2.0))
    );

    // Rollback restores version 1; nothing is left to roll back after it.
    let r = rollback(&c, "m").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"model": "m", "current_version": 1, "previous_version": 2})
    );
    until_version(&c, "m", "1", 2.0).await;
    assert_eq!(current(&mut rc, &ns, "m"), Some(1));
    let r = rollback(&c, "m").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.error_code(), "no_previous_version");

    // A new model name, uploaded and promoted, is served by the running
    // worker without any file.
    let (v, job) = upload(&c, "fresh", model_bytes("testdata/scale3.onnx")).await;
    assert_eq!((v, &job["status"]), (1, &json!("succeeded")), "{job}");
    let r = c.get("/v1/models/fresh").await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "not served before promotion: {}",
        r.text
    );
    let r = c.promote("fresh", 1).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    c.wait_for_models(&["fresh"], WAIT).await;
    let input = x(11);
    assert_eq!(
        run(&c, "fresh", &body(&input)).await,
        ("1".to_owned(), scaled(&input, 3.0))
    );
}
