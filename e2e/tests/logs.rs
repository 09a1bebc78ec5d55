//! A job's logs and trace across processes: the JSON log lines of the API
//! and of the worker about one job all carry its `job_id` (and `model`,
//! `attempt`), the worker's span continues the `traceparent` the client sent,
//! and with `--otlp-endpoint` both processes export the job's spans over
//! OTLP/HTTP to one trace with the right parents.
//!
//! The processes are started here rather than through the harness's
//! `Api`/`Worker`, because these tests need their own environment
//! (`RUST_LOG` at debug for our crates, a short OTLP batch delay).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Client, RedisServer, StatusCode, binary, ort_lib, repo_root, unique_namespace};
use serde_json::{Value, json};

/// The client's trace: W3C's example trace id and parent span id.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const RUST_LOG: &str = "info,ort=warn,api=debug,worker=debug";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{CLIENT_SPAN}-01")
}

/// A child process with JSON logs to a file, killed on drop.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, args: &[String], env: &[(&str, &str)]) -> Process {
        let dir = repo_root().join("target").join("e2e-logs");
        let _ = std::fs::create_dir_all(&dir);
        let log = dir.join(format!(
            "logs-{name}-{}-{}.log",
            std::process::id(),
            unique_namespace("p")
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary(name))
            .args(args)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", RUST_LOG)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process { child, log }
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct System {
    _redis: RedisServer,
    api: Process,
    worker: Process,
    client: Client,
}

async fn system(otlp: Option<&str>) -> System {
    let redis = RedisServer::start();
    let ns = unique_namespace("logs");
    let mut common = vec![
        "--redis-url".to_owned(),
        redis.url(),
        "--namespace".to_owned(),
        ns,
    ];
    if let Some(endpoint) = otlp {
        common.extend(["--otlp-endpoint".to_owned(), endpoint.to_owned()]);
    }
    // Export every 100 ms instead of every 5 s.
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let mut api_args = common.clone();
    api_args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let mut api = Process::spawn("api", &api_args, &env);
    let mut worker_args = common;
    worker_args.extend([
        "--models-dir".to_owned(),
        repo_root().join("models").display().to_string(),
        "--ort-lib".to_owned(),
        ort_lib().display().to_string(),
    ]);
    let worker = Process::spawn("worker", &worker_args, &env);

    let stdout = api.child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("LISTENING ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("api did not listen; log in {}", api.log.display()));
    let client = Client::new(&format!("http://{addr}"));
    client
        .wait_for_models(&["mlp128"], Duration::from_secs(30))
        .await;
    System {
        _redis: redis,
        api,
        worker,
        client,
    }
}

/// A body whose values are easy to spot if a payload ever reached a log.
fn body() -> Value {
    let features: Vec<f64> = (0..128)
        .map(|i| 0.987_654_321 - f64::from(i) * 1e-3)
        .collect();
    json!({ "features": features })
}

async fn submit(client: &Client, headers: &[(&str, &str)]) -> String {
    let mut req = client
        .http
        .post(format!("{}/v1/models/mlp128/predict", client.base))
        .json(&body());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = client.send(req).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    r.json["job_id"].as_str().expect("job_id").to_owned()
}

/// A field of a log line, from the event itself or the span it was logged in.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line["fields"]
        .get(name)
        .or_else(|| line["span"].get(name))
        .filter(|v| !v.is_null())
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

/// Every line that mentions the job anywhere, after asserting that each of
/// them names it as its `job_id`: no line about a job is attributed to
/// another one or to none.
fn lines_about(lines: &[Value], job_id: &str, who: &str) -> Vec<Value> {
    let about: Vec<Value> = lines
        .iter()
        .filter(|l| l.to_string().contains(job_id))
        .cloned()
        .collect();
    for l in &about {
        assert_eq!(
            field(l, "job_id").and_then(Value::as_str),
            Some(job_id),
            "{who} line about job {job_id} without it as job_id: {l}"
        );
    }
    about
}

/// Waits until the process has logged a line about `job_id` whose message
/// starts with `msg`; returns all its lines.
fn wait_for_line(proc: &Process, job_id: &str, msg: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = proc.lines();
        if lines
            .iter()
            .any(|l| message(l).starts_with(msg) && l.to_string().contains(job_id))
        {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no {msg:?} line for job {job_id} in {}",
            proc.log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_log_lines_share_its_job_id_and_the_worker_continues_its_trace() {
    let sys = system(None).await;
    let client = &sys.client;

    // A job with the client's traceparent.
    let id = submit(client, &[("traceparent", &traceparent())]).await;
    let job = client.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["trace_id"], TRACE_ID, "{job}");
    let stored = job["traceparent"].as_str().expect("traceparent in the job");
    let parts: Vec<&str> = stored.split('-').collect();
    assert_eq!(parts.len(), 4, "{stored}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE_ID, "01"));
    let api_span = parts[2];
    assert!(api_span.len() == 16 && api_span != CLIENT_SPAN && api_span != "0".repeat(16));

    // API side: the submit line, in the submit span.
    let api_lines = wait_for_line(&sys.api, &id, "job queued");
    let about = lines_about(&api_lines, &id, "api");
    let queued = about
        .iter()
        .find(|l| message(l) == "job queued")
        .expect("job queued line");
    assert_eq!(field(queued, "model"), Some(&json!("mlp128")), "{queued}");
    assert_eq!(field(queued, "attempt"), Some(&json!(0)), "{queued}");
    assert_eq!(
        field(queued, "trace_id"),
        Some(&json!(TRACE_ID)),
        "{queued}"
    );

    // Worker side: every line about the job is in its span, with the model,
    // the attempt and the trace continued from the API's span.
    let worker_lines = wait_for_line(&sys.worker, &id, "job finished");
    let about = lines_about(&worker_lines, &id, "worker");
    let messages: Vec<&str> = about.iter().map(message).collect();
    assert!(messages.contains(&"inference done"), "{messages:?}");
    assert!(messages.contains(&"job finished"), "{messages:?}");
    for l in &about {
        assert_eq!(l["span"]["name"], "job", "{l}");
        assert_eq!(field(l, "model"), Some(&json!("mlp128")), "{l}");
        assert_eq!(field(l, "attempt"), Some(&json!(1)), "{l}");
        assert_eq!(l["span"]["trace_id"], TRACE_ID, "{l}");
        assert_eq!(l["span"]["parent_span_id"], api_span, "{l}");
    }
    // At most one info line per job and process: the hot path logs at debug.
    let info = |lines: &[Value]| {
        lines_about(lines, &id, "")
            .iter()
            .filter(|l| l["level"] == "INFO")
            .count()
    };
    assert_eq!(info(&sys.worker.lines()), 1);
    assert!(info(&sys.api.lines()) <= 1);

    // Without a traceparent, or with an invalid one (uppercase hex), the API
    // starts a trace of its own; the invalid header is no error.
    for headers in [
        vec![],
        vec![(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        )],
    ] {
        let id = submit(client, &headers).await;
        let job = client.wait_terminal(&id, Duration::from_secs(30)).await;
        let trace = job["trace_id"].as_str().expect("a trace id for every job");
        assert!(
            trace.len() == 32
                && trace
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                && trace != "0".repeat(32)
                && trace != TRACE_ID,
            "{job}"
        );
        let lines = wait_for_line(&sys.worker, &id, "job finished");
        for l in lines_about(&lines, &id, "worker") {
            assert_eq!(l["span"]["trace_id"], trace, "{l}");
        }
    }

    // A canceled job: the API's cancel line and the worker's discard line.
    // The worker is stopped so the job is still queued when canceled.
    sys.worker.signal("STOP");
    let canceled = submit(client, &[("idempotency-key", "secret-key-6f1c")]).await;
    let r = client.cancel(&canceled).await;
    sys.worker.signal("CONT");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let api_lines = wait_for_line(&sys.api, &canceled, "job canceled");
    let line = lines_about(&api_lines, &canceled, "api")
        .into_iter()
        .find(|l| message(l) == "job canceled")
        .expect("job canceled line");
    assert_eq!(field(&line, "model"), Some(&json!("mlp128")), "{line}");
    assert_eq!(field(&line, "attempt"), Some(&json!(0)), "{line}");
    assert!(field(&line, "trace_id").is_some(), "{line}");
    let worker_lines = wait_for_line(&sys.worker, &canceled, "not running job");
    for l in lines_about(&worker_lines, &canceled, "worker") {
        assert_eq!(l["span"]["name"], "job", "{l}");
        assert_eq!(field(&l, "model"), Some(&json!("mlp128")), "{l}");
    }

    // No payloads and no idempotency keys in any log.
    for proc in [&sys.api, &sys.worker] {
        let text = std::fs::read_to_string(&proc.log).unwrap_or_default();
        assert!(!text.contains("0.987654"), "a payload value was logged");
        assert!(
            !text.contains("secret-key-6f1c"),
            "an idempotency key was logged"
        );
    }
}

// ------------------------------------------------------------------ OTLP

/// What an OTLP/HTTP collector received: (path, content type, body).
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP collector on 127.0.0.1: answers every POST with 200
/// and keeps the request.
fn collector() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received: Received = Arc::default();
    let sink = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || serve_http(stream, &sink));
        }
    });
    (format!("http://{addr}"), received)
}

