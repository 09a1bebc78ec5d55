//! Push routes end to end, through real redis-server, api and worker
//! processes: a retrain job's event stream (status, progress, the final
//! view) read across a forced reconnect with `Last-Event-ID`, then 204; a
//! WebSocket session carrying 10,000 jobs, every result pushed exactly
//! once; its back-pressure bound and its validation errors; a stream opened
//! on another API replica than the one the job was submitted to; and a
//! tenant refused another tenant's stream with the 404 of `GET`.

use std::time::{Duration, Instant};

use e2e::push::{self, next_json, predict_message};
use e2e::tenancy::KeysFile;
use e2e::{Api, Client, ModelsDir, RedisServer, StatusCode, Worker, repo_root, unique_namespace};
use eventsource_stream::Event;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn row(v: f32) -> Value {
    json!({ "features": vec![v; 128] })
}

/// An event id as a tuple, to compare ids as the API orders them.
fn id_of(e: &Event) -> Vec<u64> {
    e.id.split('.')
        .map(|p| p.parse().expect("numeric id part"))
        .collect()
}

async fn next_event(stream: &mut (impl futures::Stream<Item = Event> + Unpin)) -> Option<Event> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an event within the timeout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrain_stream_resumes_after_a_reconnect_and_ends_with_the_job_view() {
    let redis = RedisServer::start();
    let ns = unique_namespace("push-sse");
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let c = api.client();
    let _worker = Worker::spawn(&redis.url(), &ns, &[]);
    c.wait_for_models(&["breast_cancer"], WAIT).await;
    let csv = std::fs::read(repo_root().join("models/datasets/breast_cancer.csv")).expect("csv");
    let put = c.put_dataset("bc", csv).await;
    assert!(put.status.is_success(), "{}", put.text);
    let r = c
        .send(
            c.http
                .post(format!("{}/v1/models/breast_cancer/retrain", c.base))
                .json(&json!({"dataset": "bc", "params": {"epochs": 1000, "learning_rate": 0.05}, "promote": "never"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id = r.json["job_id"].as_str().expect("job_id").to_owned();

    // First connection: read up to the second training progress, then drop.
    let res = push::events(&c, &id, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut seen: Vec<Event> = Vec::new();
    let mut stream = push::event_stream(res);
    let mut training = 0;
    while training < 2 {
        let e = next_event(&mut stream)
            .await
            .expect("the stream ended early");
        assert_ne!(e.event, "done", "the job ended before the reconnect: {e:?}");
        if e.event == "progress" && e.data.contains("\"training\"") {
            training += 1;
        }
        seen.push(e);
    }
    drop(stream);
    let before = seen.len();
    let last = seen.last().expect("events").id.clone();

    // Reconnect with the last id: only what came after it, up to `done`.
    let res = push::events(&c, &id, Some(&last)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut stream = push::event_stream(res);
    while let Some(e) = next_event(&mut stream).await {
        seen.push(e);
    }
    let after = &seen[before..];
    assert!(
        after.iter().any(|e| e.event == "progress"),
        "no progress after the reconnect"
    );

    // Ids only grow (nothing repeated across the reconnect); the events are
    // the ones documented.
    for w in seen.windows(2) {
        assert!(
            id_of(&w[0]) < id_of(&w[1]),
            "{:?} then {:?}",
            w[0].id,
            w[1].id
        );
    }
    let running: Vec<&Event> = seen.iter().filter(|e| e.event == "status").collect();
    assert!(
        running.iter().any(|e| {
            let d: Value = serde_json::from_str(&e.data).unwrap();
            d["status"] == "running" && d["attempts"] == 1 && d["job_id"] == id.as_str()
        }),
        "{running:?}"
    );
    let epochs: Vec<u64> = seen
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap())
        .filter(|p| p["phase"] == "training")
        .map(|p| p["epoch"].as_u64().expect("epoch"))
        .collect();
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    let done = seen.last().expect("events");
    assert_eq!(done.event, "done");
    assert!(
        seen.iter().filter(|e| e.event == "done").count() == 1,
        "{seen:?}"
    );
    let view: Value = serde_json::from_str(&done.data).expect("done data");
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view, c.job(&id, None).await.json, "done is the job view");

    // After `done`: 204, the SSE spec's "stop reconnecting". Without an id:
    // the final view again, at once.
    let res = push::events(&c, &id, Some(&done.id)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = push::events(&c, &id, None).await;
    let again: Vec<Event> = push::event_stream(res).collect().await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].event, "done");
    assert_eq!(again[0].id, done.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_gets_10000_results_exactly_once_and_the_http_errors() {
    let redis = RedisServer::start();
    let ns = unique_namespace("push-ws");
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let c = api.client();
    let _worker = Worker::spawn(&redis.url(), &ns, &[]);
    c.wait_for_models(&["mlp128"], WAIT).await;

    // Errors first, with the codes of the HTTP predict and the tag echoed.
    let mut ws = push::connect(&api.base_url, None).await;
    let cases = [
        (
            json!({"op": "predict", "ref": "a", "model": "mlp128", "body": {"features": [1.0]}}),
            "invalid_input",
        ),
        (
            json!({"op": "predict", "ref": "b", "model": "nope", "body": row(0.0)}),
            "model_not_found",
        ),
        (
            json!({"op": "predict", "ref": {"k": [1]}, "model": "mlp128", "body": row(0.0), "x": 1}),
            "invalid_input",
        ),
        (
            json!({"op": "train", "ref": 4, "model": "mlp128", "body": row(0.0)}),
            "invalid_input",
        ),
    ];
    for (msg, code) in &cases {
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            msg.to_string(),
        ))
        .await
        .unwrap();
        let reply = next_json(&mut ws).await.expect("a reply");
        assert_eq!(reply["op"], "error", "{reply}");
        assert_eq!(reply["error"]["code"], *code, "{msg}: {reply}");
        assert_eq!(reply["ref"], msg["ref"], "{reply}");
    }
    ws.send(tokio_tungstenite::tungstenite::Message::text("{not json"))
        .await
        .unwrap();
    let reply = next_json(&mut ws).await.expect("a reply");
    assert_eq!(reply["error"]["code"], "malformed_json", "{reply}");
    drop(ws);

    // 10,000 jobs over one session, 500 in flight.
    let n = 10_000;
    let t0 = Instant::now();
    let ws = push::connect(&api.base_url, None).await;
    let pushed = push::run_jobs(ws, "mlp128", &row(0.5), n, 500).await;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "websocket: {n} jobs in {secs:.1} s ({:.0} jobs/s, debug build)",
        n as f64 / secs
    );
    assert_eq!(pushed.acks, n);
    assert_eq!(pushed.results.len(), n);
    let mut ids = std::collections::HashSet::new();
    for (tag, msg) in &pushed.results {
        assert_eq!(msg["op"], "result");
        assert_eq!(msg["status"], "succeeded", "{tag}: {msg}");
        assert!(msg["result"]["outputs"].is_array(), "{msg}");
        assert!(
            ids.insert(msg["job_id"].as_str().unwrap().to_owned()),
            "{msg}"
        );
    }
    // A result is the job view: the same JSON GET answers, plus op and ref.
    let (tag, one) = pushed.results.iter().next().unwrap();
    let mut view = c.job(one["job_id"].as_str().unwrap(), None).await.json;
    view["op"] = json!("result");
    view["ref"] = json!(tag);
    assert_eq!(&view, one);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_in_flight_bound_is_told_so() {
    let redis = RedisServer::start();
    let ns = unique_namespace("push-bound");
    let api = Api::spawn(&redis.url(), &ns, &["--ws-max-in-flight", "3"]);
    let c = api.client();
    // The worker publishes the signature and goes: the jobs stay in flight.
    let worker = Worker::spawn(&redis.url(), &ns, &[]);
    c.wait_for_models(&["mlp128"], WAIT).await;
    drop(worker);

    let mut ws = push::connect(&api.base_url, None).await;
    for i in 0..3 {
        ws.send(predict_message(&json!(i), "mlp128", &row(0.1)))
            .await
            .unwrap();
        let ack = next_json(&mut ws).await.expect("ack");
        assert_eq!(ack["op"], "accepted", "{ack}");
        assert_eq!(ack["ref"], i);
    }
    ws.send(predict_message(&json!(3), "mlp128", &row(0.1)))
        .await
        .unwrap();
    let refused = next_json(&mut ws).await.expect("reply");
    assert_eq!(refused["op"], "error", "{refused}");
    assert_eq!(refused["error"]["code"], "in_flight_limit", "{refused}");
    assert_eq!(refused["ref"], 3);

    // A worker comes: the three results arrive, and room with them.
    let _worker = Worker::spawn(&redis.url(), &ns, &[]);
    let mut tags = Vec::new();
    while tags.len() < 3 {
        let msg = tokio::time::timeout(WAIT, next_json(&mut ws))
            .await
            .expect("results")
            .expect("open");
        assert_eq!(msg["op"], "result", "{msg}");
        tags.push(msg["ref"].as_u64().unwrap());
    }
    tags.sort_unstable();
    assert_eq!(tags, [0, 1, 2]);
    ws.send(predict_message(&json!(4), "mlp128", &row(0.1)))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await.expect("ack")["op"], "accepted");

    // Not an upgrade: 426 with the error body.
    let r = c.get("/v1/ws").await;
    assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED, "{}", r.text);
    assert_eq!(r.error_code(), "upgrade_required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_another_replica_sees_the_job_and_other_tenants_get_404() {
    let redis = RedisServer::start();
    let ns = unique_namespace("push-replicas");
    let models = ModelsDir::with(&[
        ("acme~mlp128", "mlp128.onnx"),
        ("globex~mlp128", "mlp128.onnx"),
    ]);
    let keys = KeysFile::new(&[("acme", "key-acme"), ("globex", "key-globex")]);
    let args = ["--api-keys-file", &keys.arg()];
    let a = Api::spawn(&redis.url(), &ns, &args);
    let b = Api::spawn(&redis.url(), &ns, &args);
    let acme_a = Client::with_api_key(&a.base_url, "key-acme");
    let acme_b = Client::with_api_key(&b.base_url, "key-acme");
    let globex_b = Client::with_api_key(&b.base_url, "key-globex");
    let worker = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &[]);
    acme_a.wait_for_models(&["mlp128"], WAIT).await;
    acme_b.wait_for_models(&["mlp128"], WAIT).await;
    drop(worker);

    // Submitted through A while no worker runs; followed on B.
    let id = acme_a.submit("mlp128", &row(0.2)).await;
    let res = push::events(&acme_b, &id, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut stream = push::event_stream(res);
    let first = next_event(&mut stream).await.expect("an event");
    assert_eq!(first.event, "status", "{first:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&first.data).unwrap()["status"],
        "queued"
    );
    // The stream is open and waiting: B hears of the end only through the
    // worker's publish (it never polls).
    let _worker = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &[]);
    let mut last = first;
    while let Some(e) = next_event(&mut stream).await {
        last = e;
    }
    assert_eq!(last.event, "done", "{last:?}");
    let view: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["model"], "mlp128", "named as the tenant knows it");

    // Another tenant: the same 404 as GET, on either replica.
    let get = globex_b.job(&id, None).await;
    assert_eq!(get.status, StatusCode::NOT_FOUND);
    let res = push::events(&globex_b, &id, None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body: Value = res.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "job_not_found");
    assert_eq!(body, get.json);
    // And a WebSocket for it is globex's, not acme's: acme's model name
    // means globex's own model.
    let mut ws = push::connect(&b.base_url, Some("key-globex")).await;
    ws.send(predict_message(&json!("g"), "mlp128", &row(0.3)))
        .await
        .unwrap();
    let ack = next_json(&mut ws).await.expect("ack");
    assert_eq!(ack["op"], "accepted", "{ack}");
    let result = tokio::time::timeout(WAIT, next_json(&mut ws))
        .await
        .expect("result")
        .expect("open");
    assert_eq!(result["model"], "mlp128");
    assert_eq!(
        acme_b
            .job(result["job_id"].as_str().unwrap(), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Without a key: 401 at the upgrade.
    let r =
        tokio_tungstenite::connect_async(format!("{}/v1/ws", b.base_url.replacen("http", "ws", 1)))
            .await;
    assert!(r.is_err(), "an upgrade without a key was accepted");
}
