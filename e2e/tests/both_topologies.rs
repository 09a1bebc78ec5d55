//! The core end-to-end scenarios, written once and run on both topologies:
//! one `redis-server` with one partition (the default deployment) and a
//! 3-master/3-replica Redis Cluster with `--partitions 3`. Predict and
//! poll, cancel of a queued job, transient failures into dead letters and
//! their replay with `jobctl`, a hot swap to a new version, and a retrain
//! that promotes its model.

use std::process::Command;
use std::time::Duration;

use e2e::{
    Api, ModelsDir, RedisCluster, RedisServer, StatusCode, Worker, binary, unique_namespace,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// Where the scenarios run: a Redis URL and the partitions every binary
/// is given.
struct Target {
    url: String,
    partitions: &'static str,
}

impl Target {
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["--partitions", self.partitions];
        a.extend_from_slice(extra);
        a
    }

    fn api(&self, ns: &str) -> Api {
        Api::spawn(&self.url, ns, &self.args(&[]))
    }

    fn jobctl(&self, ns: &str, args: &[&str]) {
        let out = Command::new(binary("jobctl"))
            .args(["--redis-url", &self.url, "--namespace", ns])
            .args(["--partitions", self.partitions])
            .args(args)
            .output()
            .expect("run jobctl");
        assert!(
            out.status.success(),
            "jobctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn predict_and_poll(t: &Target) {
    let ns = unique_namespace("both-predict");
    let _w = Worker::spawn(&t.url, &ns, &t.args(&[]));
    let api = t.api(&ns);
    let c = api.client();
    c.wait_for_models(&["mlp128"], WAIT).await;
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(
            c.submit("mlp128", &json!({"features": vec![i as f32 * 0.01; 128]}))
                .await,
        );
    }
    for id in &ids {
        let r = c.job(id, Some(10.0)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["status"], "succeeded", "{}", r.text);
        assert!(
            r.json["result"]["outputs"][0]["data"].is_array(),
            "{}",
            r.text
        );
    }
}

async fn cancel_a_queued_job(t: &Target) {
    let ns = unique_namespace("both-cancel");
    let api = t.api(&ns);
    let c = api.client();
    // A worker publishes the signatures, then leaves: jobs stay queued.
    {
        let mut w = Worker::spawn(&t.url, &ns, &t.args(&[]));
        c.wait_for_models(&["mlp128"], WAIT).await;
        w.proc.signal("TERM");
        assert!(w.proc.wait_exit(WAIT).is_some(), "worker did not stop");
    }
    let id = c
        .submit("mlp128", &json!({"features": vec![0.5f32; 128]}))
        .await;
    let r = c
        .send(c.http.delete(format!("{}/v1/jobs/{id}", c.base)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "canceled", "{}", r.text);
    // A worker that comes back reads the entry and leaves it canceled.
    let _w = Worker::spawn(&t.url, &ns, &t.args(&[]));
    let later = c
        .submit("mlp128", &json!({"features": vec![0.5f32; 128]}))
        .await;
    let job = c.wait_terminal(&later, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let r = c.job(&id, None).await;
    assert_eq!(r.json["status"], "canceled", "{}", r.text);
}

async fn dead_letters_and_replay(t: &Target) {
    let ns = unique_namespace("both-dead");
    let models = ModelsDir::with(&[("flaky", "testdata/flaky_broken.onnx")]);
    let extra = [
        "--max-attempts",
        "2",
        "--retry-base-ms",
        "50",
        "--retry-max-ms",
        "100",
        "--block-ms",
        "200",
    ];
    let w = Worker::spawn_with_models(&t.url, &ns, &models.path, &t.args(&extra));
    let api = t.api(&ns);
    let c = api.client();
    c.wait_for_models(&["flaky"], WAIT).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            c.submit("flaky", &json!({"features": [1.0, 2.0, 3.0, 4.0]}))
                .await,
        );
    }
    for id in &ids {
        let job = c.wait_terminal(id, WAIT).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["attempts"], 2, "{job}");
        assert_eq!(job["error"]["code"], "inference_error", "{job}");
    }
    drop(w);
    models.put("flaky", "testdata/flaky_fixed.onnx");
    let _w = Worker::spawn_with_models(&t.url, &ns, &models.path, &t.args(&extra));
    t.jobctl(&ns, &["replay", "--model", "flaky", "--yes"]);
    for id in &ids {
        let job = c.wait_terminal(id, WAIT).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(
            job["result"]["outputs"][0]["data"],
            json!([2.0, 4.0, 6.0, 8.0])
        );
    }
}

