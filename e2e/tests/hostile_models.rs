//! Models as untrusted input, end to end: hostile models built at test
//! time ([`e2e::onnx_build`]) are uploaded through the API and validated by
//! a real worker, which must refuse each with its stable code while its
//! own memory stays small; the bounded set of loaded versions, version
//! deletion and the collection of unreferenced bytes; and the quarantine of
//! a version that killed a worker while it loaded.

use std::time::{Duration, Instant};

use e2e::onnx_build as onnx;
use e2e::{Api, Client, RedisServer, StatusCode, Worker, binary, procfs, unique_namespace};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn conn(redis: &RedisServer) -> redis::Connection {
    redis.client().get_connection().expect("redis connection")
}

/// Uploads `bytes` as a version of `model`; returns it and the validate job.
async fn upload(c: &Client, model: &str, bytes: Vec<u8>) -> (u32, Value) {
    let r = c.upload_version(model, bytes).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let version = r.json["version"].as_u64().expect("version") as u32;
    let id = r.json["job_id"].as_str().expect("job_id").to_owned();
    (version, c.wait_terminal(&id, WAIT).await)
}

/// Uploads a model that must be refused with `code`; returns the version
/// and the message.
async fn refused(c: &Client, what: &str, bytes: Vec<u8>, code: &str) -> (u32, String) {
    let (v, job) = upload(c, "hostile", bytes).await;
    assert_eq!(job["status"], "failed", "{what}: {job}");
    assert_eq!(job["error"]["code"], code, "{what}: {job}");
    let meta = c.version("hostile", v).await;
    assert_eq!(meta["status"], "invalid", "{what}: {meta}");
    assert_eq!(meta["error_code"], code, "{what}: {meta}");
    println!("{what}: {code}: {}", job["error"]["message"]);
    (v, job["error"]["message"].as_str().unwrap_or("").to_owned())
}

fn body(x: &[f32]) -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x}]})
}

