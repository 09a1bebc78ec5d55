//! What one tenant may take, checked through the router against a real
//! Redis: quotas on queued jobs and bytes and on datasets, rate limits
//! (per tenant and per tenant × model, with their headers), shares of the
//! request and long-poll pools, a tenants file reloaded without a restart,
//! and the small ambiguities a hostile client tries (two credentials, a
//! version pin spelled with an escape, one idempotency key for two kinds).

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use serde_json::json;

const KEYS: &[(&str, &str)] = &[("acme", "key-a"), ("globex", "key-g")];

/// An API with the two tenants of [`KEYS`] and `tenants` as its tenants
/// file; both models published for both tenants.
async fn start(tenants: &str, extra: &[&str]) -> (Env, TempFile, TempFile) {
    let keys = TempFile::keys(KEYS);
    let file = TempFile::new("api-tenants", tenants);
    let (k, t) = (keys.arg(), file.arg());
    let mut args = vec!["--api-keys-file", &k, "--tenants-file", &t];
    args.extend_from_slice(extra);
    let env = Env::start_with(&args).await;
    for tenant in ["acme", "globex"] {
        env.publish(&mlp(&format!("{tenant}~m"), 4)).await;
        env.publish(&mlp(&format!("{tenant}~n"), 4)).await;
    }
    (env, keys, file)
}

fn predict(model: &str, key: &str) -> Request<Body> {
    as_tenant(
        post_json(&format!("/v1/models/{model}/predict"), features_body(4)),
        key,
    )
}

fn put_csv(name: &str, key: &str, body: &'static str) -> Request<Body> {
    as_tenant(
        Request::put(format!("/v1/datasets/{name}"))
            .header(header::CONTENT_TYPE, "text/csv")
            .body(Body::from(body))
            .unwrap(),
        key,
    )
}

#[tokio::test]
async fn a_tenant_queues_no_more_jobs_or_bytes_than_its_quota_and_the_other_is_unaffected() {
    let (env, _k, _t) = start(
        "tenants:\n  acme: {max_queued_jobs: 2}\n  globex: {max_queued_bytes: 300}\n",
        &[],
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            env.send(predict("m", "key-a")).await.status,
            StatusCode::ACCEPTED
        );
    }
    // All of the tenant's models count together.
    let msg = env
        .send(predict("n", "key-a"))
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "tenant_queue_full");
    assert!(msg.contains("2 queued jobs"), "{msg}");
    // Each job's payload is some 150 bytes: the second goes past 300.
    assert_eq!(
        env.send(predict("m", "key-g")).await.status,
        StatusCode::ACCEPTED
    );
    let msg = env
        .send(predict("m", "key-g"))
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "tenant_queue_full");
    assert!(msg.contains("queued bytes"), "{msg}");
    let usage = shared::queue::usage::read(&mut env.conn().await, &env.keys, "acme")
        .await
        .unwrap();
    assert_eq!(usage.jobs, 2);
    assert!(usage.bytes > 0);
}