/// HTTP/1.1 with keep-alive: requests with a Content-Length body.
fn serve_http(stream: TcpStream, sink: &Received) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let ct = headers.get("content-type").cloned().unwrap_or_default();
        sink.lock().expect("sink").push((path, ct, body));
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Just enough protobuf to read OTLP spans: the fields of one message.
fn proto_fields(mut buf: &[u8]) -> Vec<(u64, &[u8])> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let Some(key) = varint(&mut buf) else { break };
        let (field, wire) = (key >> 3, key & 7);
        let len = match wire {
            0 => {
                let start = buf;
                let Some(_) = varint(&mut buf) else { break };
                out.push((field, &start[..start.len() - buf.len()]));
                continue;
            }
            1 => 8,
            2 => match varint(&mut buf) {
                Some(n) => n as usize,
                None => break,
            },
            5 => 4,
            _ => break,
        };
        if len > buf.len() {
            break;
        }
        out.push((field, &buf[..len]));
        buf = &buf[len..];
    }
    out
}

fn sub(fields: &[(u64, &[u8])], n: u64) -> Vec<Vec<u8>> {
    fields
        .iter()
        .filter(|(f, _)| *f == n)
        .map(|(_, b)| b.to_vec())
        .collect()
}

#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every span of an `ExportTraceServiceRequest`.
fn spans_of(body: &[u8]) -> Vec<ExportedSpan> {
    let mut out = Vec::new();
    for rs in sub(&proto_fields(body), 1) {
        let rs_fields = proto_fields(&rs);
        let mut service = String::new();
        for resource in sub(&rs_fields, 1) {
            for kv in sub(&proto_fields(&resource), 1) {
                let kv = proto_fields(&kv);
                let key = sub(&kv, 1).concat();
                if key == b"service.name" {
                    for any in sub(&kv, 2) {
                        service = String::from_utf8_lossy(&sub(&proto_fields(&any), 1).concat())
                            .into_owned();
                    }
                }
            }
        }
        for ss in sub(&rs_fields, 2) {
            for span in sub(&proto_fields(&ss), 2) {
                let f = proto_fields(&span);
                out.push(ExportedSpan {
                    service: service.clone(),
                    trace_id: hex(&sub(&f, 1).concat()),
                    span_id: hex(&sub(&f, 2).concat()),
                    parent_span_id: hex(&sub(&f, 4).concat()),
                    name: String::from_utf8_lossy(&sub(&f, 5).concat()).into_owned(),
                });
            }
        }
    }
    out
}

