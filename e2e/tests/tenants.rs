//! Tenants: API keys map to tenants, and a tenant can neither see nor guess
//! another tenant's jobs or models: what is not yours answers exactly like
//! what does not exist (404), and requests without a valid key get 401. The
//! open routes (`/readyz`, `/metrics`) of the public listener name no
//! tenant's model; the operator listener shows them all.

use std::time::{Duration, Instant};

use e2e::prom::Scrape;
use e2e::tenancy::KeysFile;
use e2e::{Api, Client, ModelsDir, RedisServer, Worker, unique_namespace};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn features() -> Value {
    json!({ "features": vec![0.25f32; 128] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_jobs_and_models() {
    let redis = RedisServer::start();
    let ns = unique_namespace("tenants");
    // acme's mlp128 and the default tenant's two_input: two_input must stay
    // invisible to acme, and globex has no model at all.
    let models = ModelsDir::with(&[
        ("acme~mlp128", "mlp128.onnx"),
        ("two_input", "two_input.onnx"),
    ]);
    let _worker = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &[]);

    let keys_file = std::env::temp_dir().join(format!("{ns}-keys"));
    std::fs::write(
        &keys_file,
        format!(
            "# tenant  sha256 of the key\nacme {}\nglobex {}\n",
            digest("key-acme"),
            digest("key-globex")
        ),
    )
    .expect("write keys file");
    let keys_arg = keys_file.display().to_string();
    let api = Api::spawn(&redis.url(), &ns, &["--api-keys-file", &keys_arg]);
    let acme = Client::with_api_key(&api.base_url, "key-acme");
    let globex = Client::with_api_key(&api.base_url, "key-globex");
    let anonymous = api.client();
    acme.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;

    // The key file holds digests only: the key itself appears nowhere in it.
    let stored = std::fs::read_to_string(&keys_file).expect("keys file");
    assert!(!stored.contains("key-acme"));

    // No key or a wrong key: 401 with the usual JSON error; probes stay open.
    for client in [&anonymous, &Client::with_api_key(&api.base_url, "key-nope")] {
        let r = client.predict("mlp128", &features()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
        assert_eq!(r.error_code(), "unauthorized");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert_eq!(
            client.get("/v1/models").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(anonymous.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(anonymous.get("/readyz").await.status, StatusCode::OK);

    // acme runs a job on its model.
    let id = acme.submit("mlp128", &features()).await;
    let job = acme.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["model"], "mlp128",
        "the public name, not the internal one"
    );

    // globex: acme's job and model do not exist for it.
    let r = globex.job(&id, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.error_code(), "job_not_found");
    let r = globex.job(&id, Some(1.0)).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "a long-poll must not wait on it either"
    );
    let r = globex.delete(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "job_not_found");
    let r = globex.predict("mlp128", &features()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.error_code(), "model_not_found");
    let r = globex.get("/v1/models/mlp128").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = globex.get("/v1/models").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json["models"],
        json!([]),
        "globex has no models: {}",
        r.text
    );
    // Neither can the internal name be typed in.
    let r = globex.predict("acme~mlp128", &features()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // acme sees its own model under its public name, and not the default
    // tenant's.
    let r = acme.get("/v1/models").await;
    let names: Vec<&str> = r.json["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["mlp128"], "{}", r.text);
    assert_eq!(acme.get("/v1/models/mlp128").await.json["name"], "mlp128");
    let r = acme.predict("two_input", &json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The job still reads for its owner after the others' attempts, and the
    // owner can cancel only what exists.
    assert_eq!(acme.job(&id, None).await.json["status"], "succeeded");
    let _ = std::fs::remove_file(&keys_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_keys_file_stops_the_api_at_start() {
    let redis = RedisServer::start();
    let ns = unique_namespace("badkeys");
    let keys_file = std::env::temp_dir().join(format!("{ns}-keys"));
    std::fs::write(&keys_file, "acme not-a-digest\n").expect("write keys file");
    let out = std::process::Command::new(e2e::binary("api"))
        .args([
            "--redis-url",
            &redis.url(),
            "--namespace",
            &ns,
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--api-keys-file")
        .arg(&keys_file)
        .output()
        .expect("run api");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":1:"), "names the line: {stderr}");
    let _ = std::fs::remove_file(&keys_file);
}

fn two_input_row() -> Value {
    json!({ "inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]},
        {"name": "k", "shape": [1, 1], "datatype": "INT64", "data": [2]},
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_routes_name_no_tenant_and_the_operator_listener_shows_all() {
    let redis = RedisServer::start();
    let ns = unique_namespace("tenants-open");
    let models = ModelsDir::with(&[
        ("acme~mlp128", "mlp128.onnx"),
        ("globex~two_input", "two_input.onnx"),
    ]);
    let _worker = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &[]);
    let keys_file = std::env::temp_dir().join(format!("{ns}-keys"));
    std::fs::write(
        &keys_file,
        format!(
            "acme {}\nglobex {}\n",
            digest("key-acme"),
            digest("key-globex")
        ),
    )
    .expect("write keys file");
    let keys_arg = keys_file.display().to_string();
    let api = Api::spawn(
        &redis.url(),
        &ns,
        &[
            "--api-keys-file",
            &keys_arg,
            "--ops-listen",
            "127.0.0.1:0",
            // One request slot and a short stall timeout, for the ordering
            // check at the end.
            "--max-concurrent-requests",
            "1",
            "--body-timeout-ms",
            "1500",
        ],
    );
    let acme = Client::with_api_key(&api.base_url, "key-acme");
    let globex = Client::with_api_key(&api.base_url, "key-globex");
    let anonymous = api.client();
    let ops = api.ops_client();
    acme.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    globex
        .wait_for_models(&["two_input"], Duration::from_secs(30))
        .await;

    // Both tenants have traffic.
    for _ in 0..2 {
        let id = acme.submit("mlp128", &features()).await;
        let job = acme.wait_terminal(&id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    let id = globex.submit("two_input", &two_input_row()).await;
    let job = globex.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // The operator listener: every tenant's model, in /metrics and /readyz.
    let deadline = Instant::now() + Duration::from_secs(15);
    let full = loop {
        let r = ops.get("/metrics").await;
        assert_eq!(r.status, StatusCode::OK);
        let m = Scrape::parse(&r.text).expect("ops scrape");
        let sampled = m
            .value("onnxq_workers_ready", &[("model", "globex~two_input")])
            .is_some();
        if sampled || Instant::now() > deadline {
            break (m, r.text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (m, text) = &full;
    for (model, n) in [("acme~mlp128", 2.0), ("globex~two_input", 1.0)] {
        assert_eq!(
            m.value(
                "onnxq_jobs_submitted_total",
                &[("model", model), ("kind", "predict")]
            ),
            Some(n),
            "{text}"
        );
        assert_eq!(
            m.value("onnxq_workers_ready", &[("model", model)]),
            Some(1.0),
            "{text}"
        );
        assert!(
            m.value("onnxq_stream_lag", &[("model", model)]).is_some(),
            "{text}"
        );
    }
    let r = ops.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for model in ["acme~mlp128", "globex~two_input"] {
        assert_eq!(r.json["models"][model]["workers"], 1, "{}", r.text);
    }
    assert_eq!(ops.get("/healthz").await.status, StatusCode::OK);
    // The operator listener serves no tenant routes.
    assert_eq!(ops.get("/v1/models").await.status, StatusCode::NOT_FOUND);

    // The public listener, without a key: readiness and metrics, no names.
    let r = anonymous.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "ready");
    assert_eq!(r.json["workers"], 1, "{}", r.text);
    let r_metrics = anonymous.get("/metrics").await;
    assert_eq!(r_metrics.status, StatusCode::OK);
    for (what, body) in [("/readyz", &r.text), ("/metrics", &r_metrics.text)] {
        for secret in ["acme", "globex", "mlp128", "two_input", "~"] {
            assert!(
                !body.contains(secret),
                "public {what} discloses {secret:?}:\n{body}"
            );
        }
    }
    // Aggregates stay: the tenants' requests are counted by route.
    let public = Scrape::parse(&r_metrics.text).expect("public scrape");
    assert!(
        public.sum(
            "onnxq_http_requests_total",
            &[("route", "/v1/models/{model}/predict"), ("status", "202")]
        ) >= 3.0,
        "{}",
        r_metrics.text
    );

    // Authentication runs before load shedding: with the only request slot
    // held by acme's stalled upload, an anonymous caller still gets 401, a
    // tenant 503, and the open routes answer.
    let mut stalled = tokio::net::TcpStream::connect(api.addr())
        .await
        .expect("connect");
    let head = "POST /v1/models/mlp128/predict HTTP/1.1\r\nhost: x\r\nauthorization: Bearer key-acme\r\n\
                content-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"features\": [";
    stalled.write_all(head.as_bytes()).await.expect("send head");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = anonymous.predict("mlp128", &features()).await;
    assert_eq!(r.error_code(), "unauthorized", "{}", r.text);
    let r = globex.predict("two_input", &two_input_row()).await;
    assert_eq!(r.error_code(), "overloaded", "{}", r.text);
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(anonymous.get(path).await.status, StatusCode::OK, "{path}");
    }
    // The stalled body is cut off with 408 and its slot comes back.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut answer))
        .await
        .expect("the stalled upload is answered and closed")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    let id = globex.submit("two_input", &two_input_row()).await;
    assert!(!id.is_empty());
    let _ = std::fs::remove_file(&keys_file);
}

/// An operator changes a tenant's quota in the tenants file and sends
/// SIGHUP: the running API takes it, and a broken file is refused while
/// the previous one stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tenants_file_without_a_restart() {
    let redis = RedisServer::start();
    let ns = unique_namespace("sighup");
    let models = ModelsDir::with(&[("acme~mlp128", "mlp128.onnx")]);
    let keys = KeysFile::new(&[("acme", "key-acme")]);
    let tenants = std::env::temp_dir().join(format!("{ns}-tenants.yaml"));
    std::fs::write(&tenants, "tenants:\n  acme: {max_queued_jobs: 1}\n").expect("tenants");
    let mut api = Api::spawn(
        &redis.url(),
        &ns,
        &[
            "--api-keys-file",
            &keys.arg(),
            "--tenants-file",
            &tenants.display().to_string(),
        ],
    );
    // The model is published, but no worker runs until the end, so the
    // jobs stay queued and count against the quota.
    let worker = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &[]);
    let acme = Client::with_api_key(&api.base_url, "key-acme");
    acme.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    drop(worker);
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(
        acme.predict("mlp128", &features()).await.status,
        StatusCode::ACCEPTED
    );
    let r = acme.predict("mlp128", &features()).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.error_code(), "tenant_queue_full");

    std::fs::write(&tenants, "tenants:\n  acme: {max_queued_jobs: 3}\n").expect("tenants");
    api.proc.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = acme.predict("mlp128", &features()).await;
        if r.status == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not reloaded: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    std::fs::write(
        &tenants,
        "tenants:\n  acme: {max_queued_jobs: not-a-number}\n",
    )
    .expect("tenants");
    api.proc.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        api.proc.log_text().contains("reload refused"),
        "the bad file is logged"
    );
    // Still the good file's limit of 3: one more fits, then 429.
    assert_eq!(
        acme.predict("mlp128", &features()).await.status,
        StatusCode::ACCEPTED
    );
    let r = acme.predict("mlp128", &features()).await;
    assert_eq!(r.error_code(), "tenant_queue_full");
    assert!(api.proc.try_exit().is_none(), "SIGHUP never stops the API");
    let _ = std::fs::remove_file(&tenants);
}