async fn hot_swap(t: &Target) {
    let ns = unique_namespace("both-swap");
    let models = ModelsDir::with(&[("m", "testdata/flaky_fixed.onnx")]);
    let _w = Worker::spawn_with_models(&t.url, &ns, &models.path, &t.args(&[]));
    let api = t.api(&ns);
    let c = api.client();
    c.wait_for_models(&["m"], WAIT).await;
    let x = json!({"features": [1.0, 2.0, 3.0, 4.0]});
    let before = c.submit("m", &x).await;
    let job = c.wait_terminal(&before, WAIT).await;
    assert_eq!(
        job["result"]["outputs"][0]["data"],
        json!([2.0, 4.0, 6.0, 8.0]),
        "{job}"
    );

    let bytes = std::fs::read(e2e::repo_root().join("models/testdata/scale3.onnx")).expect("model");
    let r = c
        .post_raw(
            "/v1/models/m/versions",
            Some("application/octet-stream"),
            bytes,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let v = r.json["version"].as_u64().expect("version") as u32;
    let job = c
        .wait_terminal(r.json["job_id"].as_str().expect("job_id"), WAIT)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let r = c.promote("m", v).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Every worker swaps within moments; a job after that runs version v.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let id = c.submit("m", &x).await;
        let job = c.wait_terminal(&id, WAIT).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        if job["model_version"] == json!(v.to_string()) {
            assert_eq!(
                job["result"]["outputs"][0]["data"],
                json!([3.0, 6.0, 9.0, 12.0])
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never swapped: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn retrain(t: &Target) {
    let ns = unique_namespace("both-retrain");
    let _w = Worker::spawn(&t.url, &ns, &t.args(&["--train-slots", "1"]));
    let api = t.api(&ns);
    let c = api.client();
    let rows: Vec<Value> = (0..120)
        .map(|i| {
            let (x1, x2) = ((i % 17) as f64 * 0.25 - 2.0, (i % 11) as f64 * 0.5 - 2.5);
            json!([x1, x2, 3.0 * x1 - 2.0 * x2 + 0.5])
        })
        .collect();
    let body = json!({
        "data": {"columns": ["x1", "x2", "y"], "rows": rows},
        "params": {"target_column": "y", "task": "regression", "epochs": 150}
    });
    let r = c
        .send(
            c.http
                .post(format!("{}/v1/models/lin/retrain", c.base))
                .json(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = c
        .wait_terminal(r.json["job_id"].as_str().expect("job_id"), WAIT)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["decision"], "promoted", "{job}");
    c.wait_for_models(&["lin"], WAIT).await;
    let id = c.submit("lin", &json!({"features": [1.0, 2.0]})).await;
    let job = c.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

async fn every_scenario(t: &Target) {
    predict_and_poll(t).await;
    cancel_a_queued_job(t).await;
    dead_letters_and_replay(t).await;
    hot_swap(t).await;
    retrain(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_node() {
    let redis = RedisServer::start();
    every_scenario(&Target {
        url: redis.url(),
        partitions: "1",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_with_three_partitions() {
    let cluster = RedisCluster::start();
    every_scenario(&Target {
        url: cluster.url(),
        partitions: "3",
    })
    .await;
}
