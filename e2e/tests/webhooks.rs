//! Webhooks against a real Redis, API and worker, and a receiver in the
//! test that checks every call with the Standard Webhooks reference
//! verifier (the `standardwebhooks` crate, not the API's code): calls are
//! signed, one per asked-for event with a stable `webhook-id`, recorded in
//! the job's view; a rotation signs with both secrets; a dead receiver is
//! retried, then dead-lettered, and `jobctl webhooks replay` sends the call
//! again; a dispatcher killed mid-delivery loses no call; internal
//! destinations are refused unless the operator allows them.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use e2e::{Api, Client, ModelsDir, RedisServer, StatusCode, Worker, unique_namespace};
use serde_json::{Value, json};

/// How the receiver answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Ok,
    Fail,
    /// Never answers (until the caller gives up).
    Stall,
}

#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone)]
struct Receiver {
    mode: Arc<Mutex<Mode>>,
    calls: Arc<Mutex<Vec<Received>>>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> AxStatus {
    r.calls.lock().unwrap().push(Received { headers, body });
    let mode = *r.mode.lock().unwrap();
    match mode {
        Mode::Ok => AxStatus::NO_CONTENT,
        Mode::Fail => AxStatus::INTERNAL_SERVER_ERROR,
        Mode::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            AxStatus::OK
        }
    }
}

