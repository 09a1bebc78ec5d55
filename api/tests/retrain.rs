//! Datasets and retrain requests through the router against a real Redis:
//! what is stored, what is refused before anything is stored or queued, and
//! exactly what a retrain job carries on the training stream. No worker
//! runs here; the test plays the worker's side where the job view needs it.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shared::job::JobKind;
use shared::queue::consume::{self, Delivery, Policy, Start};
use shared::queue::datasets;
use shared::queue::keys::TRAIN;
use shared::queue::wire::{
    JobEnvelope, JobSpec, PromotePolicy, RetrainSpec, TrainerKind, TrainingData,
};
use shared::retrain::{Phase, Progress};
use shared::trace::TraceContext;
use trainer::{Dataset, InlineRows, TrainParams};
use uuid::Uuid;

const CSV: &[u8] = b"x1,x2,target\n0.5,1.0,0\n1.5,-2.0,1\n2.5,0.0,1\n";

fn put_csv(name: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut req = Request::put(format!("/v1/datasets/{name}"));
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    req.body(body.into()).unwrap()
}

fn delete(uri: &str) -> Request<Body> {
    Request::delete(uri).body(Body::empty()).unwrap()
}

fn retrain(model: &str, body: &Value) -> Request<Body> {
    post_json(&format!("/v1/models/{model}/retrain"), body.to_string())
}

fn with_header(mut req: Request<Body>, name: &'static str, value: &str) -> Request<Body> {
    req.headers_mut().insert(name, value.parse().unwrap());
    req
}

/// A keys file with two tenants.
struct KeysFile(TempFile);

impl KeysFile {
    fn new() -> KeysFile {
        KeysFile(TempFile::keys(&[("acme", "key-a"), ("globex", "key-g")]))
    }

    fn arg(&self) -> String {
        self.0.arg()
    }
}

async fn stream_len(env: &Env, model: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(env.keys.stream(model, 0))
        .query_async(&mut env.conn().await)
        .await
        .unwrap()
}

/// Everything new on the training stream, read as a training slot would.
async fn read_train(env: &Env) -> Vec<Delivery> {
    let mut conn = env.conn().await;
    consume::ensure_group(&mut conn, &env.keys.stream(TRAIN, 0))
        .await
        .unwrap();
    consume::read_new(
        &mut conn,
        &[env.keys.stream(TRAIN, 0)],
        "trainer-1",
        10,
        100,
    )
    .await
    .unwrap()
}

fn spec(job: &JobEnvelope) -> &RetrainSpec {
    match &job.spec {
        JobSpec::Retrain(spec) => spec,
        other => panic!("a retrain job carries its spec, not {other:?}"),
    }
}

