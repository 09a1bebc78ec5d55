//! End-to-end predict path through real processes: redis-server, the api
//! binary, worker binaries with the demo models in ONNX Runtime.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use e2e::{Api, Fixture, RedisServer, StatusCode, Worker, assert_outputs_match, unique_namespace};
use serde_json::{Value, json};

const MODELS: [&str; 3] = ["mlp128", "breast_cancer", "two_input"];
const TOL: f64 = 1e-5;

struct System {
    redis: RedisServer,
    ns: String,
    api: Api,
    workers: Vec<Worker>,
}

async fn system(workers: usize, worker_args: &[&str], api_args: &[&str]) -> System {
    let redis = RedisServer::start();
    let ns = unique_namespace("predict");
    let workers: Vec<Worker> = (0..workers)
        .map(|_| Worker::spawn(&redis.url(), &ns, worker_args))
        .collect();
    let api = Api::spawn(&redis.url(), &ns, api_args);
    if !workers.is_empty() {
        api.client()
            .wait_for_models(&MODELS, Duration::from_secs(30))
            .await;
    }
    System {
        redis,
        ns,
        api,
        workers,
    }
}

fn rfc3339_ms(v: &Value) -> i128 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    assert!(
        s.ends_with('Z') && s.len() == 24,
        "not RFC 3339 UTC ms: {s}"
    );
    // Lexicographic order of fixed-width UTC timestamps is time order;
    // return a comparable number built from the digits.
    s.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_model_matches_its_python_reference() {
    let sys = system(1, &[], &[]).await;
    let client = sys.api.client();
    for model in MODELS {
        let fixture = Fixture::load(model);
        assert!(fixture.cases.len() >= 4, "{model}: too few cases");
        for case in &fixture.cases {
            let id = client
                .submit(model, &json!({ "inputs": case.inputs }))
                .await;
            let job = client.wait_terminal(&id, Duration::from_secs(30)).await;
            assert_eq!(job["status"], "succeeded", "{model}: {job}");
            assert_eq!(job["job_id"], id.as_str());
            assert_eq!(job["kind"], "predict");
            assert_eq!(job["model"], model);
            assert_eq!(job["attempts"], 1);
            assert!(job["error"].is_null());
            // The registry version the models dir seeded: the first.
            assert_eq!(job["model_version"], "1", "{job}");
            let (c, s, f) = (
                rfc3339_ms(&job["created_at"]),
                rfc3339_ms(&job["started_at"]),
                rfc3339_ms(&job["finished_at"]),
            );
            assert!(c <= s && s <= f, "timestamps out of order: {job}");
            assert_outputs_match(&job["result"]["outputs"], &case.outputs, TOL);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oip_request_for_the_two_input_model() {
    let sys = system(1, &[], &[]).await;
    let client = sys.api.client();
    let case = &Fixture::load("two_input").cases[0];
    let r = client
        .predict("two_input", &json!({ "inputs": case.inputs }))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id = r.json["job_id"].as_str().expect("job id").to_owned();
    let uuid = uuid::Uuid::parse_str(&id).expect("uuid job id");
    assert_eq!(uuid.get_version_num(), 7, "job ids are UUID v7");
    assert_eq!(r.json["status"], "queued");
    assert_eq!(r.json["status_url"], format!("/v1/jobs/{id}"));
    assert_eq!(
        r.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    let job = client.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let outputs = &job["result"]["outputs"];
    assert_eq!(outputs[0]["name"], "y");
    assert_eq!(outputs[0]["datatype"], "FP32");
    assert_eq!(outputs[1]["name"], "z");
    assert_eq!(outputs[1]["datatype"], "INT64");
    assert_outputs_match(outputs, &case.outputs, TOL);
    // y holds two values, so there is no scalar prediction.
    assert!(job["result"].get("prediction").is_none(), "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_shorthand_returns_a_prediction() {
    let sys = system(1, &[], &[]).await;
    let client = sys.api.client();
    for model in ["mlp128", "breast_cancer"] {
        for case in Fixture::load(model).cases.iter().take(3) {
            let features = case.inputs[0]["data"].clone();
            let id = client.submit(model, &json!({ "features": features })).await;
            let job = client.wait_terminal(&id, Duration::from_secs(30)).await;
            assert_eq!(job["status"], "succeeded", "{job}");
            assert_outputs_match(&job["result"]["outputs"], &case.outputs, TOL);
            let first = case.outputs[0]["data"][0].as_f64().expect("number");
            let prediction = job["result"]["prediction"]
                .as_f64()
                .unwrap_or_else(|| panic!("no prediction: {job}"));
            assert!((prediction - first).abs() <= TOL, "{prediction} vs {first}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_status_and_json_error() {
    let sys = system(1, &[], &["--max-body-bytes", "65536"]).await;
    let c = sys.api.client();
    let row = |n: usize| json!({ "features": vec![0.5f32; n] });
    let json_ct = Some("application/json");
    let body = |v: Value| serde_json::to_vec(&v).expect("json");
    let two = |x: Value, k: Value| json!({"inputs": [x, k]});
    let x_ok = json!({"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]});
    let k_ok = json!({"name": "k", "shape": [1, 1], "datatype": "INT64", "data": [3]});

    // (what, path, content type, body, status, code)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown model",
            "/v1/models/nope/predict",
            json_ct,
            body(row(128)),
            404,
            "model_not_found",
        ),
        (
            "wrong feature count",
            "/v1/models/mlp128/predict",
            json_ct,
            body(row(127)),
            422,
            "invalid_input",
        ),
        (
            "empty features",
            "/v1/models/mlp128/predict",
            json_ct,
            body(row(0)),
            422,
            "invalid_input",
        ),
        (
            "features on a two-input model",
            "/v1/models/two_input/predict",
            json_ct,
            body(row(4)),
            422,
            "invalid_input",
        ),
        (
            "neither features nor inputs",
            "/v1/models/mlp128/predict",
            json_ct,
            body(json!({})),
            422,
            "invalid_input",
        ),
        (
            "missing input",
            "/v1/models/two_input/predict",
            json_ct,
            body(json!({"inputs": [x_ok.clone()]})),
            422,
            "invalid_input",
        ),
        (
            "wrong dtype",
            "/v1/models/two_input/predict",
            json_ct,
            body(two(
                x_ok.clone(),
                json!({"name": "k", "shape": [1, 1], "datatype": "FP32", "data": [3.0]}),
            )),
            422,
            "invalid_input",
        ),
        (
            "wrong shape",
            "/v1/models/two_input/predict",
            json_ct,
            body(two(
                json!({"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}),
                k_ok.clone(),
            )),
            422,
            "invalid_input",
        ),
        (
            "data length not matching shape",
            "/v1/models/two_input/predict",
            json_ct,
            body(two(
                json!({"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}),
                k_ok.clone(),
            )),
            422,
            "invalid_input",
        ),
        (
            "fraction for INT64",
            "/v1/models/two_input/predict",
            json_ct,
            body(two(
                x_ok.clone(),
                json!({"name": "k", "shape": [1, 1], "datatype": "INT64", "data": [1.5]}),
            )),
            422,
            "invalid_input",
        ),
        (
            "unknown input name",
            "/v1/models/two_input/predict",
            json_ct,
            body(
                json!({"inputs": [x_ok.clone(), k_ok.clone(), {"name": "w", "shape": [1], "datatype": "FP32", "data": [1]}]}),
            ),
            422,
            "invalid_input",
        ),
        (
            "string feature",
            "/v1/models/mlp128/predict",
            json_ct,
            br#"{"features": ["a"]}"#.to_vec(),
            422,
            "invalid_input",
        ),
        (
            "non-finite after f32 conversion",
            "/v1/models/mlp128/predict",
            json_ct,
            format!("{{\"features\": [1e39{}]}}", ", 0.5".repeat(127)).into_bytes(),
            400,
            "non_finite_input",
        ),
        (
            "malformed JSON",
            "/v1/models/mlp128/predict",
            json_ct,
            b"{\"features\": [1,".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "empty body",
            "/v1/models/mlp128/predict",
            json_ct,
            Vec::new(),
            400,
            "malformed_json",
        ),
        (
            "wrong content type",
            "/v1/models/mlp128/predict",
            Some("text/plain"),
            body(row(128)),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            "/v1/models/mlp128/predict",
            None,
            body(row(128)),
            415,
            "unsupported_media_type",
        ),
        (
            "body over the limit",
            "/v1/models/mlp128/predict",
            json_ct,
            body(json!({"features": vec![0.123_456_79f32; 20_000]})),
            413,
            "payload_too_large",
        ),
    ];
    for (what, path, ct, bytes, status, code) in cases {
        let r = c.post_raw(path, ct, bytes).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text);
        assert_eq!(r.error_code(), code, "{what}");
        if status == 413 {
            let conn = r.headers.get("connection").and_then(|v| v.to_str().ok());
            assert_eq!(conn, Some("close"), "413 must close: the body was not read");
        }
    }

    let gets: Vec<(&str, String, u16, &str)> = vec![
        (
            "malformed job id",
            "/v1/jobs/not-a-uuid".into(),
            400,
            "invalid_job_id",
        ),
        (
            "unknown job",
            format!("/v1/jobs/{}", uuid::Uuid::now_v7()),
            404,
            "job_not_found",
        ),
        ("unknown route", "/v2/anything".into(), 404, "not_found"),
    ];
    for (what, path, status, code) in gets {
        let r = c.get(&path).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text);
        assert_eq!(r.error_code(), code, "{what}");
    }
    let r = c
        .send(
            c.http
                .delete(format!("{}/v1/models/mlp128/predict", c.base)),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.text);
    assert_eq!(r.error_code(), "method_not_allowed");

    // None of those created a job, and the API still serves.
    let id = c.submit("mlp128", &row(128)).await;
    let job = c.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded");
    let mut conn = sys.redis.client().get_connection().expect("redis");
    let len: usize = redis::cmd("XLEN")
        .arg(e2e::keys(&sys.ns).stream("mlp128", 0))
        .query(&mut conn)
        .expect("xlen");
    assert_eq!(len, 1, "only the valid request was enqueued");
}

fn commandstat(conn: &mut redis::Connection, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_times_out_when_nothing_happens_and_returns_promptly_when_it_does() {
    // No worker yet: the job stays queued.
    let mut sys = system(0, &[], &[]).await;
    let c = sys.api.client();
    let mut conn = sys.redis.client().get_connection().expect("redis");
    e2e_seed_models(&sys).await;
    let id = c
        .submit("mlp128", &json!({ "features": vec![0.1f32; 128] }))
        .await;

    let started = Instant::now();
    let r = c.job(&id, Some(1.0)).await;
    let waited = started.elapsed();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["status"], "queued");
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_millis(2500),
        "wait=1 took {waited:?}"
    );

    // A long wait, then a worker appears: the answer must come as soon as the
    // job is done, and the API must not have polled Redis meanwhile.
    let reads_before = commandstat(&mut conn, "hgetall");
    let poller = {
        let c = c.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let r = c.job(&id, Some(25.0)).await;
            (r, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sys.workers
        .push(Worker::spawn(&sys.redis.url(), &sys.ns, &[]));
    let (r, took) = poller.await.expect("poller");
    assert_eq!(r.json["status"], "succeeded", "{}", r.text);
    assert!(took < Duration::from_secs(10), "long poll took {took:?}");
    let reads = commandstat(&mut conn, "hgetall") - reads_before;
    assert!(
        reads <= 3,
        "long poll read the job {reads} times: busy polling"
    );
}

/// With no worker running, make the API know the models by publishing their
/// signatures the way a worker does (from a short-lived worker).
async fn e2e_seed_models(sys: &System) {
    let w = Worker::spawn(&sys.redis.url(), &format!("{}-seed", sys.ns), &[]);
    let seed_api = Api::spawn(&sys.redis.url(), &format!("{}-seed", sys.ns), &[]);
    seed_api
        .client()
        .wait_for_models(&MODELS, Duration::from_secs(30))
        .await;
    drop(w);
    let mut conn = sys.redis.client().get_connection().expect("redis");
    let sigs: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(e2e::keys(&format!("{}-seed", sys.ns)).models())
        .query(&mut conn)
        .expect("models");
    for (name, sig) in sigs {
        let _: () = redis::cmd("HSET")
            .arg(e2e::keys(&sys.ns).models())
            .arg(name)
            .arg(sig)
            .query(&mut conn)
            .expect("hset");
    }
    sys.api
        .client()
        .wait_for_models(&MODELS, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_process_500_jobs_exactly_once() {
    let sys = system(2, &["--max-batch", "8"], &[]).await;
    let c = sys.api.client();
    let cases = Fixture::load("mlp128").cases;
    let n = 500;
    let mut submitted = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = c.clone();
        let case = cases[i % cases.len()].clone();
        tasks.spawn(async move {
            let id = c.submit("mlp128", &json!({ "inputs": case.inputs })).await;
            (i, id)
        });
    }
    while let Some(r) = tasks.join_next().await {
        submitted.push(r.expect("submit task"));
    }
    let ids: HashSet<&str> = submitted.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), n, "job ids are unique");

    let mut conn = sys.redis.client().get_connection().expect("redis");
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for (i, id) in &submitted {
        let job = c.wait_terminal(id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
        assert_outputs_match(
            &job["result"]["outputs"],
            &cases[i % cases.len()].outputs,
            TOL,
        );
        let worker: String = redis::cmd("HGET")
            .arg(e2e::job_key(&sys.ns, &id.to_string()))
            .arg("worker")
            .query(&mut conn)
            .expect("hget");
        *by_worker.entry(worker).or_default() += 1;
    }
    assert_eq!(by_worker.len(), 2, "both workers took jobs: {by_worker:?}");

    // Each job was finished exactly once across both workers' logs, and
    // nothing is left pending in the consumer group.
    let mut finished: HashMap<String, usize> = HashMap::new();
    for w in &sys.workers {
        for line in w.proc.log_text().lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["fields"]["message"] == "job finished" {
                let id = v["span"]["job_id"]
                    .as_str()
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_owned();
                *finished.entry(id).or_default() += 1;
            }
        }
    }
    for id in &ids {
        let count = finished
            .iter()
            .find(|(k, _)| k.contains(id))
            .map(|(_, v)| *v);
        assert_eq!(count, Some(1), "job {id} finished {count:?} times");
    }
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(e2e::keys(&sys.ns).stream("mlp128", 0))
        .arg("workers")
        .query(&mut conn)
        .expect("xpending");
    assert_eq!(pending.count(), 0, "entries left pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_expires_after_its_ttl() {
    let sys = system(1, &["--result-ttl-secs", "1"], &[]).await;
    let c = sys.api.client();
    let id = c
        .submit("mlp128", &json!({ "features": vec![0.2f32; 128] }))
        .await;
    let job = c.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded");
    let mut conn = sys.redis.client().get_connection().expect("redis");
    let ttl: i64 = redis::cmd("TTL")
        .arg(e2e::job_key(&sys.ns, &id.to_string()))
        .query(&mut conn)
        .expect("ttl");
    assert!((0..=1).contains(&ttl), "ttl {ttl}");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = c.job(&id, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.error_code(), "job_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_models_and_metrics() {
    let mut sys = system(1, &[], &[]).await;
    let c = sys.api.client();
    assert_eq!(c.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(c.get("/readyz").await.status, StatusCode::OK);

    let models = c.get("/v1/models").await;
    let list = models.json["models"].as_array().expect("models array");
    let two = list
        .iter()
        .find(|m| m["name"] == "two_input")
        .expect("two_input listed");
    assert_eq!(
        two["inputs"][1],
        json!({"name": "k", "datatype": "INT64", "shape": [-1, 1]})
    );
    assert_eq!(two["outputs"][0]["name"], "y");

    c.submit("mlp128", &json!({ "features": vec![0.3f32; 128] }))
        .await;
    c.submit("mlp128", &json!({ "features": vec![0.3f32; 128] }))
        .await;
    let metrics = c.get("/metrics").await.text;
    let submitted = metrics
        .lines()
        .find(|l| l.starts_with("onnxq_jobs_submitted_total") && l.contains("model=\"mlp128\""))
        .unwrap_or_else(|| panic!("no onnxq_jobs_submitted_total for mlp128:\n{metrics}"));
    assert!(submitted.ends_with(" 2"), "{submitted}");
    assert!(metrics.contains("http_requests_total"), "{metrics}");

    sys.redis.kill();
    let started = Instant::now();
    let r = c.get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.error_code(), "redis_unavailable");
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = c
        .predict("mlp128", &json!({ "features": vec![0.3f32; 128] }))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.error_code(), "redis_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_keep_deployments_apart() {
    let sys = system(1, &[], &[]).await;
    let other = Api::spawn(&sys.redis.url(), &unique_namespace("other"), &[]);
    let r = other
        .client()
        .predict("mlp128", &json!({ "features": vec![0.3f32; 128] }))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.error_code(), "model_not_found");
}

#[test]
fn worker_without_the_onnx_runtime_library_fails_clearly() {
    let redis = RedisServer::start();
    let mut w = Worker::spawn(
        &redis.url(),
        "nolib",
        &["--ort-lib", "/nonexistent/libonnxruntime.so"],
    );
    let code = w.proc.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(Some(1)), "worker should exit 1");
    let log = w.proc.log_text();
    assert!(log.contains("ONNX Runtime library not found"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