impl Receiver {
    /// Serves on a free loopback port; the URL to give as `webhook`.
    async fn start() -> (Receiver, String) {
        let r = Receiver {
            mode: Arc::new(Mutex::new(Mode::Ok)),
            calls: Arc::new(Mutex::new(Vec::new())),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, url)
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    fn calls(&self) -> Vec<Received> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until `n` calls arrived; all of them.
    async fn wait_calls(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} webhook calls arrived",
                calls.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Received {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Whether the reference verifier accepts the call with `secret`.
    fn verifies_with(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret)
            .expect("a whsec_ secret")
            .verify(&self.body, &self.headers)
            .is_ok()
    }
}

fn row() -> Value {
    json!({ "features": vec![0.25f32; 128] })
}

async fn secret(c: &Client) -> String {
    let r = c.get("/v1/webhooks/secret").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let s = r.json["secret"].as_str().expect("secret").to_owned();
    assert!(s.starts_with("whsec_"), "{s}");
    s
}

/// Polls the job until its `event` delivery is in `state`.
async fn wait_delivery(c: &Client, id: &str, event: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.job(id, None).await;
        let d = &r.json["webhook_deliveries"][event];
        if d["state"] == state {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{event} delivery never {state}: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Env {
    redis: RedisServer,
    ns: String,
    models: ModelsDir,
    _worker: Worker,
}

fn env(prefix: &str) -> Env {
    let redis = RedisServer::start();
    let ns = unique_namespace(prefix);
    let models = ModelsDir::with(&[("mlp128", "mlp128.onnx")]);
    let worker = Worker::spawn_with_models(&redis.url(), &ns, &models.path, &[]);
    Env {
        redis,
        ns,
        models,
        _worker: worker,
    }
}

impl Env {
    fn api(&self, extra: &[&str]) -> Api {
        let mut args = vec!["--webhook-allow-private", "true"];
        args.extend_from_slice(extra);
        Api::spawn(&self.redis.url(), &self.ns, &args)
    }

    fn jobctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(e2e::binary("jobctl"))
            .args(["--redis-url", &self.redis.url(), "--namespace", &self.ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run jobctl");
        let _ = &self.models;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_signed_one_per_event_and_recorded_in_the_job() {
    let env = env("wh-signed");
    let api = env.api(&[]);
    let c = api.client();
    c.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let (rx, url) = Receiver::start().await;
    let first = secret(&c).await;
    assert_eq!(
        secret(&c).await,
        first,
        "reading the secret must not change it"
    );

    let mut body = row();
    body["webhook"] = json!(url);
    body["webhook_events_filter"] = json!(["start", "completed"]);
    let id = c.submit("mlp128", &body).await;
    let job = c.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["webhook"],
        json!({"url": url, "events": ["start", "completed"]})
    );
    let delivered = wait_delivery(&c, &id, "completed", "delivered").await;
    assert_eq!(delivered["attempts"], 1, "{delivered}");
    assert_eq!(delivered["last_status_code"], 204, "{delivered}");
    wait_delivery(&c, &id, "start", "delivered").await;

    let calls = rx.wait_calls(2, Duration::from_secs(10)).await;
    assert_eq!(calls.len(), 2, "one call per event");
    let mut by_type = HashMap::new();
    for call in &calls {
        assert!(call.verifies_with(&first), "signature: {:?}", call.headers);
        assert!(
            !call.verifies_with(&secrets_other()),
            "a wrong secret must not verify"
        );
        assert_eq!(call.header("content-type"), "application/json");
        let p = call.json();
        assert_eq!(p["data"]["job_id"], id.as_str(), "{p}");
        by_type.insert(
            p["type"].as_str().unwrap().to_owned(),
            (call.header("webhook-id"), p),
        );
    }
    let (start_id, started) = &by_type["job.started"];
    let (done_id, done) = &by_type["job.completed"];
    assert_ne!(start_id, done_id, "each call has its own webhook-id");
    assert_eq!(&delivered["webhook_id"], done_id.as_str());
    assert_eq!(started["attempt"], 1);
    assert_eq!(done["data"]["status"], "succeeded", "{done}");
    assert!(done["data"]["result"].is_object(), "{done}");

    // A job without a webhook calls nothing.
    let plain = c.submit("mlp128", &row()).await;
    let job = c.wait_terminal(&plain, Duration::from_secs(30)).await;
    assert!(
        job["webhook"].is_null() && job["webhook_deliveries"].is_null(),
        "{job}"
    );

    // After a rotation, calls carry both signatures until the overlap ends.
    let r = c
        .send(c.http.post(format!("{}/v1/webhooks/secret/rotate", c.base)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let second = r.json["secret"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert!(r.json["previous_valid_until"].is_string(), "{}", r.text);
    body["webhook_events_filter"] = json!(["completed"]);
    let id = c.submit("mlp128", &body).await;
    wait_delivery(&c, &id, "completed", "delivered").await;
    let calls = rx.wait_calls(3, Duration::from_secs(10)).await;
    let last = calls.last().unwrap();
    assert_eq!(last.json()["data"]["job_id"], id.as_str());
    assert!(last.verifies_with(&second) && last.verifies_with(&first));
    assert_eq!(last.header("webhook-signature").split(' ').count(), 2);
    // The secret never reaches the logs.
    assert!(
        !api.proc.log_text().contains(&first[6..]),
        "the secret is in the API's log"
    );
}

/// A secret nobody signs with.
fn secrets_other() -> String {
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_internal_destinations_are_refused() {
    let env = env("wh-refused");
    // An API without --webhook-allow-private, beside one with it.
    let strict = Api::spawn(&env.redis.url(), &env.ns, &["--webhook-dispatch", "false"]);
    let c = strict.client();
    c.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    for (url, code) in [
        ("ftp://example.com/hook", "invalid_webhook"),
        ("https://user:pw@example.com/hook", "invalid_webhook"),
        ("not a url", "invalid_webhook"),
        ("http://127.0.0.1:9/hook", "webhook_not_allowed"),
        (
            "http://169.254.169.254/latest/meta-data",
            "webhook_not_allowed",
        ),
        ("http://[::1]/hook", "webhook_not_allowed"),
        ("http://10.0.0.7/hook", "webhook_not_allowed"),
    ] {
        let mut body = row();
        body["webhook"] = json!(url);
        let r = c.predict("mlp128", &body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{url}: {}",
            r.text
        );
        assert_eq!(r.error_code(), code, "{url}: {}", r.text);
    }
    let mut body = row();
    body["webhook_events_filter"] = json!(["completed"]);
    let r = c.predict("mlp128", &body).await;
    assert_eq!(r.error_code(), "invalid_webhook", "{}", r.text);
    body["webhook"] = json!("https://example.com/hook");
    body["webhook_events_filter"] = json!(["finished"]);
    let r = c.predict("mlp128", &body).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    // A bulk item may not name its own webhook.
    let r = c
        .send(
            c.http
                .post(format!("{}/v1/models/mlp128/predict/batch", c.base))
                .json(&json!({
                    "atomic": true,
                    "items": [{"features": vec![0.5f32; 128], "webhook": "https://example.com/h"}]
                })),
        )
        .await;
    assert_eq!(r.error_code(), "invalid_webhook", "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_receiver_is_retried_then_dead_lettered_and_replayed() {
    let env = env("wh-dead");
    let api = env.api(&["--webhook-retry-delays-ms", "200,200"]);
    let c = api.client();
    c.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let (rx, url) = Receiver::start().await;
    rx.set(Mode::Fail);
    let secret = secret(&c).await;
    let mut body = row();
    body["webhook"] = json!(url);
    let id = c.submit("mlp128", &body).await;
    let dead = wait_delivery(&c, &id, "completed", "dead").await;
    assert_eq!(
        dead["attempts"], 3,
        "the first call and two retries: {dead}"
    );
    assert_eq!(dead["last_status_code"], 500, "{dead}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("500"),
        "{dead}"
    );
    let calls = rx.calls();
    assert_eq!(calls.len(), 3);
    let wid = calls[0].header("webhook-id");
    for call in &calls {
        assert_eq!(
            call.header("webhook-id"),
            wid,
            "retries keep the webhook-id"
        );
        assert!(call.verifies_with(&secret));
    }

    let (ok, out) = env.jobctl(&["webhooks", "list", "--json"]);
    assert!(ok, "{out}");
    let listed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["job_id"], id.as_str());
    assert_eq!(listed[0]["webhook_id"], wid.as_str());
    let (ok, out) = env.jobctl(&["webhooks", "replay"]);
    assert!(!ok, "a replay without a selection must fail: {out}");

    rx.set(Mode::Ok);
    let (ok, out) = env.jobctl(&["webhooks", "replay", "--all"]);
    assert!(ok && out.contains("replayed 1"), "{out}");
    let delivered = wait_delivery(&c, &id, "completed", "delivered").await;
    assert_eq!(delivered["attempts"], 1, "tries start again: {delivered}");
    let calls = rx.wait_calls(4, Duration::from_secs(10)).await;
    assert_eq!(
        calls[3].header("webhook-id"),
        wid,
        "a replay keeps the webhook-id"
    );
    let (ok, out) = env.jobctl(&["webhooks", "list", "--json"]);
    assert!(ok && out.trim() == "[]", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_mid_delivery_loses_no_call() {
    let env = env("wh-kill");
    let (rx, url) = Receiver::start().await;
    rx.set(Mode::Stall);
    // A timeout of 1 s: a stalled call is taken over 7 s after it started.
    let mut first = env.api(&["--webhook-timeout-ms", "1000"]);
    let c = first.client();
    c.wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    let secret = secret(&c).await;
    let mut body = row();
    body["webhook"] = json!(url);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(c.submit("mlp128", &body).await);
    }
    for id in &ids {
        c.wait_terminal(id, Duration::from_secs(30)).await;
    }
    // Some calls are in flight, stalled: kill the only dispatcher.
    rx.wait_calls(1, Duration::from_secs(10)).await;
    first.proc.signal("KILL");
    first.proc.wait_exit(Duration::from_secs(10));
    rx.set(Mode::Ok);

    let second = env.api(&[]);
    let c = second.client();
    for id in &ids {
        wait_delivery(&c, id, "completed", "delivered").await;
    }
    let delivered: Vec<Received> = rx
        .calls()
        .into_iter()
        .filter(|r| r.verifies_with(&secret))
        .collect();
    for id in &ids {
        assert!(
            delivered
                .iter()
                .any(|r| r.json()["data"]["job_id"] == id.as_str()),
            "no call for {id}"
        );
    }
}