#[tokio::test]
async fn datasets_are_bounded_in_number_and_bytes_and_a_delete_gives_room_back() {
    let (env, _k, _t) = start("defaults: {max_datasets: 2, max_dataset_bytes: 40}\n", &[]).await;
    const SMALL: &str = "a,target\n1,0\n2,1\n"; // 17 bytes
    assert_eq!(
        env.send(put_csv("d1", "key-a", SMALL)).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        env.send(put_csv("d2", "key-a", SMALL)).await.status,
        StatusCode::CREATED
    );
    let msg = env
        .send(put_csv("d3", "key-a", SMALL))
        .await
        .assert_error(StatusCode::FORBIDDEN, "quota_exceeded");
    assert!(msg.contains("2 datasets"), "{msg}");
    // Replacing one counts the difference, not a new dataset.
    assert_eq!(
        env.send(put_csv("d2", "key-a", "a,target\n1,0\n"))
            .await
            .status,
        StatusCode::OK
    );
    let msg = env
        .send(put_csv(
            "d1",
            "key-a",
            "a,target\n1,0\n2,1\n3,0\n4,1\n5,0\n",
        ))
        .await
        .assert_error(StatusCode::FORBIDDEN, "quota_exceeded");
    assert!(msg.contains("dataset bytes"), "{msg}");
    let del = as_tenant(
        Request::delete("/v1/datasets/d1")
            .body(Body::empty())
            .unwrap(),
        "key-a",
    );
    assert_eq!(env.send(del).await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        env.send(put_csv("d3", "key-a", SMALL)).await.status,
        StatusCode::CREATED
    );
    // The other tenant has its own count.
    assert_eq!(
        env.send(put_csv("d1", "key-g", SMALL)).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_ratelimit_headers() {
    let (env, _k, _t) = start(
        "tenants:\n  acme:\n    rate: {per_sec: 0.2, burst: 3}\n    model_rate: {per_sec: 0.2, burst: 2}\n",
        &[],
    )
    .await;
    // The model bucket (2) is the tighter one on m's route.
    for left in [1, 0] {
        let r = env.send(predict("m", "key-a")).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        assert_eq!(r.headers["ratelimit-policy"], "model;q=2;w=10");
        assert_eq!(
            r.headers["ratelimit"].to_str().unwrap().split(';').nth(1),
            Some(format!("r={left}").as_str())
        );
    }
    let r = env.send(predict("m", "key-a")).await;
    let msg = r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(msg.contains("model"), "{msg}");
    let retry: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "a token comes every 5 s: {retry}");
    assert_eq!(
        r.headers["ratelimit"],
        format!("model;r=0;t={retry}").as_str()
    );
    // Another model still has its bucket; the tenant's own bucket (3) is
    // then empty for every route.
    assert_eq!(
        env.send(predict("n", "key-a")).await.status,
        StatusCode::ACCEPTED
    );
    let r = env.send(as_tenant(get("/v1/models"), "key-a")).await;
    let msg = r.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(msg.contains("tenant"), "{msg}");
    // The other tenant has no limits at all.
    for _ in 0..5 {
        let r = env.send(predict("m", "key-g")).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        assert!(r.headers.get("ratelimit").is_none());
    }
    // Buckets live in Redis, so every replica draws from them.
    let tokens: Option<String> = redis::cmd("HGET")
        .arg(env.keys.rate("acme"))
        .arg("tokens")
        .query_async(&mut env.conn().await)
        .await
        .unwrap();
    assert!(tokens.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_long_polls_fill_its_share_not_the_others() {
    let (env, _k, _t) = start(
        "tenants:\n  acme: {long_poll_share: 0.25}\n",
        &["--max-long-polls", "8", "--max-concurrent-requests", "8"],
    )
    .await;
    let job = env.send(predict("m", "key-a")).await.json()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = env.send(predict("m", "key-g")).await.json()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // acme may hold 2 of the 8 waiting polls.
    let polls: Vec<_> = (0..2)
        .map(|_| {
            let app = env.app.clone();
            let uri = format!("/v1/jobs/{job}?wait=2");
            tokio::spawn(async move { send(&app, as_tenant(get(&uri), "key-a")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = env
        .send(as_tenant(get(&format!("/v1/jobs/{job}?wait=2")), "key-a"))
        .await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "tenant_concurrency_limit");
    // Its plain requests and the other tenant's polls go on.
    let r = env
        .send(as_tenant(get(&format!("/v1/jobs/{job}")), "key-a"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = env
        .send(as_tenant(
            get(&format!("/v1/jobs/{other}?wait=0.2")),
            "key-g",
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for p in polls {
        assert_eq!(p.await.unwrap().status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_reload_takes_a_new_tenants_file_and_a_bad_one_changes_nothing() {
    let (env, _k, file) = start("tenants:\n  acme: {max_queued_jobs: 1}\n", &[]).await;
    assert_eq!(
        env.send(predict("m", "key-a")).await.status,
        StatusCode::ACCEPTED
    );
    env.send(predict("m", "key-a"))
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "tenant_queue_full");

    file.rewrite("tenants:\n  acme: {max_queued_jobs: 3}\n");
    env.state.reload().expect("a good file loads");
    assert_eq!(
        env.send(predict("m", "key-a")).await.status,
        StatusCode::ACCEPTED
    );

    file.rewrite("tenants:\n  acme: {max_queued_jobs: -1}\n");
    let err = env.state.reload().expect_err("a bad file is refused");
    assert!(err.to_string().contains("max_queued_jobs"), "{err}");
    assert_eq!(
        env.state.policies().of("acme").max_queued_jobs,
        3,
        "the previous file stays in force"
    );
}

#[tokio::test]
async fn two_credentials_are_a_400_not_a_guess() {
    let (env, _k, _t) = start("", &[]).await;
    let mut req = predict("m", "key-a");
    req.headers_mut()
        .insert("x-api-key", "key-g".parse().unwrap());
    env.send(req)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "ambiguous_credentials");
    let mut req = predict("m", "key-a");
    req.headers_mut()
        .append(header::AUTHORIZATION, "Bearer key-g".parse().unwrap());
    env.send(req)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "ambiguous_credentials");
}

#[tokio::test]
async fn an_escaped_version_pin_is_the_pin_serde_decodes() {
    let env = Env::start().await;
    env.publish(&mlp("mlp128", 4)).await;
    let body = r#"{"features":[0,0,0,0],"model\u005fversion":7}"#;
    let msg = env
        .send(post_json("/v1/models/mlp128/predict", body))
        .await
        .assert_error(StatusCode::NOT_FOUND, "version_not_found");
    assert!(msg.contains("version 7"), "{msg}");
}

#[tokio::test]
async fn one_idempotency_key_names_different_requests_for_different_kinds() {
    let env = Env::start().await;
    env.publish(&mlp("m", 4)).await;
    let with_key = |mut req: Request<Body>| {
        req.headers_mut()
            .insert("idempotency-key", "order-1".parse().unwrap());
        req
    };
    let p = env
        .send(with_key(post_json(
            "/v1/models/m/predict",
            features_body(4),
        )))
        .await;
    assert_eq!(p.status, StatusCode::ACCEPTED);
    let body = json!({"data": {"columns": ["a", "target"], "rows": [[1, 0], [2, 1], [3, 0], [4, 1], [5, 0]]}});
    let t = env
        .send(with_key(post_json(
            "/v1/models/m/retrain",
            body.to_string(),
        )))
        .await;
    assert_eq!(t.status, StatusCode::ACCEPTED, "{}", t.text());
    assert_ne!(t.json()["job_id"], p.json()["job_id"]);
    assert!(t.headers.get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn training_that_obviously_exceeds_the_budget_is_refused_at_submit() {
    let env = Env::start_with(&["--max-train-work", "1000"]).await;
    let body = json!({
        "data": {"columns": ["a", "b", "target"], "rows": [[1, 2, 0], [2, 3, 1], [3, 4, 0], [4, 5, 1], [5, 6, 0]]},
        "params": {"epochs": 101},
    });
    let msg = env
        .send(post_json("/v1/models/m/retrain", body.to_string()))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "training_budget_exceeded");
    assert!(msg.contains("1010") && msg.contains("1000"), "{msg}");
    let body = json!({
        "data": {"columns": ["a", "b", "target"], "rows": [[1, 2, 0], [2, 3, 1], [3, 4, 0], [4, 5, 1], [5, 6, 0]]},
        "params": {"epochs": 100},
    });
    let r = env
        .send(post_json("/v1/models/m/retrain", body.to_string()))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
}

#[tokio::test]
async fn error_messages_quote_little_and_name_the_tenants_own_model() {
    let (env, _k, _t) = start("", &[]).await;
    let msg = env
        .send(as_tenant(
            post_json("/v1/models/m/predict", r#"{"features":[1,2,3]}"#),
            "key-a",
        ))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    assert!(msg.contains("model m expects 4 features"), "{msg}");
    assert!(!msg.contains('~'), "an internal name leaked: {msg}");

    // The reproduced 4 MB 422: the string serde could not read is not
    // quoted back at all.
    let huge = format!(r#"{{"features":"{}"}}"#, "A".repeat(3 << 20));
    let r = env
        .send(as_tenant(post_json("/v1/models/m/predict", huge), "key-a"))
        .await;
    let msg = r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    assert!(r.body.len() < 1500, "a {} byte error body", r.body.len());
    assert!(!msg.contains("AAAA"), "{msg}");

    let name = "n".repeat(5000);
    let r = env
        .send(as_tenant(get(&format!("/v1/jobs/{name}")), "key-a"))
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "invalid_job_id");
    assert!(r.body.len() < 600, "{}", r.body.len());
}

#[tokio::test]
async fn an_upload_is_validated_even_when_the_tenants_queue_is_full() {
    let (env, _k, _t) = start("tenants:\n  acme: {max_queued_jobs: 1}\n", &[]).await;
    assert_eq!(
        env.send(predict("m", "key-a")).await.status,
        StatusCode::ACCEPTED
    );
    env.send(predict("m", "key-a"))
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "tenant_queue_full");
    // The version is registered first; its validate job must follow it.
    let upload = as_tenant(
        Request::post("/v1/models/m/versions")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(vec![1u8, 2, 3]))
            .unwrap(),
        "key-a",
    );
    let r = env.send(upload).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
}