/// The spans of the client's trace exported so far, once every one of
/// `wanted` (by name) is among them.
async fn exported(received: &Received, wanted: &[&str]) -> Vec<ExportedSpan> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans: Vec<ExportedSpan> = received
            .lock()
            .expect("sink")
            .iter()
            .inspect(|(path, ct, _)| {
                assert_eq!(path, "/v1/traces");
                assert_eq!(ct, "application/x-protobuf");
            })
            .flat_map(|(_, _, body)| spans_of(body))
            .filter(|s| s.trace_id == TRACE_ID)
            .collect();
        if wanted.iter().all(|w| spans.iter().any(|s| s.name == *w)) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans of trace {TRACE_ID} exported so far: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_shows_submit_queue_wait_inference_and_result_write_in_one_trace() {
    let (endpoint, received) = collector();
    let sys = system(Some(&endpoint)).await;
    let id = submit(&sys.client, &[("traceparent", &traceparent())]).await;
    let job = sys.client.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let api_span = job["traceparent"]
        .as_str()
        .and_then(|t| t.split('-').nth(2))
        .expect("stored traceparent")
        .to_owned();

    let spans = exported(
        &received,
        &["submit", "queue wait", "job", "inference", "write result"],
    )
    .await;
    let one = |name: &str| {
        let found: Vec<&ExportedSpan> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "{name}: {spans:#?}");
        found[0].clone()
    };
    let submit = one("submit");
    assert_eq!(submit.service, "onnx-queue-api");
    // The API's span continues the client's and is the one the job stored.
    assert_eq!(submit.parent_span_id, CLIENT_SPAN);
    assert_eq!(submit.span_id, api_span);
    let job_span = one("job");
    for (name, parent) in [
        ("queue wait", &api_span),
        ("job", &api_span),
        ("inference", &job_span.span_id),
        ("write result", &job_span.span_id),
    ] {
        let s = one(name);
        assert_eq!(s.service, "onnx-queue-worker", "{s:?}");
        assert_eq!(&s.parent_span_id, parent, "{s:?}");
    }
    // The worker's logs name the same trace.
    let lines = wait_for_line(&sys.worker, &id, "job finished");
    for l in lines_about(&lines, &id, "worker") {
        assert_eq!(l["span"]["trace_id"], TRACE_ID, "{l}");
        assert_eq!(l["span"]["parent_span_id"], api_span.as_str(), "{l}");
    }
}

