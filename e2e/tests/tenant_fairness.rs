//! One tenant cannot starve another at the API, with the defaults an
//! operator gets: the reproduced attack was one tenant's 1,024 long-polls
//! making the other tenant's requests 503 `overloaded`. Waiting polls now
//! have a pool of their own and each tenant a share of it, so while 1,024
//! of one tenant's polls wait (from another address, as another client
//! machine would), the other tenant submits, reads and long-polls as usual.
//!
//! No worker runs: the models' signatures are published by hand, so every
//! job stays queued and every poll waits its full time.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use e2e::tenancy::KeysFile;
use e2e::{Api, Client, RedisServer, StatusCode, procfs, unique_namespace};
use serde_json::json;
use shared::Keys;
use shared::model::ModelInfo;
use shared::queue::consume;
use shared::tensor::{DataType, TensorSpec};

const POLLS: usize = 1024;

async fn publish(redis: &RedisServer, ns: &str, model: &str) {
    let spec = |name: &str, shape: &[i64]| TensorSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        shape: shape.to_vec(),
    };
    let info = ModelInfo {
        name: model.into(),
        version: "1".into(),
        inputs: vec![spec("features", &[-1, 4])],
        outputs: vec![spec("prediction", &[-1, 1])],
        updated_at_ms: shared::time::now_ms(),
    };
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    consume::publish_model(&mut conn, &Keys::new(ns), &info)
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_long_polls_of_one_tenant_leave_the_other_served() {
    procfs::raise_own_nofile();
    let redis = RedisServer::start();
    let ns = unique_namespace("fairness");
    publish(&redis, &ns, "acme~m").await;
    publish(&redis, &ns, "globex~m").await;
    let keys = KeysFile::new(&[("acme", "key-a"), ("globex", "key-g")]);
    // The defaults, as an operator starts it.
    let api = Api::spawn(&redis.url(), &ns, &["--api-keys-file", &keys.arg()]);
    let acme = Client::with_api_key(&api.base_url, "key-a");
    let globex = Client::with_api_key(&api.base_url, "key-g");
    let row = json!({"features": [0.1, 0.2, 0.3, 0.4]});
    let parked = acme.submit("m", &row).await;

    // acme, from 127.0.0.2: 1,024 polls that wait 10 s each.
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        "Bearer key-a".parse().expect("header"),
    );
    let http = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .pool_max_idle_per_host(POLLS)
        .default_headers(auth)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let url = format!("{}/v1/jobs/{parked}?wait=10", api.base_url);
    let polls: Vec<_> = (0..POLLS)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { http.get(&url).send().await.map(|r| r.status()) })
        })
        .collect();
    // Wait until they are all in: the API's connection gauge says so.
    let ops_deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = globex.get("/metrics").await.text;
        let open = m
            .lines()
            .find(|l| l.starts_with("onnxq_http_connections{") && l.contains("public"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if open >= POLLS as f64 {
            break;
        }
        assert!(
            Instant::now() < ops_deadline,
            "only {open} connections open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // globex meanwhile: submits, reads and long-polls, every time.
    for _ in 0..20 {
        let id = globex.submit("m", &row).await;
        let r = globex.job(&id, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let t = Instant::now();
        let r = globex.job(&id, Some(0.2)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(t.elapsed() >= Duration::from_millis(200), "it waited");
    }
    // acme's own plain requests still have their slots too.
    assert_eq!(acme.job(&parked, None).await.status, StatusCode::OK);
    let api_mib = procfs::peak_mib(api.proc.pid());
    println!("api peak memory with {POLLS} waiting polls: {api_mib} MiB");
    assert!(api_mib < 100, "api peaked at {api_mib} MiB");

    // Every one of acme's polls was admitted and answered in the end.
    for p in polls {
        let status = p.await.expect("task").expect("poll answered");
        assert_eq!(status, StatusCode::OK);
    }
}
