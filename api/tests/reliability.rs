//! The API's queue operations at the edges the end-to-end tests cannot reach
//! cheaply: a cancel racing a running job or a parked retry, how queue
//! depth is measured, idempotency records outliving their jobs, and what a
//! retry leaves in a record.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use shared::job::JobError;
use shared::queue::consume::{self, Delivery, Finish, Outcome, Policy, Renewed, Start};
use shared::queue::ops::{self, Submitted};
use shared::queue::wire::JobEnvelope;
use uuid::Uuid;

const PREDICT: &str = "/v1/models/mlp128/predict";

const POLICY: Policy = Policy {
    max_attempts: 3,
    succeeded_ttl_secs: 60,
    failed_ttl_secs: 60,
    durability: shared::queue::Durability::Async,
};

async fn submit(env: &Env, body: String) -> Uuid {
    let r = env.send(post_json(PREDICT, body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    r.json()["job_id"].as_str().unwrap().parse().unwrap()
}

fn delete(uri: &str) -> Request<Body> {
    Request::delete(uri).body(Body::empty()).unwrap()
}

/// Reads every new entry of mlp128's stream as one consumer.
async fn read_all(env: &Env) -> Vec<Delivery> {
    let mut conn = env.conn().await;
    consume::ensure_group(&mut conn, &env.keys.stream("mlp128", 0))
        .await
        .unwrap();
    consume::read_new(
        &mut conn,
        &[env.keys.stream("mlp128", 0)],
        "test-worker",
        100,
        100,
    )
    .await
    .unwrap()
}

/// The worker's end of attempt 1 of `id`: a transient failure, retry now.
fn retry_now(d: &Delivery, id: Uuid, now: i64) -> Finish<'_> {
    Finish {
        delivery: d,
        job_id: id,
        attempt: 1,
        model_version: "",
        outcome: Outcome::Retry {
            error: JobError {
                code: "inference_error".into(),
                message: "try again".into(),
            },
            retry_at_ms: now,
        },
    }
}

async fn start(env: &Env, d: &Delivery) -> Start {
    let got = consume::start(
        &mut env.conn().await,
        &env.keys,
        "test-worker",
        &POLICY,
        &[d],
        shared::time::now_ms(),
    )
    .await
    .unwrap();
    got[0]
}

async fn usage(env: &Env) -> shared::queue::usage::Usage {
    shared::queue::usage::read(&mut env.conn().await, &env.keys, "default")
        .await
        .unwrap()
}

#[tokio::test]
async fn a_running_job_is_stopped_by_its_worker_and_a_queued_one_never_starts() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    let running = submit(&env, features_body(128)).await;
    let canceled = submit(&env, features_body(128)).await;
    let finished = submit(&env, features_body(128)).await;
    assert_eq!(usage(&env).await.jobs, 3, "every accepted job is counted");
    let got = read_all(&env).await;
    assert_eq!(start(&env, &got[0]).await, Start::Run(1));
    assert_eq!(start(&env, &got[2]).await, Start::Run(1));

    // Running: the cancel is recorded (202), the job keeps running until
    // its worker looks.
    let r = env.send(delete(&format!("/v1/jobs/{running}"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["status"], "running");
    assert!(r.json()["cancel_requested_at"].is_string(), "{}", r.text());
    // A second cancel changes nothing and says the same.
    let again = env.send(delete(&format!("/v1/jobs/{running}"))).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(
        again.json()["cancel_requested_at"],
        r.json()["cancel_requested_at"]
    );

    // The worker's lease renewal is where it learns of it.
    let leases = [
        consume::Lease {
            stream: &got[0].stream,
            entry_id: &got[0].entry_id,
            job_id: running,
        },
        consume::Lease {
            stream: &got[2].stream,
            entry_id: &got[2].entry_id,
            job_id: finished,
        },
    ];
    let renewed = consume::renew(&mut env.conn().await, &env.keys, "test-worker", &leases)
        .await
        .unwrap();
    assert_eq!(renewed, [Renewed::CancelRequested, Renewed::Held]);
    let now = shared::time::now_ms();
    let ends = [
        Finish {
            delivery: &got[0],
            job_id: running,
            attempt: 1,
            model_version: "1",
            outcome: Outcome::Canceled,
        },
        Finish {
            delivery: &got[2],
            job_id: finished,
            attempt: 1,
            model_version: "1",
            outcome: Outcome::Succeeded {
                result_json: "{}".into(),
            },
        },
    ];
    consume::finish(&mut env.conn().await, &env.keys, &POLICY, &ends, now)
        .await
        .unwrap();
    let r = env.send(get(&format!("/v1/jobs/{running}"))).await;
    assert_eq!(r.json()["status"], "canceled");
    assert_eq!(r.json()["attempts"], 1);
    // Finished jobs cannot be canceled.
    let msg = env
        .send(delete(&format!("/v1/jobs/{finished}")))
        .await
        .assert_error(StatusCode::CONFLICT, "job_not_cancelable");
    assert!(msg.contains("succeeded"), "{msg}");

    // Queued: canceled at once, and never started.
    let r = env.send(delete(&format!("/v1/jobs/{canceled}"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(start(&env, &got[1]).await, Start::NotRunnable);
    let r = env.send(get(&format!("/v1/jobs/{canceled}"))).await;
    assert_eq!(r.json()["status"], "canceled");
    assert_eq!(r.json()["attempts"], 0);
    let u = usage(&env).await;
    assert_eq!(
        (u.jobs, u.bytes),
        (0, 0),
        "every end released its job: {u:?}"
    );
}

#[tokio::test]
async fn canceling_a_job_parked_for_retry_keeps_it_off_the_stream() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    let id = submit(&env, features_body(128)).await;
    let got = read_all(&env).await;
    assert_eq!(start(&env, &got[0]).await, Start::Run(1));
    let now = shared::time::now_ms();
    let retry = retry_now(&got[0], id, now);
    consume::finish(&mut env.conn().await, &env.keys, &POLICY, &[retry], now)
        .await
        .unwrap();

    // Parked with its binary payload in the record, the job still reads.
    let r = env.send(get(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "queued");

    let r = env.send(delete(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "canceled");
    let moved = consume::release_due(
        &mut env.conn().await,
        &env.keys,
        &[env.keys.stream("mlp128", 0)],
        now + 1,
        10,
    )
    .await
    .unwrap();
    assert_eq!(moved, 0, "a canceled job went back on the stream");
    let parked: usize = redis::cmd("ZCARD")
        .arg(env.keys.delayed("mlp128", 0))
        .query_async(&mut env.conn().await)
        .await
        .unwrap();
    assert_eq!(parked, 0);
    assert!(read_all(&env).await.is_empty());
}

#[tokio::test]
async fn queue_depth_counts_undelivered_and_unacknowledged_entries() {
    let env = Env::start_with(&["--max-queue-depth", "3"]).await;
    env.publish(&mlp("mlp128", 128)).await;
    let full = |r: &Reply| r.assert_error(StatusCode::TOO_MANY_REQUESTS, "queue_full");

    // No consumer group yet: the stream length is the depth.
    let a = submit(&env, features_body(128)).await;
    submit(&env, features_body(128)).await;
    submit(&env, features_body(128)).await;
    full(&env.send(post_json(PREDICT, features_body(128))).await);

    // Delivered but not acknowledged still counts: a worker may die on it.
    let got = read_all(&env).await;
    assert_eq!(got.len(), 3);
    full(&env.send(post_json(PREDICT, features_body(128))).await);

    // Acknowledged (the job finished) frees a place.
    assert_eq!(start(&env, &got[0]).await, Start::Run(1));
    let done = Finish {
        delivery: &got[0],
        job_id: a,
        attempt: 1,
        model_version: "0123456789abcdef",
        outcome: Outcome::Succeeded {
            result_json: "{}".into(),
        },
    };
    let now = shared::time::now_ms();
    consume::finish(&mut env.conn().await, &env.keys, &POLICY, &[done], now)
        .await
        .unwrap();
    submit(&env, features_body(128)).await;
    full(&env.send(post_json(PREDICT, features_body(128))).await);

    // An undelivered entry deleted (XDEL) leaves Redis unable to tell the
    // lag: the stream length stands in. It over-counts (the acknowledged,
    // not yet trimmed entry of `a`), which errs on the side of refusing.
    let mut conn = env.conn().await;
    let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(env.keys.stream("mlp128", 0))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("XDEL")
        .arg(env.keys.stream("mlp128", 0))
        .arg(&last.ids[0].id)
        .query_async(&mut conn)
        .await
        .unwrap();
    // The group alone would say 0 undelivered + 2 pending = 2, below 3.
    let len: usize = redis::cmd("XLEN")
        .arg(env.keys.stream("mlp128", 0))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 3);
    full(&env.send(post_json(PREDICT, features_body(128))).await);
}

#[tokio::test]
async fn unbounded_queue_and_depth_reported_by_the_script() {
    let env = Env::start_with(&["--max-queue-depth", "0"]).await;
    env.publish(&mlp("mlp128", 128)).await;
    for _ in 0..5 {
        submit(&env, features_body(128)).await;
    }
    let job = JobEnvelope {
        id: env.keys.new_job_id(0),
        model: "mlp128".into(),
        submitted_at_ms: shared::time::now_ms(),
        deadline_ms: None,
        traceparent: None,
        spec: shared::queue::wire::JobSpec::Predict {
            inputs: vec![],
            pinned_version: None,
        },
    };
    let opts = ops::SubmitOptions {
        max_queue_depth: 4,
        idempotency: None,
        quota: Default::default(),
        durability: shared::queue::Durability::Async,
        index_ttl_secs: 60,
        webhook: None,
    };
    let got = ops::submit(&mut env.conn().await, &env.keys, &job, &opts)
        .await
        .unwrap();
    assert_eq!(got, Submitted::QueueFull { depth: 5 });
}

#[tokio::test]
async fn a_replayed_key_reports_the_jobs_current_status_until_the_job_expires() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    let send = |body: String| {
        Request::post(PREDICT)
            .header("content-type", "application/json")
            .header("idempotency-key", "k")
            .body(Body::from(body))
            .unwrap()
    };
    let r = env.send(send(features_body(128))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let id: Uuid = r.json()["job_id"].as_str().unwrap().parse().unwrap();
    let got = read_all(&env).await;
    assert_eq!(start(&env, &got[0]).await, Start::Run(1));
    let r = env.send(send(features_body(128))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.json()["job_id"], id.to_string());
    assert_eq!(r.json()["status"], "running");
    assert_eq!(r.headers["idempotent-replayed"], "true");

    // The record is gone (e.g. a short TTL): the key no longer pins anything.
    let _: () = redis::cmd("DEL")
        .arg(env.keys.job(&id))
        .query_async(&mut env.conn().await)
        .await
        .unwrap();
    let r = env.send(send(features_body(128))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_ne!(r.json()["job_id"], id.to_string());
    assert!(r.headers.get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn the_deadline_reaches_the_record_and_the_envelope() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    let before = shared::time::now_ms();
    let mut body = features_body(128);
    body.truncate(body.len() - 1);
    body.push_str(r#","deadline":2.5}"#);
    let id = submit(&env, body).await;
    let after = shared::time::now_ms();

    let got = read_all(&env).await;
    let deadline = got[0].job.as_ref().unwrap().deadline_ms.unwrap();
    assert!(
        (before + 2500..=after + 2500).contains(&deadline),
        "{deadline}"
    );
    let stored: String = redis::cmd("HGET")
        .arg(env.keys.job(&id))
        .arg("deadline")
        .query_async(&mut env.conn().await)
        .await
        .unwrap();
    assert_eq!(stored, deadline.to_string());
    let r = env.send(get(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(
        r.json()["deadline"],
        shared::time::rfc3339_ms(deadline).as_str()
    );
}

#[tokio::test]
async fn rejections_are_counted_with_bounded_labels() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    env.send(post_json("/v1/models/no-such-model-4711/predict", "{}"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "model_not_found");
    env.send(post_json(PREDICT, features_body(3)))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    let no_ct = Request::post(PREDICT)
        .body(Body::from(features_body(128)))
        .unwrap();
    env.send(no_ct)
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let id = submit(&env, features_body(128)).await;
    let r = env.send(delete(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(r.status, StatusCode::OK);

    let text = env.send(get("/metrics")).await.text().to_owned();
    for line in [
        r#"onnxq_jobs_rejected_total{model="unknown",reason="model_not_found"}"#,
        r#"onnxq_jobs_rejected_total{model="mlp128",reason="invalid_input"}"#,
        r#"onnxq_jobs_rejected_total{model="mlp128",reason="unsupported_media_type"}"#,
        r#"onnxq_jobs_canceled_total{model="mlp128"}"#,
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(!text.contains("no-such-model-4711"), "{text}");
    assert!(!text.contains(&id.to_string()), "{text}");
}

#[tokio::test]
async fn cancel_and_keyed_submits_give_503_in_time_when_redis_hangs() {
    let env = Env::start().await; // --redis-timeout-ms 500
    env.publish(&mlp("mlp128", 128)).await;
    let id = submit(&env, features_body(128)).await;

    env.redis.pause();
    let t = Instant::now();
    env.send(delete(&format!("/v1/jobs/{id}")))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable");
    let keyed = Request::post(PREDICT)
        .header("content-type", "application/json")
        .header("idempotency-key", "k")
        .body(Body::from(features_body(128)))
        .unwrap();
    env.send(keyed)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    env.redis.resume();

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = env.send(delete(&format!("/v1/jobs/{id}"))).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_redis_at_its_memory_limit_is_a_503_to_retry_and_writes_nothing() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    let mut conn = env.conn().await;
    let set = |limit: &'static str| {
        let mut c = conn.clone();
        async move {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(limit)
                .query_async::<()>(&mut c)
                .await
                .unwrap()
        }
    };
    set("1").await;
    let r = env.send(post_json(PREDICT, features_body(128))).await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable");
    assert!(r.headers.contains_key(axum::http::header::RETRY_AFTER));
    set("0").await;
    let len: u64 = redis::cmd("XLEN")
        .arg(env.keys.stream("mlp128", 0))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 0, "the refused submit wrote no entry");
    let r = env.send(post_json(PREDICT, features_body(128))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
}

#[tokio::test]
async fn a_canceled_running_job_that_fails_transiently_is_not_retried() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    let id = submit(&env, features_body(128)).await;
    let got = read_all(&env).await;
    assert_eq!(start(&env, &got[0]).await, Start::Run(1));
    let r = env.send(delete(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // The worker failed before it saw the cancel, and asks for a retry.
    let now = shared::time::now_ms();
    let retry = retry_now(&got[0], id, now);
    consume::finish(&mut env.conn().await, &env.keys, &POLICY, &[retry], now)
        .await
        .unwrap();
    let r = env.send(get(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(r.json()["status"], "canceled", "{}", r.text());
    let moved = consume::release_due(
        &mut env.conn().await,
        &env.keys,
        &[env.keys.stream("mlp128", 0)],
        now + 1,
        10,
    )
    .await
    .unwrap();
    assert_eq!(moved, 0, "nothing went back on the stream");
    assert_eq!(usage(&env).await.jobs, 0);
}

/// The worker's successful end of attempt `attempt` of `id`.
fn succeed(d: &Delivery, id: Uuid, attempt: u32) -> Finish<'_> {
    Finish {
        delivery: d,
        job_id: id,
        attempt,
        model_version: "",
        outcome: Outcome::Succeeded {
            result_json: "[1.0]".into(),
        },
    }
}

/// The fields of `id`'s record only a retry writes that are still there.
async fn retry_fields(env: &Env, id: &Uuid) -> Vec<String> {
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(env.keys.job(id))
        .query_async(&mut env.conn().await)
        .await
        .unwrap();
    fields
        .into_iter()
        .filter(|f| ["payload", "retry_at", "last_error"].contains(&f.as_str()))
        .collect()
}

#[tokio::test]
async fn a_job_that_succeeds_after_a_retry_keeps_none_of_the_retrys_fields() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 128)).await;
    let first = submit(&env, features_body(128)).await;
    let retried = submit(&env, features_body(128)).await;
    let got = read_all(&env).await;
    assert_eq!(got.len(), 2);
    assert_eq!(start(&env, &got[0]).await, Start::Run(1));
    assert_eq!(start(&env, &got[1]).await, Start::Run(1));
    let now = shared::time::now_ms();
    let ends = [succeed(&got[0], first, 1), retry_now(&got[1], retried, now)];
    consume::finish(&mut env.conn().await, &env.keys, &POLICY, &ends, now)
        .await
        .unwrap();
    assert!(retry_fields(&env, &first).await.is_empty());
    assert_eq!(
        retry_fields(&env, &retried).await.len(),
        3,
        "parked for its retry"
    );

    let moved = consume::release_due(
        &mut env.conn().await,
        &env.keys,
        &[env.keys.stream("mlp128", 0)],
        now + 1,
        10,
    )
    .await
    .unwrap();
    assert_eq!(moved, 1);
    let again = read_all(&env).await;
    assert_eq!(again.len(), 1);
    assert_eq!(start(&env, &again[0]).await, Start::Run(2));
    // `release_due` took the payload and due time back; the last error stays
    // until the job ends, and its end (attempt 2) deletes it.
    assert_eq!(retry_fields(&env, &retried).await, ["last_error"]);
    let now = shared::time::now_ms();
    consume::finish(
        &mut env.conn().await,
        &env.keys,
        &POLICY,
        &[succeed(&again[0], retried, 2)],
        now,
    )
    .await
    .unwrap();
    assert!(retry_fields(&env, &retried).await.is_empty());
    let r = env.send(get(&format!("/v1/jobs/{retried}"))).await;
    assert_eq!(r.json()["status"], "succeeded", "{}", r.text());
    assert_eq!(r.json()["attempts"], 2);
}