/// Runs one predict on `model` and returns `y`.
async fn predict(c: &Client, model: &str, x: &[f32]) -> Vec<f64> {
    let id = c.submit(model, &body(x)).await;
    let job = c.wait_terminal(&id, WAIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job["result"]["outputs"][0]["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_are_refused_with_stable_codes_and_the_worker_stays_small() {
    let redis = RedisServer::start();
    let ns = unique_namespace("hostile");
    // Small limits keep the test fast; the fold bomb needs 1 GiB to run.
    let worker = Worker::spawn(
        &redis.url(),
        &ns,
        &[
            "--validate-memory-mb",
            "512",
            "--validate-cpu-secs",
            "2",
            "--validate-timeout-secs",
            "20",
        ],
    );
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let c = api.client();
    c.wait_for_models(&["mlp128"], WAIT).await;
    let started = Instant::now();

    for (what, bytes) in [
        ("relative", onnx::external_initializer("etc/passwd")),
        ("absolute", onnx::external_initializer("/etc/passwd")),
        ("parent", onnx::external_initializer("../../etc/passwd")),
        ("subgraph", onnx::external_in_subgraph("etc/passwd")),
        ("constant", onnx::external_in_constant("etc/passwd")),
    ] {
        let (_, msg) = refused(&c, what, bytes, "model_external_data").await;
        assert!(!msg.contains("passwd") && !msg.contains('/'), "{msg}");
    }
    // A file that exists in the worker's directory and one that does not:
    // the same answer, naming no path.
    let (_, exists) = refused(
        &c,
        "existing file",
        onnx::external_initializer("Cargo.toml"),
        "model_external_data",
    )
    .await;
    let (_, missing) = refused(
        &c,
        "missing file",
        onnx::external_initializer("no-such-file.bin"),
        "model_external_data",
    )
    .await;
    assert_eq!(exists, missing);
    assert!(
        !exists.contains("Cargo") && !exists.contains('/'),
        "{exists}"
    );

    refused(
        &c,
        "declared [1<<40]",
        onnx::declared_huge(),
        "model_tensor_too_large",
    )
    .await;
    let (fold_version, _) = refused(
        &c,
        "fold bomb",
        onnx::fold_bomb(),
        "model_validation_memory",
    )
    .await;
    refused(
        &c,
        "endless loop",
        onnx::endless_loop(),
        "model_validation_timeout",
    )
    .await;
    refused(
        &c,
        "garbage",
        b"not an onnx model".to_vec(),
        "invalid_model",
    )
    .await;
    println!("hostile uploads refused in {:?}", started.elapsed());

    // The builders the run-time limits are tested with have signatures the
    // API and ONNX Runtime accept (the huge output is tiny on zeros).
    let (_, job) = upload(&c, "expand", onnx::huge_output()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["inputs"][1]["name"], "shape", "{job}");

    // A benign upload still validates, and the worker serves as before.
    let (v, job) = upload(&c, "hostile", onnx::scale(2.0)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(c.version("hostile", v).await["status"], "ready");
    let r = c.promote("hostile", v).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    c.wait_for_models(&["hostile"], WAIT).await;
    assert_eq!(
        predict(&c, "hostile", &[1.0, 2.0, 3.0, 4.0]).await,
        vec![2.0, 4.0, 6.0, 8.0]
    );

    // The bombs ran in child processes: the worker itself never grew.
    let peak = procfs::peak_mib(worker.proc.pid());
    println!("worker VmHWM after the hostile uploads: {peak} MiB");
    assert!(peak < 200, "worker peaked at {peak} MiB");

    // Invalid uploads keep their metadata, not their bytes.
    let mut rc = conn(&redis);
    let fold = c.version("hostile", fold_version).await;
    assert_eq!(fold["error_code"], "model_validation_memory", "{fold}");
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!(
            "{ns}:blob:{}",
            fold["sha256"].as_str().unwrap_or("")
        ))
        .query(&mut rc)
        .expect("exists");
    assert!(!exists, "the bytes of an invalid version are dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_models_are_served_with_a_bounded_set_loaded() {
    let redis = RedisServer::start();
    let ns = unique_namespace("hostile-lru");
    let worker = Worker::spawn(&redis.url(), &ns, &["--max-loaded-models", "2"]);
    let api = Api::spawn(&redis.url(), &ns, &[]);
    let c = api.client();
    c.wait_for_models(&["mlp128"], WAIT).await;
    let names: Vec<String> = (1..=5).map(|k| format!("lru{k}")).collect();
    for (k, name) in names.iter().enumerate() {
        let (v, job) = upload(&c, name, onnx::scale(k as f32 + 1.0)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let r = c.promote(name, v).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // Every model is served (published, its stream read) ...
    c.wait_for_models(&refs, WAIT).await;
    // ... and answers right, in any order, though at most two are loaded.
    for round in 0..2 {
        for (k, name) in names.iter().enumerate().rev() {
            let x = [1.0, -2.0, 0.5, round as f32];
            let want: Vec<f64> = x.iter().map(|&v| f64::from(v) * (k as f64 + 1.0)).collect();
            assert_eq!(predict(&c, name, &x).await, want, "{name}");
        }
    }
    let unloaded = worker.log_events("model version unloaded (least recently used)");
    assert!(unloaded.len() >= 6, "{} unloads", unloaded.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_can_be_deleted_and_unreferenced_bytes_are_collected() {
    let redis = RedisServer::start();
    let ns = unique_namespace("hostile-gc");
    let keys_file = std::env::temp_dir().join(format!("{ns}-keys.txt"));
    // sha256("k-default") and sha256("k-acme").
    let digest = |k: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(k.as_bytes()))
    };
    std::fs::write(
        &keys_file,
        format!(
            "default {}\nacme {}\n",
            digest("k-default"),
            digest("k-acme")
        ),
    )
    .expect("keys file");
    let _w = Worker::spawn(&redis.url(), &ns, &[]);
    let api = Api::spawn(
        &redis.url(),
        &ns,
        &["--api-keys-file", &keys_file.display().to_string()],
    );
    let c = Client::with_api_key(&api.base_url, "k-default");
    let acme = Client::with_api_key(&api.base_url, "k-acme");
    c.wait_for_models(&["mlp128"], WAIT).await;
    let mut rc = conn(&redis);
    let blob_exists = |rc: &mut redis::Connection, sha: &str| -> bool {
        redis::cmd("EXISTS")
            .arg(e2e::keys(&ns).blob(sha))
            .query(rc)
            .expect("exists")
    };

    let (v1, job) = upload(&c, "gc", onnx::scale(2.0)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let (v2, _) = upload(&c, "gc", onnx::scale(3.0)).await;
    // The same bytes again: one blob, two references.
    let (v3, _) = upload(&c, "gc", onnx::scale(3.0)).await;
    let sha1 = c.version("gc", v1).await["sha256"]
        .as_str()
        .expect("sha")
        .to_owned();
    let sha2 = c.version("gc", v2).await["sha256"]
        .as_str()
        .expect("sha")
        .to_owned();
    assert_eq!(c.promote("gc", v1).await.status, StatusCode::OK);
    assert_eq!(c.promote("gc", v2).await.status, StatusCode::OK);

    let path = |v: u32| format!("/v1/models/gc/versions/{v}");
    // The current version cannot go; another tenant cannot see the model.
    let r = c.delete(&path(v2)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.error_code(), "version_is_current");
    let r = acme.delete(&path(v1)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.error_code(), "version_not_found");
    let r = c.delete("/v1/models/gc/versions/99").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    // v1 (in the rollback history) goes, with its bytes and its history entry.
    let r = c.delete(&path(v1)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(!blob_exists(&mut rc, &sha1));
    let r = c
        .send(c.http.post(format!("{}/v1/models/gc/rollback", c.base)))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.error_code(), "no_previous_version");
    let r = c.delete(&path(v1)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    // v3 shares v2's bytes: deleting it keeps them for v2.
    assert_eq!(c.delete(&path(v3)).await.status, StatusCode::NO_CONTENT);
    assert!(blob_exists(&mut rc, &sha2));
    assert_eq!(predict(&c, "gc", &[1.0, 1.0, 1.0, 1.0]).await, vec![3.0; 4]);

    // Bytes stored before the counts existed: a blob no version names and
    // one that a version names without a counted reference.
    let legacy = onnx::scale(7.0);
    let legacy_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&legacy))
    };
    let _: () = redis::cmd("SET")
        .arg(e2e::keys(&ns).blob(&legacy_sha))
        .arg(&legacy)
        .query(&mut rc)
        .expect("set");
    let _: i64 = redis::cmd("HDEL")
        .arg(e2e::keys(&ns).registry("gc"))
        .arg(format!("ref:{v2}"))
        .query(&mut rc)
        .expect("hdel");
    let _: i64 = redis::cmd("HDEL")
        .arg(e2e::keys(&ns).blob_refs())
        .arg(&sha2)
        .query(&mut rc)
        .expect("hdel");
    let jobctl = |extra: &[&str]| {
        let out = std::process::Command::new(binary("jobctl"))
            .args([
                "--redis-url",
                &redis.url(),
                "--namespace",
                &ns,
                "sweep-blobs",
                "--json",
            ])
            .args(extra)
            .output()
            .expect("jobctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("json")
    };
    let dry = jobctl(&["--dry-run"]);
    assert_eq!(
        dry["unreferenced"][0]["sha256"],
        legacy_sha.as_str(),
        "{dry}"
    );
    assert_eq!(
        dry["unreferenced"].as_array().map(Vec::len),
        Some(1),
        "{dry}"
    );
    assert_eq!(dry["deleted"], 0, "{dry}");
    assert!(blob_exists(&mut rc, &legacy_sha));
    let done = jobctl(&[]);
    assert_eq!(done["deleted"], 1, "{done}");
    assert_eq!(done["versions_counted"], 1, "{done}");
    assert!(!blob_exists(&mut rc, &legacy_sha));
    assert!(blob_exists(&mut rc, &sha2), "a referenced blob survives");
    let again = jobctl(&[]);
    assert_eq!(
        (again["deleted"].clone(), again["versions_counted"].clone()),
        (json!(0), json!(0)),
        "{again}"
    );
    let _ = std::fs::remove_file(&keys_file);
}

/// The process's private writable memory (VmData), in bytes: what
/// RLIMIT_DATA bounds (unlike RLIMIT_AS, address space that glibc merely
/// reserves for its arenas does not count).
fn vm_data(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmData:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmSize")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_kills_its_worker_while_loading_is_quarantined() {
    let redis = RedisServer::start();
    let ns = unique_namespace("hostile-quarantine");
    // Markers are refreshed every second; a live worker slowed down by a
    // busy machine must not look dead.
    let stale = ["--load-stale-ms", "5000"];
    let mut victim = Worker::spawn(&redis.url(), &ns, &stale);
    let survivor = Worker::spawn(&redis.url(), &ns, &stale);
    let api = Api::spawn(&redis.url(), &ns, &["--max-model-bytes", "80000000"]);
    let c = api.client();
    c.wait_for_models(&["mlp128"], WAIT).await;
    let victim_name = victim.consumer_name(WAIT);
    survivor.consumer_name(WAIT);

    // 32 MiB of honest bytes: validation (its own process, 1 GiB) passes.
    let (v, job) = upload(&c, "big", onnx::padded(2.0, 32 << 20)).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // Now the victim may grow by 16 MiB at most (RLIMIT_DATA, soft limit
    // only, so the validation children it starts could still raise
    // theirs): loading the version kills it, as an out-of-memory kill
    // would.
    let limit = vm_data(victim.proc.pid()) + (16 << 20);
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", victim.proc.pid()))
        .arg(format!("--data={limit}:unlimited"))
        .status()
        .expect("prlimit");
    assert!(status.success());
    let r = c.promote("big", v).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let exit = victim.proc.wait_exit(WAIT);
    assert!(
        matches!(exit, Some(None)),
        "the victim should die of a signal while loading: {exit:?}\n{}",
        victim.proc.log_text()
    );

    // The survivor finds the victim's marker gone stale and quarantines
    // the version, in one step that also tells every worker.
    let deadline = Instant::now() + WAIT;
    let meta = loop {
        let meta = c.version("big", v).await;
        if meta["status"] == "quarantined" || Instant::now() > deadline {
            break meta;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(meta["status"], "quarantined", "{meta}");
    assert_eq!(meta["error_code"], "model_load_crashed", "{meta}");
    let events = survivor.log_events("model version quarantined: its worker died while loading it");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["fields"]["dead_worker"], victim_name.as_str());
    // The survivor's own marker goes once its (successful) load ends.
    let mut rc = conn(&redis);
    let deadline = Instant::now() + WAIT;
    loop {
        let markers: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(e2e::keys(&ns).loading())
            .query(&mut rc)
            .expect("hgetall");
        if markers.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "markers left: {markers:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // It can never become current again, and a new worker does not load
    // it but serves everything else.
    let r = c.promote("big", v).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.error_code(), "version_not_ready");
    drop(survivor);
    let fresh = Worker::spawn(&redis.url(), &ns, &stale);
    fresh.consumer_name(WAIT);
    let y = c
        .wait_terminal(
            &c.submit("mlp128", &json!({"features": vec![0.1f32; 128]}))
                .await,
            WAIT,
        )
        .await;
    assert_eq!(y["status"], "succeeded", "{y}");
    assert!(
        fresh
            .log_events("model version loaded")
            .iter()
            .all(|e| e["fields"]["model"] != "big"),
        "a quarantined version was loaded"
    );
    assert!(
        !fresh
            .log_events("cannot serve the current version; keeping the served one")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_enforces_per_tenant_quotas_atomically() {
    use shared::queue::Keys;
    use shared::queue::registry::{
        self, Deletion, Quota, QuotaExceeded, RegisterMode, Registration, Source, Version,
        VersionStatus,
    };
    let redis = RedisServer::start();
    let keys = Keys::new(&unique_namespace("hostile-quota"));
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let quota = Quota {
        tenant_models: keys.tenant_models("acme"),
        max_versions: Some(2),
        max_models: Some(2),
    };
    let shared_conn = conn.clone();
    let add = |model: &'static str, k: f32| {
        let keys = keys.clone();
        let quota = quota.clone();
        let mut conn = shared_conn.clone();
        async move {
            let bytes = onnx::scale(k);
            let sha = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&bytes))
            };
            let v = Version::new(&bytes, &sha, Source::Upload, VersionStatus::Validating);
            registry::register(
                &mut conn,
                &keys,
                model,
                &bytes,
                &v,
                RegisterMode::Add,
                Some(&quota),
            )
            .await
            .expect("register")
        }
    };
    let done = |r: Registration| match r {
        Registration::Registered(r) => r.version,
        other => panic!("{other:?}"),
    };
    assert_eq!(done(add("acme~a", 1.0).await), 1);
    assert_eq!(done(add("acme~a", 2.0).await), 2);
    assert_eq!(
        add("acme~a", 3.0).await,
        Registration::QuotaExceeded(QuotaExceeded::Versions { limit: 2 })
    );
    assert_eq!(done(add("acme~b", 1.0).await), 1);
    assert_eq!(
        add("acme~c", 1.0).await,
        Registration::QuotaExceeded(QuotaExceeded::Models { limit: 2 })
    );
    // Nothing of a refused registration was written.
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(keys.registry("acme~c"))
        .query_async(&mut conn)
        .await
        .expect("hkeys");
    assert!(fields.is_empty(), "{fields:?}");
    // A deleted version frees its place; a model whose last version goes
    // frees the model's.
    let gone = registry::delete_version(&mut conn, &keys, "acme~a", 1, Some(&quota.tenant_models))
        .await
        .expect("delete");
    // acme~b holds the same bytes.
    assert_eq!(
        gone,
        Deletion::Deleted {
            blob_deleted: false
        }
    );
    assert_eq!(done(add("acme~a", 3.0).await), 3);
    let gone = registry::delete_version(&mut conn, &keys, "acme~b", 1, Some(&quota.tenant_models))
        .await
        .expect("delete");
    assert_eq!(gone, Deletion::Deleted { blob_deleted: true });
    assert_eq!(done(add("acme~c", 1.0).await), 1);
}
