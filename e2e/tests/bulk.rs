//! Bulk submit (`POST /v1/models/{model}/predict/batch`) and finding jobs
//! (`GET /v1/jobs`), against a real Redis, API and worker: a bulk of 1,000
//! is found exactly by a search, cursor paging returns every job once,
//! newest first, a tenant never lists another's jobs, bad items are
//! reported by index, an atomic batch is all or nothing (validation and
//! queue bound alike), and a queue bound reached mid-batch refuses only the
//! jobs that do not fit.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use e2e::tenancy::KeysFile;
use e2e::{
    Api, Client, ModelsDir, RedisCluster, RedisServer, Reply, StatusCode, Worker, unique_namespace,
};
use serde_json::{Value, json};
use shared::Keys;
use shared::model::ModelInfo;
use shared::queue::consume;
use shared::tensor::{DataType, TensorSpec};

fn row(v: f32) -> Value {
    json!({ "features": vec![v; 128] })
}

async fn bulk(c: &Client, model: &str, body: &Value) -> Reply {
    c.send(
        c.http
            .post(format!("{}/v1/models/{model}/predict/batch", c.base))
            .json(body),
    )
    .await
}

/// The job ids of a 202, in item order; panics on a refused item.
fn accepted_ids(r: &Reply) -> Vec<String> {
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    r.json["items"]
        .as_array()
        .expect("items")
        .iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["index"], i, "{item}");
            assert_eq!(item["status"], "queued", "{item}");
            let id = item["job_id"].as_str().expect("job_id").to_owned();
            assert_eq!(item["status_url"], format!("/v1/jobs/{id}"));
            id
        })
        .collect()
}

/// Every job `GET /v1/jobs?{query}` lists, page after page of `limit`,
/// with how many pages it took.
async fn list_all(c: &Client, query: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("/v1/jobs?limit={limit}&{query}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = c.get(&url).await;
        assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text);
        let page = r.json["jobs"].as_array().expect("jobs");
        assert!(page.len() <= limit, "{url}: {} jobs", page.len());
        jobs.extend(page.iter().cloned());
        pages += 1;
        assert!(pages < 10_000, "paging does not end");
        match r.json["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (jobs, pages),
        }
    }
}

fn ids_of(jobs: &[Value]) -> Vec<String> {
    jobs.iter()
        .map(|j| j["job_id"].as_str().expect("job_id").to_owned())
        .collect()
}

