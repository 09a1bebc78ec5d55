//! What a tenant's model can do at run time, once it passed validation:
//! through real redis-server, api and worker processes, with models built at
//! test time ([`e2e::onnx_build`]) and uploaded by a tenant. A `Loop` whose
//! trip count the request sets runs until `--max-run-ms` terminates it
//! (`inference_timeout`, not retried, its lease let go) while another
//! tenant's jobs go on; a running one is canceled by its client; an `Expand`
//! to a shape the request sets is refused before its output is copied or
//! encoded (`result_too_large`), and stays readable, and one that asks for
//! gigabytes fails `inference_out_of_memory` under the worker's ceiling
//! instead of getting the worker OOM-killed. The worker's and the API's peak
//! memory stay small throughout.

use std::time::{Duration, Instant};

use e2e::onnx_build as onnx;
use e2e::tenancy::KeysFile;
use e2e::{Api, Client, RedisServer, StatusCode, Worker, procfs, unique_namespace};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const MAX_RUN_MS: u64 = 3000;

/// Uploads `bytes` as `model`'s new version and makes it current.
async fn deploy(c: &Client, model: &str, bytes: Vec<u8>) {
    let r = c.upload_version(model, bytes).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let version = r.json["version"].as_u64().expect("version");
    let job = c
        .wait_terminal(r.json["job_id"].as_str().expect("job_id"), WAIT)
        .await;
    assert_eq!(job["status"], "succeeded", "{model} validates: {job}");
    let r = c.promote(model, version as u32).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    c.wait_for_models(&[model], WAIT).await;
}

fn spin(trips: i64) -> Value {
    json!({"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "n", "shape": [1], "datatype": "INT64", "data": [trips]},
    ]})
}

fn expand(rows: i64, cols: i64) -> Value {
    json!({"inputs": [
        {"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [0.5]},
        {"name": "shape", "shape": [2], "datatype": "INT64", "data": [rows, cols]},
    ]})
}

fn scale_body() -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
}

async fn wait_status(c: &Client, id: &str, status: &str) {
    let deadline = Instant::now() + WAIT;
    while c.job(id, None).await.json["status"] != status {
        assert!(Instant::now() < deadline, "job {id} never {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pending(redis: &RedisServer, stream: &str) -> u64 {
    let mut conn = redis.client().get_connection().expect("redis");
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("workers")
        .query(&mut conn)
        .expect("XPENDING");
    match reply {
        redis::Value::Array(v) => match v.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_model_is_bounded_at_run_time_and_the_other_tenant_is_served() {
    let redis = RedisServer::start();
    let ns = unique_namespace("hostileruns");
    let keys = KeysFile::new(&[("acme", "key-a"), ("globex", "key-g")]);
    let api = Api::spawn(&redis.url(), &ns, &["--api-keys-file", &keys.arg()]);
    let max_run = MAX_RUN_MS.to_string();
    let worker = Worker::spawn(
        &redis.url(),
        &ns,
        &[
            "--max-run-ms",
            &max_run,
            "--max-output-elements",
            "1000000",
            "--max-result-bytes",
            "200000",
            "--lease-ms",
            "1500",
            "--concurrency",
            "2",
            "--max-memory-mb",
            "1024",
        ],
    );
    let acme = Client::with_api_key(&api.base_url, "key-a");
    let globex = Client::with_api_key(&api.base_url, "key-g");
    deploy(&acme, "spin", onnx::loop_of_input()).await;
    deploy(&acme, "big", onnx::huge_output()).await;
    deploy(&globex, "s", onnx::scale(2.0)).await;

    // A run the request makes endless is terminated at --max-run-ms: the
    // job fails for good on its first attempt, and the other tenant's job
    // submitted behind it is served meanwhile.
    let t = Instant::now();
    let spinning = [
        acme.submit("spin", &spin(1_000_000_000_000)).await,
        acme.submit("spin", &spin(1_000_000_000_000)).await,
    ];
    let other = globex.submit("s", &scale_body()).await;
    let job = globex.wait_terminal(&other, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["result"]["outputs"][0]["data"],
        json!([2.0, 4.0, 6.0, 8.0])
    );
    for id in &spinning {
        let job = acme.wait_terminal(id, WAIT).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["code"], "inference_timeout", "{job}");
        assert_eq!(job["attempts"], 1, "a limit is not retried: {job}");
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(MAX_RUN_MS) && took < Duration::from_secs(20),
        "two endless runs took {took:?}"
    );
    // Acknowledged with their ends: nothing left whose lease is renewed.
    assert_eq!(pending(&redis, &e2e::keys(&ns).stream("acme~spin", 0)), 0);
    // The same model with an honest request still works.
    let ok = acme.submit("spin", &spin(3)).await;
    assert_eq!(acme.wait_terminal(&ok, WAIT).await["status"], "succeeded");

    // A running job canceled by its client: stopped at the next check,
    // well before the time limit would have.
    let running = acme.submit("spin", &spin(1_000_000_000_000)).await;
    wait_status(&acme, &running, "running").await;
    let t = Instant::now();
    let r = acme.cancel(&running).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = acme.wait_terminal(&running, WAIT).await;
    assert_eq!(job["status"], "canceled", "{job}");
    assert!(
        t.elapsed() < Duration::from_millis(MAX_RUN_MS),
        "the cancel took {:?}",
        t.elapsed()
    );
    assert!(job["error"].is_null() && job["result"].is_null(), "{job}");

    // Outputs the request blows up: refused from their shape (2M elements
    // over 1M) or while encoding (200k numbers over 200 kB of JSON); both
    // jobs stay readable, and a small one succeeds.
    for (rows, cols, needle) in [(2000, 1000, "elements"), (200, 1000, "JSON")] {
        let id = acme.submit("big", &expand(rows, cols)).await;
        let job = acme.wait_terminal(&id, WAIT).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["code"], "result_too_large", "{job}");
        assert!(
            job["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle)),
            "{job}"
        );
        assert_eq!(job["attempts"], 1, "{job}");
        let again = acme.job(&id, None).await;
        assert_eq!(again.status, StatusCode::OK);
        assert!(again.text.len() < 2000, "{}", again.text);
    }
    // 900 million floats (3.6 GB) asked of a worker under a 1 GiB ceiling:
    // the allocation fails, the job fails, the worker lives on.
    let id = acme.submit("big", &expand(30_000, 30_000)).await;
    let job = acme.wait_terminal(&id, WAIT).await;
    assert_eq!(job["error"]["code"], "inference_out_of_memory", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert!(worker.proc.log_text().contains("memory ceiling"));
    let id = acme.submit("big", &expand(2, 3)).await;
    let job = acme.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["outputs"][0]["shape"], json!([2, 3]));

    let (worker_mib, api_mib) = (
        procfs::peak_mib(worker.proc.pid()),
        procfs::peak_mib(api.proc.pid()),
    );
    println!("peak memory: worker {worker_mib} MiB, api {api_mib} MiB");
    assert!(worker_mib < 200, "worker peaked at {worker_mib} MiB");
    assert!(api_mib < 100, "api peaked at {api_mib} MiB");
}
