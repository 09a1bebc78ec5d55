//! Retrain jobs end to end, through real redis-server, api and worker
//! processes and ONNX Runtime: a dataset upload, training with progress in
//! the job status, the exported model checked against the trainer itself,
//! the compare-and-promote rule, the promoted version serving predictions,
//! the external-trainer path with the repository's example script, and a
//! worker killed mid-training.

use std::time::{Duration, Instant};

use e2e::{Api, Client, RedisServer, StatusCode, Worker, repo_root, unique_namespace};
use ndarray::Axis;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use trainer::{Dataset, Predictions, TrainParams};

const WAIT: Duration = Duration::from_secs(60);

fn breast_cancer_csv() -> Vec<u8> {
    std::fs::read(repo_root().join("models/datasets/breast_cancer.csv")).expect("dataset")
}

async fn put_dataset(c: &Client, name: &str, csv: Vec<u8>) -> Value {
    let r = c.put_dataset(name, csv).await;
    assert!(
        r.status == StatusCode::CREATED || r.status == StatusCode::OK,
        "{}",
        r.text
    );
    r.json
}

async fn retrain(c: &Client, model: &str, body: &Value) -> String {
    let r = c
        .send(
            c.http
                .post(format!("{}/v1/models/{model}/retrain", c.base))
                .json(body),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json["status"], "queued");
    r.json["job_id"].as_str().expect("job_id").to_owned()
}