/// Newest first: ids (UUIDv7, time-ordered) strictly descending, and no id
/// twice.
fn assert_newest_first(ids: &[String]) {
    for w in ids.windows(2) {
        assert!(w[0] > w[1], "not newest first: {} then {}", w[0], w[1]);
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an id listed twice");
}

fn now_rfc3339() -> String {
    shared::time::rfc3339_ms(shared::time::now_ms())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_of_1000_is_found_exactly_and_only_by_its_tenant() {
    let redis = RedisServer::start();
    let ns = unique_namespace("bulk");
    let models = ModelsDir::with(&[
        ("acme~mlp128", "mlp128.onnx"),
        ("globex~mlp128", "mlp128.onnx"),
    ]);
    let _worker = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &[]);
    let keys = KeysFile::new(&[("acme", "key-acme"), ("globex", "key-globex")]);
    let api = Api::spawn(&redis.url(), &ns, &["--api-keys-file", &keys.arg()]);
    let acme = Client::with_api_key(&api.base_url, "key-acme");
    let globex = Client::with_api_key(&api.base_url, "key-globex");
    acme.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    globex
        .wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;

    // Before the bulk: two single jobs of acme's, three of globex's.
    let mut acme_before = Vec::new();
    for i in 0..2 {
        acme_before.push(acme.submit("mlp128", &row(i as f32)).await);
    }
    let mut globex_jobs = Vec::new();
    for i in 0..3 {
        globex_jobs.push(globex.submit("mlp128", &row(i as f32)).await);
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t0 = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(5)).await;

    let items: Vec<Value> = (0..1000).map(|i| row(i as f32 / 1000.0)).collect();
    let r = bulk(&acme, "mlp128", &json!({ "items": items })).await;
    let bulk_ids = accepted_ids(&r);
    assert_eq!(r.json["accepted"], 1000, "{}", r.text);
    assert_eq!(r.json["refused"], 0);
    assert_eq!(bulk_ids.len(), 1000);
    // Ids are handed out in item order.
    assert_newest_first(&bulk_ids.iter().rev().cloned().collect::<Vec<_>>());

    // The search since t0 finds exactly the bulk, newest first: the items
    // in reverse order. Pages of 37 take ceil(1000 / 37) pages or one more.
    let (found, pages) = list_all(&acme, &format!("since={t0}"), 37).await;
    let found = ids_of(&found);
    assert_newest_first(&found);
    let mut expected = bulk_ids.clone();
    expected.reverse();
    assert_eq!(found, expected, "the search must find exactly the bulk");
    assert!((28..=29).contains(&pages), "{pages} pages");
    // Without bounds: the bulk and the two before it, nothing of globex's.
    let (all, _) = list_all(&acme, "", 500).await;
    let all = ids_of(&all);
    assert_newest_first(&all);
    assert_eq!(all.len(), 1002);
    assert_eq!(
        &all[1000..],
        &[acme_before[1].clone(), acme_before[0].clone()]
    );
    // Until t0: only the two before.
    let (early, _) = list_all(&acme, &format!("until={t0}"), 10).await;
    assert_eq!(
        ids_of(&early),
        [acme_before[1].clone(), acme_before[0].clone()]
    );
    // A model filter of another name finds nothing.
    let (none, _) = list_all(&acme, "model=breast_cancer", 100).await;
    assert!(none.is_empty());

    // globex sees its own three, none of acme's, whatever the query.
    let (theirs, _) = list_all(&globex, "", 500).await;
    let mut expected: Vec<String> = globex_jobs.iter().rev().cloned().collect();
    assert_eq!(ids_of(&theirs), expected);
    let (theirs, _) = list_all(&globex, &format!("since={t0}&model=mlp128"), 50).await;
    assert!(theirs.is_empty(), "{theirs:?}");
    // Nor with a cursor taken from acme's listing.
    let r = acme.get("/v1/jobs?limit=1").await;
    let cursor = r.json["next_cursor"].as_str().expect("cursor").to_owned();
    let (theirs, _) = list_all(&globex, &format!("cursor={cursor}"), 500).await;
    expected.retain(|id| *id < bulk_ids[999]);
    assert_eq!(ids_of(&theirs), expected);

    // Once the worker has run them all, the status filter finds all 1,000
    // succeeded and none queued.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (done, _) = list_all(&acme, &format!("since={t0}&status=succeeded"), 500).await;
        if done.len() == 1000 {
            assert_eq!(
                ids_of(&done),
                bulk_ids.iter().rev().cloned().collect::<Vec<_>>()
            );
            assert!(done.iter().all(|j| j["model"] == "mlp128"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 1000 succeeded",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (queued, _) = list_all(&acme, &format!("since={t0}&status=queued"), 500).await;
    assert!(queued.is_empty());
}

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    }
}

/// Publishes mlp128's signature as a worker would, without running one: the
/// jobs stay queued.
async fn publish_mlp128(redis: &RedisServer, ns: &str) {
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let info = ModelInfo {
        name: "mlp128".into(),
        version: "0000000000000000".into(),
        inputs: vec![spec("features", DataType::Fp32, &[-1, 128])],
        outputs: vec![spec("prediction", DataType::Fp32, &[-1, 1])],
        updated_at_ms: shared::time::now_ms(),
    };
    consume::publish_model(&mut conn, &Keys::new(ns), &info)
        .await
        .expect("publish signature");
}

async fn count_jobs(c: &Client) -> usize {
    list_all(c, "", 500).await.0.len()
}

fn item_code(r: &Reply, i: usize) -> String {
    r.json["items"][i]["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_items_are_reported_by_index_and_atomic_batches_are_all_or_nothing() {
    let redis = RedisServer::start();
    let ns = unique_namespace("bulk-items");
    publish_mlp128(&redis, &ns).await;
    let api = Api::spawn(&redis.url(), &ns, &["--max-bulk", "8"]);
    let c = api.client();
    c.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;

    let mixed = |atomic: bool| {
        json!({ "atomic": atomic, "items": [
            row(0.1),
            { "features": [1.0, 2.0] },
            { "features": vec![0.2f32; 128], "deadline": 30 },
            { "features": vec![0.3f32; 128], "model_version": 99 },
            { "nope": 1 },
            { "features": vec![0.4f32; 128], "deadline": -1 },
            row(0.5),
        ]})
    };
    let r = bulk(&c, "mlp128", &mixed(false)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json["accepted"], 3, "{}", r.text);
    assert_eq!(r.json["refused"], 4);
    let items = r.json["items"].as_array().expect("items");
    assert_eq!(items.len(), 7);
    for (i, code) in [
        (1, "invalid_input"),
        (3, "version_not_found"),
        (4, "invalid_input"),
        (5, "invalid_input"),
    ] {
        assert_eq!(item_code(&r, i), code, "item {i}: {}", items[i]);
        assert!(items[i].get("job_id").is_none(), "{}", items[i]);
        assert!(
            !items[i]["error"]["message"]
                .as_str()
                .unwrap_or("")
                .is_empty()
        );
    }
    // The valid ones are queued jobs like any other.
    let mut queued = Vec::new();
    for i in [0, 2, 6] {
        assert_eq!(items[i]["index"], i);
        let id = items[i]["job_id"].as_str().expect("job_id");
        let job = c.job(id, None).await;
        assert_eq!(job.status, StatusCode::OK, "{}", job.text);
        assert_eq!(job.json["status"], "queued");
        queued.push(id.to_owned());
    }
    let deadline = c.job(&queued[1], None).await;
    assert!(deadline.json["deadline"].is_string(), "{}", deadline.text);
    assert_eq!(count_jobs(&c).await, 3);

    // Atomic: the first bad item fails the request, answered as its own
    // predict would be, and nothing is queued.
    let r = bulk(&c, "mlp128", &mixed(true)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.error_code(), "invalid_input");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("items[1]: "),
        "{}",
        r.text
    );
    let pinned = json!({ "atomic": true, "items": [
        row(0.1),
        { "features": vec![0.3f32; 128], "model_version": 99 },
    ]});
    let r = bulk(&c, "mlp128", &pinned).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.error_code(), "version_not_found");
    assert_eq!(
        count_jobs(&c).await,
        3,
        "an atomic refusal queued something"
    );
    // An atomic batch of good items is queued whole.
    let good: Vec<Value> = (0..4).map(|i| row(i as f32)).collect();
    let r = bulk(&c, "mlp128", &json!({ "atomic": true, "items": good })).await;
    assert_eq!(accepted_ids(&r).len(), 4);
    assert_eq!(count_jobs(&c).await, 7);

    // The request's own limits.
    let nine: Vec<Value> = (0..9).map(|i| row(i as f32)).collect();
    for body in [json!({ "items": nine }), json!({ "items": [] })] {
        let r = bulk(&c, "mlp128", &body).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
        assert_eq!(r.error_code(), "too_many_items");
    }
    let r = bulk(&c, "mlp128", &json!({ "items": 5 })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = c
        .post_raw(
            "/v1/models/mlp128/predict/batch",
            Some("application/json"),
            b"{\"items\": [".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.error_code(), "malformed_json");
    let r = c
        .send(
            c.http
                .post(format!("{}/v1/models/mlp128/predict/batch", c.base))
                .header("idempotency-key", "k1")
                .json(&json!({ "items": [row(0.0)] })),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.error_code(), "invalid_idempotency_key");
    let r = bulk(&c, "no_such_model", &json!({ "items": [row(0.0)] })).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.error_code(), "model_not_found");
    assert_eq!(
        count_jobs(&c).await,
        7,
        "a refused request queued something"
    );

    // The index expires with the records: its bucket outlives its hour by
    // the longest record TTL (here the default 86400 s), and an entry
    // whose record is gone is skipped.
    let keys = Keys::new(&ns);
    let first: uuid::Uuid = queued[0].parse().expect("uuid");
    let bucket = shared::queue::index::bucket_of(shared::queue::index::id_ms(&first));
    let mut conn = redis.client().get_connection().expect("redis");
    let ttl: i64 = redis::cmd("TTL")
        .arg(keys.job_index("default", 0, bucket))
        .query(&mut conn)
        .expect("TTL");
    assert!((86_400..=86_400 + 3_600).contains(&ttl), "index TTL {ttl}");
    let _: () = redis::cmd("DEL")
        .arg(keys.job(&first))
        .query(&mut conn)
        .expect("DEL");
    let (left, _) = list_all(&c, "", 2).await;
    let left = ids_of(&left);
    assert_eq!(left.len(), 6);
    assert!(!left.contains(&queued[0]));
    assert_newest_first(&left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_and_search_work_on_a_cluster_with_partitions() {
    let cluster = RedisCluster::start();
    let ns = unique_namespace("cbulk");
    let url = cluster.url();
    let _w = Worker::spawn(&url, &ns, &["--partitions", "3"]);
    let api = Api::spawn(&url, &ns, &["--partitions", "3"]);
    let c = api.client();
    c.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let items: Vec<Value> = (0..300).map(|i| row(i as f32)).collect();
    let r = bulk(&c, "mlp128", &json!({ "items": items })).await;
    let ids = accepted_ids(&r);
    let partition = |id: &String| id[id.len() - 4..].to_owned();
    let spread: HashSet<String> = ids.iter().map(partition).collect();
    assert_eq!(spread.len(), 3, "a bulk spreads over the partitions");
    // An atomic batch keeps to one partition.
    let ten: Vec<Value> = (0..10).map(|i| row(i as f32)).collect();
    let r = bulk(&c, "mlp128", &json!({ "atomic": true, "items": ten })).await;
    let atomic_ids = accepted_ids(&r);
    let one: HashSet<String> = atomic_ids.iter().map(partition).collect();
    assert_eq!(one.len(), 1, "{atomic_ids:?}");

    let (found, _) = list_all(&c, "", 45).await;
    let found = ids_of(&found);
    assert_newest_first(&found);
    let mut expected: Vec<String> = ids.iter().chain(&atomic_ids).cloned().collect();
    expected.reverse();
    assert_eq!(found, expected);
    for id in &ids[..3] {
        let job = c.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_bound_reached_mid_batch_refuses_only_what_does_not_fit() {
    let redis = RedisServer::start();
    let ns = unique_namespace("bulk-bound");
    publish_mlp128(&redis, &ns).await;
    let api = Api::spawn(&redis.url(), &ns, &["--max-queue-depth", "5"]);
    let c = api.client();
    c.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;

    // Two queued, then an atomic batch of four does not fit in the three
    // left: refused whole, nothing queued.
    c.submit("mlp128", &row(0.0)).await;
    c.submit("mlp128", &row(0.0)).await;
    let four: Vec<Value> = (0..4).map(|i| row(i as f32)).collect();
    let r = bulk(&c, "mlp128", &json!({ "atomic": true, "items": four })).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.error_code(), "queue_full");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(count_jobs(&c).await, 2);

    // Not atomic: the first three fit, the fourth is refused by index.
    let r = bulk(&c, "mlp128", &json!({ "items": four })).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json["accepted"], 3, "{}", r.text);
    assert_eq!(r.json["refused"], 1);
    for i in 0..3 {
        assert_eq!(r.json["items"][i]["status"], "queued", "{}", r.text);
    }
    assert_eq!(item_code(&r, 3), "queue_full");
    assert_eq!(count_jobs(&c).await, 5);
    // An atomic batch that fits is counted in the tenant's usage job by
    // job, as single submits are: 5 + 2 unfinished jobs.
    let api = Api::spawn(&redis.url(), &ns, &["--max-queue-depth", "7"]);
    let c = api.client();
    let two: Vec<Value> = (0..2).map(|i| row(i as f32)).collect();
    let r = bulk(&c, "mlp128", &json!({ "atomic": true, "items": two })).await;
    assert_eq!(accepted_ids(&r).len(), 2);
    let mut conn = redis.client().get_connection().expect("redis");
    let jobs: u64 = redis::cmd("HGET")
        .arg(Keys::new(&ns).job_usage("default", 0))
        .arg("jobs")
        .query(&mut conn)
        .expect("HGET usage");
    assert_eq!(jobs, 7);
}
