//! The HTTP contract, end to end through the router against a real Redis.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use shared::job::JobError;
use shared::queue::consume::{self, Finish, Outcome, Policy, Start};
use uuid::Uuid;

const PREDICT: &str = "/v1/models/mlp128/predict";

async fn submit(env: &Env, uri: &str, body: String) -> Uuid {
    let r = env.send(post_json(uri, body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    r.json()["job_id"].as_str().unwrap().parse().unwrap()
}

/// Plays the worker for one job: read it from the stream, start, finish.
async fn finish(env: &Env, model: &str, id: Uuid, outcome: Outcome) {
    let mut conn = env.conn().await;
    let keys = &env.keys;
    consume::ensure_group(&mut conn, &keys.stream(model, 0))
        .await
        .unwrap();
    let got = consume::read_new(&mut conn, &[keys.stream(model, 0)], "test-worker", 10, 100)
        .await
        .unwrap();
    let d = got
        .iter()
        .find(|d| d.job_id == Some(id))
        .expect("job on the stream");
    let policy = Policy {
        max_attempts: 3,
        succeeded_ttl_secs: 60,
        failed_ttl_secs: 60,
        durability: shared::queue::Durability::Async,
    };
    let started = consume::start(
        &mut conn,
        keys,
        "test-worker",
        &policy,
        &[d],
        shared::time::now_ms(),
    )
    .await
    .unwrap();
    assert_eq!(started, vec![Start::Run(1)]);
    let f = Finish {
        delivery: d,
        job_id: id,
        attempt: 1,
        model_version: "0123456789abcdef",
        outcome,
    };
    consume::finish(&mut conn, keys, &policy, &[f], shared::time::now_ms())
        .await
        .unwrap();
}

async fn hgetall_calls(env: &Env) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut env.conn().await)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_hgetall:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn submit_answers_202_with_location_and_the_job_reads_back_queued() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;

    let r = env.send(post_json(PREDICT, features_body(128))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let v = r.json();
    let id: Uuid = v["job_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(v["status"], "queued");
    assert_eq!(v["status_url"], format!("/v1/jobs/{id}"));
    assert_eq!(r.headers[header::LOCATION], format!("/v1/jobs/{id}"));

    let r = env.send(get(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    let v = r.json();
    assert_eq!(v["job_id"], id.to_string());
    assert_eq!(v["kind"], "predict");
    assert_eq!(v["model"], "mlp128");
    assert_eq!(v["status"], "queued");
    assert_eq!(v["attempts"], 0);
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
    for k in [
        "model_version",
        "started_at",
        "finished_at",
        "result",
        "error",
    ] {
        assert!(v[k].is_null(), "{k} should be null: {v}");
    }

    // The queued payload is exactly the validated tensor.
    let mut conn = env.conn().await;
    consume::ensure_group(&mut conn, &env.keys.stream("mlp128", 0))
        .await
        .unwrap();
    let got = consume::read_new(&mut conn, &[env.keys.stream("mlp128", 0)], "c", 10, 100)
        .await
        .unwrap();
    let job = got[0].job.as_ref().unwrap();
    assert_eq!(job.id, id);
    let shared::queue::wire::JobSpec::Predict {
        inputs,
        pinned_version: None,
    } = &job.spec
    else {
        panic!("an unpinned prediction: {:?}", job.spec);
    };
    assert_eq!(inputs[0].name, "features");
    assert_eq!(inputs[0].shape, vec![1, 128]);
}

#[tokio::test]
async fn kserve_inputs_with_id_and_parameters_are_queued() {
    let env = Env::start().await;
    env.publish(&two_input()).await;
    let body = r#"{"id":"req-1","parameters":{"p":1},"inputs":[
        {"name":"x","shape":[2,4],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]},
        {"name":"k","shape":[2,1],"datatype":"INT64","data":[3,4]}]}"#;
    submit(&env, "/v1/models/two_input/predict", body.into()).await;
    // charset parameter on the content type is fine too.
    let r = env
        .send(
            Request::post("/v1/models/two_input/predict")
                .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
}

#[tokio::test]
async fn request_errors_have_their_status_code_and_json_shape() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    env.publish(&two_input()).await;
    let two = "/v1/models/two_input/predict";

    env.send(post_json(PREDICT, "{\"features\": [1,"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed_json");
    env.send(post_json(PREDICT, ""))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed_json");
    let mut big = features_body(127);
    big.insert_str(big.len() - 2, ",1e400");
    env.send(post_json(PREDICT, big))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed_json");

    let no_ct = Request::post(PREDICT)
        .body(Body::from(features_body(128)))
        .unwrap();
    env.send(no_ct)
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let text = Request::post(PREDICT)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(features_body(128)))
        .unwrap();
    env.send(text)
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

    let msg = env
        .send(post_json(PREDICT, features_body(3)))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    assert!(msg.contains("128") && msg.contains("got 3"), "{msg}");
    let msg = env
        .send(post_json(two, features_body(4)))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    assert!(msg.contains("\"inputs\""), "{msg}");
    env.send(post_json(PREDICT, r#"{"features":[1],"inputs":[]}"#))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    env.send(post_json(PREDICT, "{}"))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    env.send(post_json(PREDICT, r#"{"features":[1],"extra":true}"#))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");

    let only_x = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
    let msg = env
        .send(post_json(two, only_x))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    assert!(msg.contains("missing input k"), "{msg}");
    let inputs = |x: &str, k: &str| {
        format!(
            r#"{{"inputs":[{x},{{"name":"k","shape":[1,1],"datatype":"INT64","data":[{k}]}}]}}"#
        )
    };
    let x_ok = r#"{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}"#;
    let cases = [
        (
            inputs(&x_ok.replace("FP32", "INT64"), "1"),
            "input x expects FP32, got INT64",
        ),
        (inputs(&x_ok.replace("[1,4]", "[1,5]"), "1"), "[N, 4]"),
        (
            inputs(&x_ok.replace("[1,2,3,4]", "[1,2,3]"), "1"),
            "needs 4",
        ),
        (inputs(x_ok, "1.5"), "input k"),
        (
            inputs(&x_ok.replace("[1,2,3,4]", r#"[1,2,"a",4]"#), "1"),
            "input x",
        ),
        (inputs(&x_ok.replace("\"x\"", "\"z\""), "1"), "no input z"),
    ];
    for (body, needle) in cases {
        let msg = env
            .send(post_json(two, body.clone()))
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
        assert!(msg.contains(needle), "{body}: {msg:?} lacks {needle:?}");
    }

    let mut inf = features_body(127);
    inf.insert_str(inf.len() - 2, ",1e39");
    env.send(post_json(PREDICT, inf))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "non_finite_input");
    env.send(post_json(
        two,
        inputs(&x_ok.replace("[1,2,3,4]", "[1,2,-3e38,4e38]"), "1"),
    ))
    .await
    .assert_error(StatusCode::BAD_REQUEST, "non_finite_input");

    env.send(post_json("/v1/models/nope/predict", features_body(128)))
        .await
        .assert_error(StatusCode::NOT_FOUND, "model_not_found");
    env.send(post_json("/v1/models/bad:name/predict", features_body(128)))
        .await
        .assert_error(StatusCode::NOT_FOUND, "model_not_found");
    env.send(get("/v1/models/nope"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "model_not_found");

    env.send(get("/v1/jobs/not-a-uuid"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_job_id");
    env.send(get(&format!("/v1/jobs/{}", Uuid::now_v7())))
        .await
        .assert_error(StatusCode::NOT_FOUND, "job_not_found");
    let id = submit(&env, PREDICT, features_body(128)).await;
    for q in ["wait=-1", "wait=abc", "wait=NaN"] {
        env.send(get(&format!("/v1/jobs/{id}?{q}")))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    }

    env.send(get("/no/such/route"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    env.send(get("/v1/job"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    env.send(get("/v1/jobs?limit=0"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    env.send(get("/v1/jobs?cursor=nope"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    env.send(get("/v1/jobs?status=done"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    env.send(get("/v1/jobs?since=yesterday"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");

    let r = env.send(get(PREDICT)).await;
    r.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(r.headers[header::ALLOW], "POST");
    let put = Request::put(format!("/v1/jobs/{id}"))
        .body(Body::empty())
        .unwrap();
    let r = env.send(put).await;
    r.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let allow = r.headers[header::ALLOW].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("DELETE"), "{allow}");
    env.send(post_json("/healthz", "{}"))
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn oversized_bodies_get_413_json() {
    let env = Env::start_with(&["--max-body-bytes", "1024"]).await;
    env.publish(&mlp("small", 4)).await;
    let uri = "/v1/models/small/predict";
    // Under the limit still works.
    submit(&env, uri, features_body(4)).await;

    // Declared length over the limit.
    let body = format!(r#"{{"features":[{}1]}}"#, "0,".repeat(600));
    assert!(body.len() > 1024);
    let msg = env
        .send(post_json(uri, body.clone()))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(msg.contains("1024"), "{msg}");

    // Streamed without a length: the limit must hold while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .into_bytes()
        .chunks(100)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let streamed = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    env.send(streamed)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn large_bodies_are_parsed_off_the_executor_and_still_validated() {
    let env = Env::start().await;
    env.publish(&mlp("wide", 50_000)).await;
    let uri = "/v1/models/wide/predict";
    submit(&env, uri, features_body(50_000)).await;
    env.send(post_json(uri, features_body(49_999)))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    let mut bad = features_body(49_999);
    bad.insert_str(bad.len() - 2, ",1e39");
    env.send(post_json(uri, bad))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "non_finite_input");
}

#[tokio::test]
async fn wait_on_a_queued_job_returns_after_the_wait_without_polling_redis() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    let id = submit(&env, PREDICT, features_body(128)).await;

    let reads_before = hgetall_calls(&env).await;
    let t = Instant::now();
    let r = env.send(get(&format!("/v1/jobs/{id}?wait=1"))).await;
    let took = t.elapsed();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "queued");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1800),
        "{took:?}"
    );
    let reads = hgetall_calls(&env).await - reads_before;
    assert!(reads <= 3, "{reads} job reads during one long-poll");
    assert!(env.state.waiters().is_empty(), "waiter entry leaked");

    // Fractional seconds, and the cap from --max-wait-secs is honoured.
    let t = Instant::now();
    let r = env.send(get(&format!("/v1/jobs/{id}?wait=0.2"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(t.elapsed() < Duration::from_millis(900));
}

#[tokio::test]
async fn wait_cap_comes_from_max_wait_secs() {
    let env = Env::start_with(&["--max-wait-secs", "1"]).await;
    env.publish(&mlp("mlp128", 128)).await;
    let id = submit(&env, PREDICT, features_body(128)).await;
    let t = Instant::now();
    let r = env.send(get(&format!("/v1/jobs/{id}?wait=60"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        t.elapsed() < Duration::from_millis(1800),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn wait_returns_as_soon_as_the_job_finishes_with_the_result_verbatim() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    let id = submit(&env, PREDICT, features_body(128)).await;

    let app = env.app.clone();
    let t = Instant::now();
    let poll = tokio::spawn(async move { send(&app, get(&format!("/v1/jobs/{id}?wait=5"))).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.state.waiters().len(), 1, "request is waiting");
    // Spacing and number spelling a re-encoder would normalise.
    let result = r#"{"outputs": [{"name":"prediction","shape":[1,1],"datatype":"FP32","data":[1.50]}], "n": 2e3}"#;
    finish(
        &env,
        "mlp128",
        id,
        Outcome::Succeeded {
            result_json: result.into(),
        },
    )
    .await;
    let r = poll.await.unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text().contains(&format!("\"result\":{result}")),
        "{}",
        r.text()
    );
    let v = r.json();
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["model_version"], "0123456789abcdef");
    assert!(v["started_at"].is_string() && v["finished_at"].is_string());
    assert!(v["error"].is_null());
    assert!(env.state.waiters().is_empty(), "waiter entry leaked");

    // Terminal already: ?wait answers at once.
    let t = Instant::now();
    let r = env.send(get(&format!("/v1/jobs/{id}?wait=5"))).await;
    assert_eq!(r.json()["status"], "succeeded");
    assert!(t.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn failed_jobs_report_their_error() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    let id = submit(&env, PREDICT, features_body(128)).await;
    finish(
        &env,
        "mlp128",
        id,
        Outcome::Failed(JobError {
            code: "inference_error".into(),
            message: "boom".into(),
        }),
    )
    .await;
    let v = env.send(get(&format!("/v1/jobs/{id}"))).await.json();
    assert_eq!(v["status"], "failed");
    assert!(v["result"].is_null());
    assert_eq!(
        v["error"],
        serde_json::json!({"code": "inference_error", "message": "boom"})
    );
}

#[tokio::test]
async fn models_are_listed_and_updates_reach_the_cache() {
    let env = Env::start().await;
    env.publish(&two_input()).await;
    env.publish(&mlp("m", 4)).await;
    let v = env.send(get("/v1/models")).await.json();
    let names: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m", "two_input"]);
    assert_eq!(v["models"][1]["inputs"][1]["datatype"], "INT64");

    let uri = "/v1/models/m/predict";
    submit(&env, uri, features_body(4)).await;
    // A worker republishes the model with another width; the API must follow
    // without a restart.
    env.publish(&mlp("m", 3)).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let v = env.send(get("/v1/models/m")).await.json();
        if v["inputs"][0]["shape"] == serde_json::json!([-1, 3]) {
            break;
        }
        assert!(Instant::now() < deadline, "cache not refreshed: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.send(post_json(uri, features_body(4)))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    submit(&env, uri, features_body(3)).await;
}

#[tokio::test]
async fn health_ready_and_redis_outage() {
    let mut env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    let r = env.send(get("/healthz")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
    let r = env.send(get("/readyz")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ready");
    assert_eq!(r.json()["workers"], 0);
    assert!(r.json().get("models").is_none(), "no model names in public");
    let r = env.send_ops(get("/readyz")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json()["models"]["mlp128"],
        serde_json::json!({"workers": 0, "last_heartbeat_age_seconds": null}),
        "published, but no worker heartbeats"
    );
    // Warm the model cache so predict reaches the submit step.
    submit(&env, PREDICT, features_body(128)).await;

    env.redis.kill();

    let t = Instant::now();
    env.send(get("/readyz"))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable");
    env.send(post_json(PREDICT, features_body(128)))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable");
    env.send(post_json("/v1/models/uncached/predict", features_body(128)))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable");
    env.send(get(&format!("/v1/jobs/{}?wait=2", Uuid::now_v7())))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable");
    env.send(get("/v1/models"))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(env.send(get("/healthz")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_hung_redis_gives_503_within_the_time_budget() {
    let env = Env::start().await; // --redis-timeout-ms 500
    env.publish(&mlp("mlp128", 128)).await;
    // Several idle pooled connections, each of which would time out on its own.
    let mut subs = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let app = env.app.clone();
        subs.spawn(async move { send(&app, post_json(PREDICT, features_body(128))).await });
    }
    while let Some(r) = subs.join_next().await {
        assert_eq!(r.unwrap().status, StatusCode::ACCEPTED);
    }

    env.redis.pause();
    let t = Instant::now();
    env.send(post_json(PREDICT, features_body(128)))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable");
    env.send(get("/readyz"))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    env.redis.resume();

    let deadline = Instant::now() + Duration::from_secs(5);
    while env.send(get("/readyz")).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "no recovery after redis resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    submit(&env, PREDICT, features_body(128)).await;
}

#[tokio::test]
async fn listener_reconnects_and_long_polls_work_again() {
    let mut env = Env::start().await;
    let port = env.redis.port;
    env.redis.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.state.is_subscribed() {
        assert!(Instant::now() < deadline, "loss of redis not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.redis = RedisServer::start_on(port);
    assert!(env.state.wait_subscribed(Duration::from_secs(10)).await);
    assert_eq!(env.send(get("/readyz")).await.status, StatusCode::OK);

    env.publish(&mlp("mlp128", 128)).await;
    let id = submit(&env, PREDICT, features_body(128)).await;
    let app = env.app.clone();
    let t = Instant::now();
    let poll = tokio::spawn(async move { send(&app, get(&format!("/v1/jobs/{id}?wait=5"))).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    finish(
        &env,
        "mlp128",
        id,
        Outcome::Succeeded {
            result_json: "{}".into(),
        },
    )
    .await;
    let r = poll.await.unwrap();
    assert_eq!(r.json()["status"], "succeeded");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[tokio::test]
async fn metrics_count_submits_and_requests_with_bounded_labels() {
    let env = Env::start().await;
    env.publish(&mlp("metered", 4)).await;
    submit(&env, "/v1/models/metered/predict", features_body(4)).await;
    env.send(get("/unknown/9f1c2d")).await;

    let r = env.send(get("/metrics")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text();
    assert!(
        text.lines().any(
            |l| l.starts_with(r#"onnxq_jobs_submitted_total{model="metered",kind="predict"} "#)
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"onnxq_http_requests_total{method="POST",route="/v1/models/{model}/predict",status="202"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"onnxq_http_requests_total{method="GET",route="unmatched",status="404"}"#),
        "{text}"
    );
    assert!(
        text.contains("onnxq_http_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(!text.contains("9f1c2d"), "raw path leaked into labels");
}

#[tokio::test]
async fn finishes_missed_while_resubscribing_still_wake_long_polls() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    let id = submit(&env, PREDICT, features_body(128)).await;
    let app = env.app.clone();
    let poll = tokio::spawn(async move { send(&app, get(&format!("/v1/jobs/{id}?wait=5"))).await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Drop the API's subscription; Redis itself (and the job) stay.
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut env.conn().await)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    let deadline = Instant::now() + Duration::from_secs(2);
    while env.state.is_subscribed() {
        assert!(
            Instant::now() < deadline,
            "loss of subscription not noticed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Finished while nobody listens: the PUBLISH reaches no one.
    let t = Instant::now();
    finish(
        &env,
        "mlp128",
        id,
        Outcome::Succeeded {
            result_json: "{}".into(),
        },
    )
    .await;
    let r = poll.await.unwrap();
    assert_eq!(r.json()["status"], "succeeded");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}