/// Polls a job every 10 ms until it is terminal, keeping every progress
/// seen while it ran.
async fn follow(c: &Client, id: &str) -> (Value, Vec<Value>) {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let r = c.job(id, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        match r.json["status"].as_str().unwrap_or("") {
            "succeeded" | "failed" | "canceled" => return (r.json, seen),
            "running" if !r.json["progress"].is_null() => seen.push(r.json["progress"].clone()),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not end: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metric(v: &Value, name: &str) -> f64 {
    v[name]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} missing in {v}"))
}

fn spawn_worker(redis: &RedisServer, ns: &str, extra: &[&str]) -> Worker {
    let mut args = vec!["--log-format", "json"];
    args.extend_from_slice(extra);
    let w = Worker::spawn(&redis.url(), ns, &args);
    w.consumer_name(WAIT);
    w
}

/// Predicts one row and returns (model_version, probabilities).
async fn predict_row(c: &Client, model: &str, row: &[f32]) -> (String, Vec<f64>) {
    let id = c.submit(model, &json!({ "features": row })).await;
    let job = c.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let outputs = job["result"]["outputs"].as_array().expect("outputs");
    let probs = outputs
        .iter()
        .find(|o| o["name"] == "probabilities")
        .expect("probabilities output");
    let values = probs["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    (
        job["model_version"].as_str().unwrap_or("").to_owned(),
        values,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breast_cancer_retrain_reports_progress_matches_the_trainer_and_serves_once_promoted() {
    let redis = RedisServer::start();
    let ns = unique_namespace("retrain");
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let c = api.client();
    let _worker = spawn_worker(&redis, &ns, &[]);
    c.wait_for_models(&["breast_cancer"], WAIT).await;

    let csv = breast_cancer_csv();
    let put = put_dataset(&c, "bc", csv.clone()).await;
    assert_eq!(put["rows"], 569, "{put}");

    // Long enough (1000 epochs) that progress is visible while it runs;
    // "never" so the comparison is reported without changing anything.
    let params = json!({"epochs": 1000, "learning_rate": 0.05});
    let t0 = Instant::now();
    let id = retrain(
        &c,
        "breast_cancer",
        &json!({"dataset": "bc", "params": params, "promote": "never"}),
    )
    .await;
    let (job, progress) = follow(&c, &id).await;
    let wall = t0.elapsed();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "retrain");
    let res = &job["result"];
    println!(
        "retrain (debug build): {} ms training, {:.0} ms submit to result; {} progress samples; result {res}",
        res["training_ms"],
        wall.as_secs_f64() * 1e3,
        progress.len()
    );

    // Progress: epochs counted up to 1000 while the job was running.
    let training: Vec<&Value> = progress
        .iter()
        .filter(|p| p["phase"] == "training")
        .collect();
    assert!(
        !training.is_empty(),
        "no training progress seen: {progress:?}"
    );
    let epochs: Vec<u64> = training
        .iter()
        .map(|p| p["epoch"].as_u64().unwrap())
        .collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "{epochs:?}");
    assert!(epochs[0] < 1000, "only the end was seen: {epochs:?}");
    for p in &training {
        assert_eq!(p["epochs"], 1000);
        assert_eq!(p["attempt"], 1);
        assert!(p["train_loss"].as_f64().unwrap().is_finite());
    }

    // The job's numbers: holdout accuracy, both scores, the decision.
    assert_eq!(res["trainer"], "builtin");
    assert_eq!(res["decision"], "registered_only", "{res}");
    assert_eq!(res["current_version"], 1, "{res}");
    assert_eq!(res["dataset"]["name"], "bc");
    assert_eq!(res["dataset"]["rows"], 569);
    assert_eq!(res["dataset"]["holdout_rows"], 114);
    assert_eq!(res["dataset"]["sha256"], hex::encode(Sha256::digest(&csv)));
    let accuracy = metric(&res["candidate"]["metrics"], "accuracy");
    assert!(accuracy >= 0.93, "holdout accuracy {accuracy}");
    assert_eq!(res["baseline"]["version"], 1, "{res}");
    assert!(metric(&res["baseline"]["metrics"], "accuracy") > 0.9);
    assert!(res["onnx_max_abs_diff"].as_f64().unwrap() <= 1e-5);
    let version = res["version"].as_u64().expect("version") as u32;
    assert_eq!(version, 2);

    // The same training in this process gives the same ONNX bytes, and the
    // trainer's own holdout scores equal ONNX Runtime's in the worker.
    let ds = Dataset::from_csv(&csv, "target").expect("dataset");
    let p: TrainParams = serde_json::from_value(params.clone()).expect("params");
    let trained = trainer::train(&ds, &p, |_| std::ops::ControlFlow::Continue(())).expect("train");
    let onnx = trained.to_onnx();
    assert_eq!(res["sha256"], hex::encode(Sha256::digest(&onnx)));
    let trainer::Metrics::Classification {
        accuracy: own_accuracy,
        log_loss,
        ..
    } = trained.metrics
    else {
        panic!("classification metrics expected")
    };
    assert_eq!(own_accuracy, accuracy);
    assert!((log_loss - metric(&res["candidate"]["metrics"], "log_loss")).abs() < 1e-5);

    // Registered as a ready retrain version with its scores, not current.
    let versions = c.get("/v1/models/breast_cancer/versions").await;
    assert_eq!(versions.json["current_version"], 1, "{}", versions.text);
    let v2 = versions.json["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == version)
        .expect("version listed")
        .clone();
    assert_eq!(v2["source"], "retrain");
    assert_eq!(v2["status"], "ready");
    assert_eq!(v2["job_id"], id.as_str());
    assert!(
        v2["metrics"]["holdout"]["accuracy"].as_f64().is_some(),
        "{v2}"
    );

    // "always": the next version becomes current and serves predictions
    // that are the trainer's own, to 1e-5.
    let id = retrain(
        &c,
        "breast_cancer",
        &json!({"dataset": "bc", "params": params, "promote": "always"}),
    )
    .await;
    let job = c.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let res = &job["result"];
    assert_eq!(res["decision"], "promoted", "{res}");
    assert_eq!(res["current_version"], 3, "{res}");
    assert_eq!(job["model_version"], "3");
    // Same data, parameters and seed: the same bytes as version 2.
    assert_eq!(res["sha256"], hex::encode(Sha256::digest(&onnx)));

    let deadline = Instant::now() + Duration::from_secs(10);
    let rows: Vec<usize> = (0..ds.n_rows()).step_by(57).collect();
    let mut served = 0;
    while served < rows.len() {
        let i = rows[served];
        let x = ds.features().select(Axis(0), &[i]);
        let row: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let (v, probs) = predict_row(&c, "breast_cancer", &row).await;
        if v != "3" {
            // Workers switch within a second of the promotion.
            assert!(Instant::now() < deadline, "still served by version {v}");
            continue;
        }
        let Predictions::Classification { probabilities, .. } =
            trained.model.predict(x.view()).expect("predict")
        else {
            panic!("classification expected")
        };
        for (a, b) in probs.iter().zip(probabilities.row(0)) {
            assert!((a - b).abs() <= 1e-5, "row {i}: served {a}, trainer {b}");
        }
        served += 1;
    }
}

/// `y = 3·x1 − 2·x2 + 0.5` plus a small deterministic wobble.
fn linear_rows(n: usize) -> Value {
    let rows: Vec<Value> = (0..n)
        .map(|i| {
            let x1 = (i % 17) as f64 * 0.25 - 2.0;
            let x2 = (i % 11) as f64 * 0.5 - 2.5;
            let wobble = ((i * 7919) % 13) as f64 * 0.002 - 0.012;
            json!([x1, x2, 3.0 * x1 - 2.0 * x2 + 0.5 + wobble])
        })
        .collect();
    json!({"columns": ["x1", "x2", "y"], "rows": rows})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_rows_create_a_model_and_only_a_model_not_worse_is_promoted() {
    let redis = RedisServer::start();
    let ns = unique_namespace("retrain-inline");
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let c = api.client();
    let _worker = spawn_worker(&redis, &ns, &[]);
    c.wait_for_models(&["breast_cancer"], WAIT).await;

    let data = linear_rows(200);
    let good = json!({"target_column": "y", "task": "regression", "epochs": 200});
    // A model that does not exist yet: its first version becomes current.
    let id = retrain(&c, "lin", &json!({"data": data, "params": good})).await;
    let job = c.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let res = &job["result"];
    assert_eq!(res["decision"], "promoted", "{res}");
    assert_eq!(res["version"], 1);
    assert!(res["baseline"].is_null());
    assert!(res["dataset"]["name"].is_null());
    assert!(metric(&res["candidate"]["metrics"], "r2") > 0.99, "{res}");
    c.wait_for_models(&["lin"], WAIT).await;
    let id = c.submit("lin", &json!({"features": [1.0, 2.0]})).await;
    let job = c.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let y = job["result"]["outputs"][0]["data"][0]
        .as_f64()
        .expect("prediction");
    assert!((y - (-0.5)).abs() < 0.05, "3·1 − 2·2 + 0.5 = −0.5, got {y}");

    // One epoch at a tiny learning rate is worse: registered, not promoted.
    let poor =
        json!({"target_column": "y", "task": "regression", "epochs": 1, "learning_rate": 0.001});
    let id = retrain(&c, "lin", &json!({"data": data, "params": poor})).await;
    let job = c.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let res = &job["result"];
    assert_eq!(res["decision"], "kept_current", "{res}");
    assert_eq!(res["version"], 2);
    assert_eq!(res["current_version"], 1);
    assert_eq!(res["baseline"]["version"], 1);
    let (new, old) = (
        metric(&res["candidate"]["metrics"], "rmse"),
        metric(&res["baseline"]["metrics"], "rmse"),
    );
    assert!(new > old, "{res}");
    let reason = res["reason"].as_str().unwrap();
    assert!(reason.contains("worse than current version 1"), "{reason}");

    // Retraining well again is not worse: promoted.
    let id = retrain(&c, "lin", &json!({"data": data, "params": good})).await;
    let job = c.wait_terminal(&id, WAIT).await;
    let res = &job["result"];
    assert_eq!(res["decision"], "promoted", "{res}");
    assert_eq!(res["current_version"], 3);

    // A bad target fails the job with a clear error, never a version.
    let wrong = json!({"target_column": "y", "task": "classification"});
    let id = retrain(&c, "lin", &json!({"data": data, "params": wrong})).await;
    let job = c.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "invalid_dataset", "{job}");
    let versions = c.get("/v1/models/lin/versions").await;
    assert_eq!(versions.json["versions"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_trainer_gets_the_training_rows_and_its_model_is_validated_and_scored() {
    let redis = RedisServer::start();
    let ns = unique_namespace("retrain-ext");
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let c = api.client();
    let script = repo_root().join("scripts/external-trainer-example");
    let command = format!("python3 {}", script.display());
    let worker = spawn_worker(&redis, &ns, &["--external-trainer", &command]);
    c.wait_for_models(&["breast_cancer"], WAIT).await;
    put_dataset(&c, "bc", breast_cancer_csv()).await;

    let id = retrain(
        &c,
        "breast_cancer",
        &json!({"dataset": "bc", "trainer": "external", "promote": "never", "params": {"epochs": 150}}),
    )
    .await;
    let (job, progress) = follow(&c, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let res = &job["result"];
    println!("external retrain: {res}");
    assert_eq!(res["trainer"], "external");
    assert_eq!(res["decision"], "registered_only");
    assert_eq!(res["dataset"]["train_rows"], 455);
    assert!(
        metric(&res["candidate"]["metrics"], "accuracy") >= 0.93,
        "{res}"
    );
    assert_eq!(
        res["baseline"]["version"], 1,
        "same signature as the demo model"
    );
    assert!(res["onnx_max_abs_diff"].is_null());
    // Its "epoch K/N loss X" lines became progress (when a poll caught one).
    for p in progress.iter().filter(|p| p["phase"] == "training") {
        assert_eq!(p["epochs"], 150, "{p}");
    }

    // Its output is in the worker's log under the job's id, and it saw the
    // 455 training rows only (the 114 holdout rows stay unseen).
    let lines = worker.log_events("external trainer output");
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["job_id"] == id.as_str())
        .collect();
    assert!(
        mine.iter().any(|l| l["fields"]["line"]
            .as_str()
            .is_some_and(|s| s.starts_with("455 rows, 30 features"))),
        "{mine:?}"
    );
    assert!(mine.iter().any(|l| {
        l["fields"]["line"] == "epoch 150/150"
            || l["fields"]["line"]
                .as_str()
                .is_some_and(|s| s.starts_with("epoch 150/150 loss"))
    }));

    // A program that fails: the job fails with its stderr, no version.
    let id = retrain(
        &c,
        "breast_cancer",
        &json!({"data": {"columns": ["a", "target"], "rows": [[1.0, 0], [2.0, 1], [3.0, 2], [4.0, 0], [5.0, 1]]}, "trainer": "external"}),
    )
    .await;
    let job = c.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "external_trainer_failed", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("binary classification"),
        "{job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_training_loses_the_job_to_another() {
    let redis = RedisServer::start();
    let ns = unique_namespace("retrain-kill");
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let c = api.client();
    let lease = ["--lease-ms", "1000"];
    let first = spawn_worker(&redis, &ns, &lease);
    c.wait_for_models(&["breast_cancer"], WAIT).await;
    put_dataset(&c, "bc", breast_cancer_csv()).await;

    let id = retrain(
        &c,
        "breast_cancer",
        &json!({"dataset": "bc", "params": {"epochs": 1500}, "promote": "never"}),
    )
    .await;
    // Kill it once it is visibly training.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = c.job(&id, None).await;
        if r.json["progress"]["epoch"]
            .as_u64()
            .is_some_and(|e| e >= 20)
        {
            break;
        }
        assert!(Instant::now() < deadline, "never trained: {}", r.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.proc.signal("KILL");
    let _second = spawn_worker(&redis, &ns, &lease);
    let job = c.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(
        job["result"]["version"], 2,
        "one version, from the second attempt"
    );
    let versions = c.get("/v1/models/breast_cancer/versions").await;
    assert_eq!(versions.json["versions"].as_array().unwrap().len(), 2);
}