/// A retrain job goes through the same submission as a prediction: the
/// `traceparent` it stores names the API's submit span, which is exported,
/// and the training slot's job span continues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_has_the_submit_span_a_retrain_jobs_traceparent_names() {
    let (endpoint, received) = collector();
    let sys = system(Some(&endpoint)).await;
    // y = 2x + 1: a new model, trained in a blink.
    let rows: Vec<Value> = (0..40)
        .map(|i| {
            let x = f64::from(i) * 0.1;
            json!([x, 2.0 * x + 1.0])
        })
        .collect();
    let body = json!({
        "data": {"columns": ["x", "y"], "rows": rows},
        "params": {"target_column": "y", "task": "regression", "epochs": 20},
    });
    let r = sys
        .client
        .send(
            sys.client
                .http
                .post(format!("{}/v1/models/traced/retrain", sys.client.base))
                .header("traceparent", traceparent())
                .json(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id = r.json["job_id"].as_str().expect("job_id").to_owned();
    let job = sys.client.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "retrain", "{job}");
    let api_span = job["traceparent"]
        .as_str()
        .and_then(|t| t.split('-').nth(2))
        .expect("stored traceparent")
        .to_owned();

    let spans = exported(&received, &["submit", "job"]).await;
    let submit = spans
        .iter()
        .find(|s| s.name == "submit" && s.span_id == api_span)
        .unwrap_or_else(|| panic!("no exported submit span {api_span}: {spans:#?}"));
    assert_eq!(submit.service, "onnx-queue-api");
    assert_eq!(submit.parent_span_id, CLIENT_SPAN);
    let job_span = spans
        .iter()
        .find(|s| s.name == "job")
        .expect("the worker's job span");
    assert_eq!(job_span.service, "onnx-queue-worker", "{job_span:?}");
    assert_eq!(job_span.parent_span_id, api_span, "{job_span:?}");
}
