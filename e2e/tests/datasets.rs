//! Datasets and retrain requests over HTTP, without a worker: the checks
//! the API makes before anything is stored or queued, the dataset life
//! cycle, and tenant isolation of datasets.

use e2e::{Api, Client, RedisServer, StatusCode, unique_namespace};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const CSV: &[u8] = b"x1,x2,target\n0.5,1.0,0\n1.5,-2.0,1\n2.5,0.0,1\n";

async fn put(c: &Client, name: &str, content_type: &str, body: &[u8]) -> e2e::Reply {
    c.send(
        c.http
            .put(format!("{}/v1/datasets/{name}", c.base))
            .header("content-type", content_type)
            .body(body.to_vec()),
    )
    .await
}

async fn retrain(c: &Client, model: &str, body: &Value) -> e2e::Reply {
    c.send(
        c.http
            .post(format!("{}/v1/models/{model}/retrain", c.base))
            .json(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_are_checked_stored_listed_and_deleted() {
    let redis = RedisServer::start();
    let ns = unique_namespace("datasets");
    let api = Api::spawn(&redis.url(), &ns, &["--max-dataset-bytes", "1000"]);
    let c = api.client();

    let r = put(&c, "tiny", "text/csv; charset=utf-8", CSV).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["rows"], 3);
    assert_eq!(r.json["columns"], json!(["x1", "x2", "target"]));
    assert_eq!(r.json["sha256"], hex::encode(Sha256::digest(CSV)));
    assert_eq!(r.headers["location"], "/v1/datasets/tiny");
    let r = put(&c, "tiny", "text/csv", CSV).await;
    assert_eq!(r.status, StatusCode::OK, "replacing answers 200");
    assert_eq!(c.get("/v1/datasets/tiny").await.json["rows"], 3);
    let list = c.get("/v1/datasets").await;
    assert_eq!(list.json["datasets"][0]["name"], "tiny", "{}", list.text);

    // Refused before anything is stored, with the place at fault.
    let r = put(&c, "bad", "text/csv", b"x1,target\n1,0\nabc,1\n").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error_code(), "invalid_dataset");
    let msg = r.json["error"]["message"].as_str().unwrap();
    assert!(msg.contains("line 3") && msg.contains("x1"), "{msg}");
    let r = put(&c, "bad", "application/json", CSV).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.error_code(), "unsupported_media_type");
    let big = [CSV, "1,2,0\n".repeat(200).as_bytes()].concat();
    let r = put(&c, "bad", "text/csv", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.error_code(), "payload_too_large");
    assert_eq!(
        c.get("/v1/datasets/bad").await.status,
        StatusCode::NOT_FOUND
    );

    // Retrain requests the API can tell are wrong.
    let cases = [
        (
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "exactly one",
        ),
        (
            json!({"dataset": "tiny", "data": {"columns": ["a"], "rows": []}}),
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
            json!({"dataset": "tiny", "params": {"epochs": 0}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "epochs",
        ),
        (
            json!({"dataset": "tiny", "params": {"target_column": "y"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "\"x1\"",
        ),
        (
            json!({"dataset": "nope"}),
            StatusCode::NOT_FOUND,
            "dataset_not_found",
            "nope",
        ),
        (
            json!({"data": {"columns": ["a", "target"], "rows": [[1.0, 0.0], [2.0]]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_dataset",
            "rows[1]",
        ),
        (
            json!({"dataset": "tiny", "promote": "sometimes"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "sometimes",
        ),
    ];
    for (body, status, code, says) in cases {
        let r = retrain(&c, "m", &body).await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
        assert_eq!(r.error_code(), code, "{body}");
        let message = r.json["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{body}: {message}");
    }

    // A valid request is queued as a retrain job, with progress null until
    // a worker starts it; an Idempotency-Key repeat is the same job.
    let send = || {
        c.send(
            c.http
                .post(format!("{}/v1/models/m/retrain", c.base))
                .header("idempotency-key", "k1")
                .json(&json!({"dataset": "tiny", "promote": "never"})),
        )
    };
    let first = send().await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    let again = send().await;
    assert_eq!(again.json["job_id"], first.json["job_id"]);
    let id = first.json["job_id"].as_str().unwrap();
    let job = c.job(id, None).await;
    assert_eq!(job.json["kind"], "retrain");
    assert_eq!(job.json["status"], "queued");
    assert!(job.json["progress"].is_null());
    assert_eq!(job.json["model"], "m");

    let r = c.delete("/v1/datasets/tiny").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = c.delete("/v1/datasets/tiny").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "dataset_not_found");
}

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_see_or_use_another_tenants_dataset() {
    let redis = RedisServer::start();
    let ns = unique_namespace("datasets-tenants");
    let keys_file = std::env::temp_dir().join(format!("{ns}-keys"));
    std::fs::write(
        &keys_file,
        format!("acme {}\nglobex {}\n", digest("key-a"), digest("key-g")),
    )
    .expect("keys file");
    let keys_arg = keys_file.display().to_string();
    let api = Api::spawn(&redis.url(), &ns, &["--api-keys-file", &keys_arg]);
    let acme = Client::with_api_key(&api.base_url, "key-a");
    let globex = Client::with_api_key(&api.base_url, "key-g");

    assert_eq!(
        put(&acme, "bc", "text/csv", CSV).await.status,
        StatusCode::CREATED
    );
    for r in [
        globex.get("/v1/datasets/bc").await,
        globex.delete("/v1/datasets/bc").await,
        retrain(&globex, "m", &json!({"dataset": "bc"})).await,
    ] {
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        assert_eq!(r.error_code(), "dataset_not_found");
    }
    assert_eq!(globex.get("/v1/datasets").await.json["datasets"], json!([]));

    // globex's own "bc" is another dataset; acme's is untouched.
    let other = b"a,target\n1,0\n2,1\n";
    assert_eq!(
        put(&globex, "bc", "text/csv", other).await.status,
        StatusCode::CREATED
    );
    let mine = acme.get("/v1/datasets/bc").await;
    assert_eq!(mine.json["sha256"], hex::encode(Sha256::digest(CSV)));
    let list = acme.get("/v1/datasets").await;
    assert_eq!(list.json["datasets"].as_array().unwrap().len(), 1);
    assert_eq!(list.json["datasets"][0]["name"], "bc");
    let _ = std::fs::remove_file(&keys_file);
}

/// The reproduced quadratic attack and its neighbours: each is refused in
/// about the time it takes to read it, with the limit named, and the API
/// stays small and answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datasets_are_refused_with_the_limit_named_and_the_api_stays_small() {
    let redis = RedisServer::start();
    let ns = unique_namespace("hostilecsv");
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let c = api.client();
    // 80,000 columns in 0.7 MB: 14 s of CPU before, quadratic.
    let wide: String = (0..80_000).map(|j| format!("c{j},")).collect();
    let wide = format!("{wide}target\n{}1\n", "0,".repeat(80_000));
    // A line of 2 MiB: one field past the line limit.
    let long = format!("a,target\n{},0\n", "1".repeat(2 << 20));
    // Inline rows with as many columns: the same rules.
    let columns: Vec<String> = (0..20_000).map(|j| format!("c{j}")).collect();
    for (what, body, needle) in [
        ("80,000 columns", wide.into_bytes(), "at most 10000"),
        ("a 2 MiB line", long.into_bytes(), "1048576 bytes"),
    ] {
        let t = std::time::Instant::now();
        let r = put(&c, "hostile", "text/csv", &body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {}",
            r.text
        );
        assert_eq!(r.error_code(), "invalid_dataset", "{what}");
        assert!(r.text.contains(needle), "{what}: {}", r.text);
        assert!(
            r.text.len() < 1200,
            "{what}: a {} byte answer",
            r.text.len()
        );
        println!("{what}: refused in {:?}", t.elapsed());
    }
    let mut row = vec![0.0; columns.len()];
    row[0] = 1.0;
    let r = retrain(
        &c,
        "m",
        &json!({"data": {"columns": columns, "rows": [row]}, "params": {"target_column": "c0"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.error_code(), "invalid_dataset");
    assert!(r.text.contains("at most 10000"), "{}", r.text);
    assert_eq!(c.get("/healthz").await.status, StatusCode::OK);
    let peak = e2e::procfs::peak_mib(api.proc.pid());
    println!("api peak memory: {peak} MiB");
    assert!(peak < 100, "api peaked at {peak} MiB");
}