#[tokio::test]
async fn datasets_are_stored_verbatim_read_listed_replaced_and_deleted() {
    let env = Env::start().await;

    let r = env
        .send(put_csv("tiny", Some("text/csv; charset=utf-8"), CSV))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.headers[header::LOCATION], "/v1/datasets/tiny");
    let v = r.json();
    assert_eq!(v["name"], "tiny");
    assert_eq!(v["rows"], 3);
    assert_eq!(v["columns"], json!(["x1", "x2", "target"]));
    assert_eq!(v["size"], CSV.len());
    assert_eq!(v["sha256"], hex::encode(Sha256::digest(CSV)));
    let created = v["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.contains('T'), "{created}");
    let stored = datasets::get(&mut env.conn().await, &env.keys, "tiny")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(stored.0, CSV, "the bytes are stored as sent");

    let r = env.send(get("/v1/datasets/tiny")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), v, "GET answers what PUT answered");

    // A replacement answers 200 and really replaces the bytes and columns.
    let other = b"a,b,c,target\n1,2,3,0\n4,5,6,1\n";
    let r = env
        .send(put_csv("tiny", Some("application/csv"), &other[..]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["columns"], json!(["a", "b", "c", "target"]));
    let r = env.send(get("/v1/datasets/tiny")).await;
    assert_eq!(r.json()["rows"], 2);
    assert_eq!(r.json()["sha256"], hex::encode(Sha256::digest(other)));

    let r = env.send(put_csv("second", Some("text/csv"), CSV)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = env.send(get("/v1/datasets")).await;
    assert_eq!(r.status, StatusCode::OK);
    let names: Vec<Value> = r.json()["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].clone())
        .collect();
    assert_eq!(names, ["second", "tiny"], "sorted by name");

    let r = env.send(delete("/v1/datasets/tiny")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    env.send(get("/v1/datasets/tiny"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "dataset_not_found");
    env.send(delete("/v1/datasets/tiny"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "dataset_not_found");
    assert_eq!(
        env.send(get("/v1/datasets")).await.json()["datasets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A name no model could have cannot name a dataset either.
    for bad in ["a~b", ".train", "x%20y"] {
        env.send(put_csv(bad, Some("text/csv"), CSV))
            .await
            .assert_error(StatusCode::NOT_FOUND, "dataset_not_found");
    }
}

#[tokio::test]
async fn bad_uploads_are_refused_and_nothing_is_stored() {
    // The JSON body limit is far below the dataset limit: uploads are
    // bounded by the dataset limit alone.
    let env = Env::start_with(&["--max-dataset-bytes", "200", "--max-body-bytes", "64"]).await;

    let msg = env
        .send(put_csv(
            "bad",
            Some("text/csv"),
            &b"x1,label,x3\n1,0,2\n3,yes,4\n"[..],
        ))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_dataset");
    assert!(msg.contains("line 3") && msg.contains("label"), "{msg}");
    // The first column is checked as strictly as the others.
    let msg = env
        .send(put_csv("bad", Some("text/csv"), &b"id,x\n1,2\nn/a,3\n"[..]))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_dataset");
    assert!(msg.contains("line 3") && msg.contains("id"), "{msg}");
    let msg = env
        .send(put_csv("bad", Some("text/csv"), &b"only\n1\n2\n"[..]))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_dataset");
    assert!(msg.contains("feature"), "{msg}");
    let msg = env
        .send(put_csv("bad", Some("text/csv"), &b"a,b,a\n1,2,3\n"[..]))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_dataset");
    assert!(msg.contains("\"a\" appears more than once"), "{msg}");
    env.send(put_csv("bad", Some("text/csv"), Body::empty()))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_dataset");

    for ct in [None, Some("application/json"), Some("text/plain")] {
        env.send(put_csv("bad", ct, CSV))
            .await
            .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    }

    // 200 bytes exactly is allowed, one more is not.
    let mut csv = CSV.to_vec();
    while csv.len() < 200 {
        csv.extend_from_slice(b"1,2,0\n");
    }
    csv.truncate(199);
    csv.push(b'\n');
    assert_eq!(csv.len(), 200);
    let r = env
        .send(put_csv("limit", Some("text/csv"), csv.clone()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    csv.push(b'\n');
    env.send(put_csv("bad", Some("text/csv"), csv))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    env.send(get("/v1/datasets/bad"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "dataset_not_found");
    let list = env.send(get("/v1/datasets")).await.json();
    assert_eq!(list["datasets"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn retrain_requests_that_could_never_train_are_refused_before_queueing() {
    let env = Env::start().await;
    let r = env.send(put_csv("tiny", Some("text/csv"), CSV)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let wide: String = (0..20).map(|i| format!("c{i},")).collect::<String>() + "target\n";
    let wide_row: String = (0..20).map(|_| "1,").collect::<String>() + "0\n";
    let r = env
        .send(put_csv("wide", Some("text/csv"), wide + &wide_row))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());

    let cases = [
        (
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "exactly one",
        ),
        (
            json!({"dataset": "tiny", "data": {"columns": ["x", "target"], "rows": [[1, 0]]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "exactly one",
        ),
        (
            json!({"dataset": "tiny", "params": {"epoch": 3}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "epoch",
        ),
        (
            json!({"dataset": "tiny", "params": {"epochs": "many"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "params",
        ),
        (
            json!({"dataset": "tiny", "params": {"epochs": 0}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "epochs",
        ),
        (
            json!({"dataset": "tiny", "params": {"holdout_fraction": 0.9}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "holdout_fraction",
        ),
        (
            json!({"dataset": "nope"}),
            StatusCode::NOT_FOUND,
            "dataset_not_found",
            "nope",
        ),
        (
            json!({"dataset": "a~b"}),
            StatusCode::NOT_FOUND,
            "dataset_not_found",
            "a~b",
        ),
        (
            json!({"dataset": "tiny", "params": {"target_column": "y"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            r#"(columns: "x1", "x2", "target")"#,
        ),
        (
            json!({"dataset": "wide", "params": {"target_column": "y"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            r#""c11", ... 9 more)"#,
        ),
        (
            json!({"data": {"columns": ["a", "target"], "rows": [[1.0, 0.0], [2.0]]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_dataset",
            "rows[1]",
        ),
        (
            json!({"data": {"columns": ["a", "b"], "rows": [[1.0, 0.0]]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_dataset",
            "target",
        ),
        (
            json!({"data": {"columns": ["a", "target"], "rows": [[1.0, 0.0]], "extra": 1}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "extra",
        ),
        (
            json!({"dataset": "tiny", "promote": "sometimes"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "sometimes",
        ),
        (
            json!({"dataset": "tiny", "trainer": "gpu"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "gpu",
        ),
        (
            json!({"dataset": "tiny", "rows": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "rows",
        ),
    ];
    for (body, status, code, says) in cases {
        let msg = env
            .send(retrain("m", &body))
            .await
            .assert_error(status, code);
        assert!(msg.contains(says), "{body}: {msg}");
    }
    // An invalid model name is a model that cannot exist.
    env.send(retrain("bad~name", &json!({"dataset": "tiny"})))
        .await
        .assert_error(StatusCode::NOT_FOUND, "model_not_found");
    let r = env
        .send(
            Request::post("/v1/models/m/retrain")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(r#"{"dataset":"tiny"}"#))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.text());

    assert_eq!(stream_len(&env, TRAIN).await, 0, "nothing was queued");
    assert_eq!(stream_len(&env, "m").await, 0);
}

#[tokio::test]
async fn a_retrain_job_carries_the_tenants_dataset_and_filled_in_params_on_the_training_stream() {
    let keys = KeysFile::new();
    let env = Env::start_with(&["--api-keys-file", &keys.arg()]).await;
    let r = env
        .send(as_tenant(put_csv("bc", Some("text/csv"), CSV), "key-a"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert!(
        datasets::meta(&mut env.conn().await, &env.keys, "acme~bc")
            .await
            .unwrap()
            .is_some(),
        "stored under the tenant's name"
    );

    let client_trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = json!({
        "dataset": "bc",
        "params": {"epochs": 5, "learning_rate": 0.05},
        "promote": "never",
        "trainer": "external",
    });
    let send = |body: &Value| {
        let req = with_header(retrain("m", body), "traceparent", client_trace);
        as_tenant(with_header(req, "idempotency-key", "retrain-1"), "key-a")
    };
    let r = env.send(send(&body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let v = r.json();
    let id: Uuid = v["job_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(v["status"], "queued");
    assert_eq!(v["status_url"], format!("/v1/jobs/{id}"));
    assert_eq!(r.headers[header::LOCATION], format!("/v1/jobs/{id}"));

    // A retry with the same key is the same job; the same key on another
    // request is refused.
    let again = env.send(send(&body)).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.json()["job_id"], id.to_string());
    env.send(send(&json!({"dataset": "bc"})))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");

    let got = read_train(&env).await;
    assert_eq!(got.len(), 1, "one job on the training stream");
    assert_eq!(stream_len(&env, "acme~m").await, 0, "not on the model's");
    let job = got[0].job.as_ref().expect("decodes");
    assert_eq!(got[0].job_id, Some(id));
    assert_eq!(job.id, id);
    assert_eq!(job.kind(), JobKind::Retrain);
    assert_eq!(job.model, "acme~m");
    assert_eq!(job.deadline_ms, None);
    let trace = TraceContext::parse(job.traceparent.as_deref().expect("traceparent"))
        .expect("valid traceparent");
    assert_eq!(
        trace.trace_id.to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "the client's trace continues"
    );
    let spec = spec(job);
    assert_eq!(spec.data, TrainingData::Dataset("acme~bc".into()));
    assert_eq!(spec.promote, PromotePolicy::Never);
    assert_eq!(spec.trainer, TrainerKind::External);
    let params: TrainParams = serde_json::from_str(&spec.params_json).unwrap();
    assert_eq!(
        params,
        TrainParams {
            epochs: 5,
            learning_rate: 0.05,
            ..TrainParams::default()
        }
    );
    // Every parameter is written out, so the worker never applies defaults
    // of its own (which could differ after an upgrade).
    let raw: Value = serde_json::from_str(&spec.params_json).unwrap();
    for k in [
        "target_column",
        "task",
        "epochs",
        "learning_rate",
        "l2",
        "holdout_fraction",
        "seed",
        "batch_size",
    ] {
        assert!(raw.get(k).is_some(), "{k} missing from {raw}");
    }

    // The job view: public model name, kind, no progress yet.
    let view = env
        .send(as_tenant(get(&format!("/v1/jobs/{id}")), "key-a"))
        .await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.text());
    let v = view.json();
    assert_eq!(v["kind"], "retrain");
    assert_eq!(v["model"], "m");
    assert_eq!(v["status"], "queued");
    assert!(v.get("progress").is_some_and(Value::is_null), "{v}");
    env.send(as_tenant(get(&format!("/v1/jobs/{id}")), "key-g"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "job_not_found");

    // Play the training slot: start the job, report progress.
    let mut conn = env.conn().await;
    let policy = Policy {
        max_attempts: 3,
        succeeded_ttl_secs: 60,
        failed_ttl_secs: 60,
        durability: shared::queue::Durability::Async,
    };
    let started = consume::start(
        &mut conn,
        &env.keys,
        "trainer-1",
        &policy,
        &[&got[0]],
        shared::time::now_ms(),
    )
    .await
    .unwrap();
    assert_eq!(started, vec![Start::Run(1)]);
    let progress = Progress {
        attempt: 1,
        phase: Phase::Training,
        epoch: Some(3),
        epochs: Some(5),
        train_loss: Some(0.4375),
        updated_at_ms: shared::time::now_ms(),
    };
    let progress_json = serde_json::to_string(&progress).unwrap();
    assert!(
        consume::write_progress(&mut conn, &env.keys, &id, 1, &progress_json)
            .await
            .unwrap()
    );
    let v = env
        .send(as_tenant(get(&format!("/v1/jobs/{id}")), "key-a"))
        .await
        .json();
    assert_eq!(v["status"], "running");
    assert_eq!(v["attempts"], 1);
    assert_eq!(
        v["progress"],
        serde_json::to_value(&progress).unwrap(),
        "{v}"
    );
    assert_eq!(v["progress"]["phase"], "training");

    // `acme~m` is created by this retrain: no worker has published it, so
    // it is not a label yet.
    let metrics = env.send_ops(get("/metrics")).await;
    let text = metrics.text();
    assert!(
        text.lines()
            .any(|l| l
                .starts_with(r#"onnxq_jobs_submitted_total{model="unknown",kind="retrain"} 1"#)),
        "{text}"
    );
    assert!(!text.contains("acme~m"), "{text}");
}

#[tokio::test]
async fn inline_rows_travel_as_csv_that_parses_back_to_the_same_rows() {
    let env = Env::start().await;
    let rows = InlineRows {
        columns: vec!["x1".into(), "y".into(), "x2".into()],
        rows: vec![
            vec![0.1, -1.5, 3.0],
            vec![1.0 / 3.0, 2.25, -0.000_125],
            vec![1e-9, 7.0, 12_345.678],
        ],
    };
    let body = json!({
        "data": rows.clone(),
        "params": {"target_column": "y", "task": "regression"},
    });
    let r = env.send(retrain("fresh", &body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id: Uuid = r.json()["job_id"].as_str().unwrap().parse().unwrap();

    let got = read_train(&env).await;
    let job = got[0].job.as_ref().expect("decodes");
    assert_eq!(job.id, id);
    assert_eq!(job.model, "fresh", "a model that does not exist yet");
    let spec = spec(job);
    assert_eq!(spec.promote, PromotePolicy::IfNotWorse, "the default");
    assert_eq!(spec.trainer, TrainerKind::Builtin, "the default");
    let TrainingData::InlineCsv(csv) = &spec.data else {
        panic!("inline rows travel inline: {:?}", spec.data);
    };
    let sent = rows.into_dataset("y").unwrap();
    let carried = Dataset::from_csv(csv.as_bytes(), "y").expect("the CSV parses");
    assert_eq!(carried, sent, "same columns, same values, bit for bit");
    let params: TrainParams = serde_json::from_str(&spec.params_json).unwrap();
    assert_eq!(params.target_column, "y");
    assert_eq!(params.task, trainer::Task::Regression);

    let v = env.send(get(&format!("/v1/jobs/{id}"))).await.json();
    assert_eq!(v["kind"], "retrain");
    assert_eq!(v["model"], "fresh");
}

#[tokio::test]
async fn a_full_training_queue_answers_429() {
    let env = Env::start_with(&["--max-queue-depth", "1"]).await;
    let body = json!({"data": {"columns": ["x", "target"], "rows": [[0.0, 0.0], [1.0, 1.0]]}});
    let r = env.send(retrain("m", &body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    env.send(retrain("other", &body))
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "queue_full");
    assert_eq!(stream_len(&env, TRAIN).await, 1);
}

#[tokio::test]
async fn the_header_is_read_by_the_parsers_rules() {
    let env = Env::start().await;
    let cases: [(&[u8], Value); 4] = [
        (
            b"\"mean radius, mm\",x2,target\n1,2,0\n3,4,1\n",
            json!(["mean radius, mm", "x2", "target"]),
        ),
        (b"\n\r\n x1 ,target\n1,0\n", json!(["x1", "target"])),
        (b"\xEF\xBB\xBFa,target\r\n1,0\r\n", json!(["a", "target"])),
        (
            b"\"say \"\"hi\"\"\",target\n1,0\n",
            json!(["say \"hi\"", "target"]),
        ),
    ];
    for (i, (csv, columns)) in cases.into_iter().enumerate() {
        let r = env
            .send(put_csv(&format!("h{i}"), Some("text/csv"), csv))
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}: {}",
            String::from_utf8_lossy(csv),
            r.text()
        );
        assert_eq!(r.json()["columns"], columns);
    }
}
