//! Test harness for the whole system: a real `redis-server` on a free loopback
//! port, the real `api` and `worker` binaries as child processes, an HTTP
//! client speaking to the API the way a user does, and the reference fixtures
//! written by `scripts/gen-models` (Python onnxruntime).
//!
//! Everything binds to 127.0.0.1 and every process is killed when its handle
//! drops, so a failing test leaves nothing behind. Child logs go to
//! `target/e2e-logs/`, named after the process and its port or pid.

pub mod cluster;
pub mod keyed_load;
pub mod onnx_build;
pub mod procfs;
pub mod prom;
pub mod redis_server;
pub mod tenancy;
pub mod topology;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

pub use cluster::RedisCluster;
pub use redis_server::RedisServer;
pub use reqwest::StatusCode;

/// The workspace root (the repository).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A namespace no other test uses, so tests can share one Redis.
pub fn unique_namespace(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn log_dir() -> PathBuf {
    let dir = repo_root().join("target").join("e2e-logs");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ok()
}

// --------------------------------------------------------------- binaries

/// Path of a workspace binary, built (once per test process) with the same
/// profile as the test itself, so a test never runs a stale binary.
pub fn binary(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        // Tests run from target/<profile>/deps/<test>-<hash>, examples from
        // target/<profile>/examples/, binaries (the bench) from target/<profile>/.
        let exe = std::env::current_exe().expect("current exe");
        let parent = exe.parent().expect("executable has a directory");
        let profile_dir = if parent.ends_with("deps") || parent.ends_with("examples") {
            parent.parent().map(Path::to_path_buf)
        } else {
            Some(parent.to_path_buf())
        }
        .expect("executable lives in target/<profile>/{deps,examples,}");
        if std::env::var_os("E2E_NO_BUILD").is_none() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(repo_root()).args([
                "build", "--quiet", "-p", "api", "-p", "worker", "-p", "jobctl",
            ]);
            if profile_dir.ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cannot run cargo build");
            assert!(
                status.success(),
                "building the api, worker and jobctl binaries failed"
            );
        }
        profile_dir
    });
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p {name}`",
        path.display()
    );
    path
}

/// The ONNX Runtime library the tests use: `ORT_DYLIB_PATH`, else the copy
/// `scripts/setup` makes.
pub fn ort_lib() -> PathBuf {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".local/onnxruntime/libonnxruntime.so"));
    assert!(
        path.is_file(),
        "ONNX Runtime library {} missing: run scripts/setup",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Whether the process has exited, with its exit code if it did.
    pub fn try_exit(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.try_exit() {
                return Some(code);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &str, args: &[String], stdout: Stdio) -> Proc {
    spawn_via(name, None, args, stdout)
}

/// Like [`spawn`], with the process started by `launcher` (a command that
/// ends by exec-ing the binary, such as `prlimit --nofile=...`, so the pid
/// is the binary's).
fn spawn_via(name: &str, launcher: Option<&[String]>, args: &[String], stdout: Stdio) -> Proc {
    static N: AtomicU64 = AtomicU64::new(0);
    let log = log_dir().join(format!(
        "{name}-{}-{}.log",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&log).expect("cannot create log file");
    let mut cmd = match launcher {
        Some([program, rest @ ..]) => {
            let mut c = Command::new(program);
            c.args(rest).arg(binary(name));
            c
        }
        _ => Command::new(binary(name)),
    };
    let child = cmd
        .args(args)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc { child, log }
}

/// A running API process.
pub struct Api {
    pub proc: Proc,
    pub base_url: String,
    /// The operator listener, when started with `--ops-listen`.
    pub ops_url: Option<String>,
}

impl Api {
    /// Starts the API on a free port and waits until it listens.
    pub fn spawn(redis_url: &str, namespace: &str, extra: &[&str]) -> Api {
        Api::spawn_via(redis_url, namespace, extra, None)
    }

    /// Starts the API with `RLIMIT_NOFILE` set to `soft`:`hard` (through
    /// util-linux's `prlimit`, which then execs the API).
    pub fn spawn_with_nofile(
        redis_url: &str,
        namespace: &str,
        extra: &[&str],
        soft: u64,
        hard: u64,
    ) -> Api {
        let launcher = [
            "prlimit".to_owned(),
            format!("--nofile={soft}:{hard}"),
            "--".to_owned(),
        ];
        Api::spawn_via(redis_url, namespace, extra, Some(&launcher))
    }

    fn spawn_via(
        redis_url: &str,
        namespace: &str,
        extra: &[&str],
        launcher: Option<&[String]>,
    ) -> Api {
        let mut args: Vec<String> = [
            "--redis-url",
            redis_url,
            "--namespace",
            namespace,
            "--listen",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = spawn_via("api", launcher, &args, Stdio::piped());
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The API prints OPS_LISTENING (if any) before LISTENING.
            let mut ops = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("OPS_LISTENING ") {
                    ops = Some(format!("http://{}", addr.trim()));
                } else if let Some(addr) = line.strip_prefix("LISTENING ") {
                    let _ = tx.send((addr.trim().to_owned(), ops.take()));
                }
            }
        });
        let (addr, ops_url) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("api did not listen; log:\n{}", proc.log_text()));
        Api {
            proc,
            base_url: format!("http://{addr}"),
            ops_url,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.base_url)
    }

    /// A client of the operator listener; the API must run with
    /// `--ops-listen`.
    pub fn ops_client(&self) -> Client {
        Client::new(
            self.ops_url
                .as_deref()
                .expect("the api was started without --ops-listen"),
        )
    }

    /// The `host:port` of the public listener.
    pub fn addr(&self) -> &str {
        self.base_url.trim_start_matches("http://")
    }
}

/// A running worker process serving the repository's `models/`.
pub struct Worker {
    pub proc: Proc,
}

impl Worker {
    pub fn spawn(redis_url: &str, namespace: &str, extra: &[&str]) -> Worker {
        Worker::spawn_with_models(redis_url, namespace, &repo_root().join("models"), extra)
    }

    pub fn spawn_with_models(
        redis_url: &str,
        namespace: &str,
        models_dir: &Path,
        extra: &[&str],
    ) -> Worker {
        let mut args: Vec<String> = vec![
            "--redis-url".into(),
            redis_url.into(),
            "--namespace".into(),
            namespace.into(),
            "--models-dir".into(),
            models_dir.display().to_string(),
        ];
        if !extra.contains(&"--ort-lib") {
            args.extend(["--ort-lib".into(), ort_lib().display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Worker {
            proc: spawn("worker", &args, Stdio::null()),
        }
    }
}

// ------------------------------------------------------------------ HTTP

/// An HTTP response with its body parsed as JSON (or `Value::Null` when the
/// body is not JSON; `text` keeps the raw body).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Reply {
    /// Asserts the documented error shape and returns the code.
    pub fn error_code(&self) -> String {
        let ct = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "error without JSON content type: {ct} {}",
            self.text
        );
        let err = &self.json["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without message: {}",
            self.text
        );
        let keys: Vec<&String> = self
            .json
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            vec!["error"],
            "extra fields in error body: {}",
            self.text
        );
        err["code"]
            .as_str()
            .unwrap_or_else(|| panic!("error without code: {}", self.text))
            .to_owned()
    }
}

/// A client of the HTTP API.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// A client that sends `Authorization: Bearer <key>` with every request.
    pub fn with_api_key(base: &str, key: &str) -> Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).expect("api key"),
        );
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .default_headers(headers)
                .build()
                .expect("http client"),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("http request failed");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// POSTs raw bytes with an optional content type.
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        let mut req = self.http.post(format!("{}{path}", self.base)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        self.send(req).await
    }

    pub async fn predict(&self, model: &str, body: &Value) -> Reply {
        self.send(
            self.http
                .post(format!("{}/v1/models/{model}/predict", self.base))
                .json(body),
        )
        .await
    }

    /// Submits and returns the job id, asserting the 202 contract.
    pub async fn submit(&self, model: &str, body: &Value) -> String {
        let r = self.predict(model, body).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "submit failed: {}", r.text);
        r.json["job_id"]
            .as_str()
            .expect("job_id in 202 body")
            .to_owned()
    }

    pub async fn job(&self, id: &str, wait: Option<f64>) -> Reply {
        let path = match wait {
            Some(w) => format!("/v1/jobs/{id}?wait={w}"),
            None => format!("/v1/jobs/{id}"),
        };
        self.get(&path).await
    }

    /// Long-polls until the job is terminal or `timeout` passes.
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.job(id, Some(5.0)).await;
            assert_eq!(r.status, StatusCode::OK, "job {id}: {}", r.text);
            let status = r.json["status"].as_str().unwrap_or("");
            if matches!(status, "succeeded" | "failed" | "canceled") {
                return r.json;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not terminal after {timeout:?}: {}",
                r.text
            );
        }
    }

    /// Waits until the API lists every named model (workers published them).
    pub async fn wait_for_models(&self, names: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.get("/v1/models").await;
            let listed: Vec<String> = r.json["models"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if names.iter().all(|n| listed.iter().any(|l| l == n)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "models {names:?} not published in time; listed {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// --------------------------------------------------------------- fixtures

/// Reference inputs and outputs computed by Python onnxruntime.
#[derive(Debug, Clone, Deserialize)]
pub struct Fixture {
    pub model: String,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub inputs: Vec<Value>,
    pub outputs: Vec<Value>,
}

impl Fixture {
    pub fn load(model: &str) -> Fixture {
        let path = repo_root()
            .join("models/fixtures")
            .join(format!("{model}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bad fixture {}: {e}", path.display()))
    }
}

/// Asserts that OIP output tensors match the expected ones: same names,
/// shapes and datatypes, numbers within `tol` (absolute).
pub fn assert_outputs_match(actual: &Value, expected: &[Value], tol: f64) {
    let actual = actual
        .as_array()
        .unwrap_or_else(|| panic!("outputs is not an array: {actual}"));
    assert_eq!(actual.len(), expected.len(), "output count: {actual:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert_eq!(a["name"], e["name"]);
        assert_eq!(a["shape"], e["shape"], "shape of {}", e["name"]);
        assert_eq!(a["datatype"], e["datatype"], "datatype of {}", e["name"]);
        let (ad, ed) = (
            a["data"].as_array().expect("data array"),
            e["data"].as_array().expect("data array"),
        );
        assert_eq!(ad.len(), ed.len(), "data length of {}", e["name"]);
        for (i, (x, y)) in ad.iter().zip(ed).enumerate() {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => assert!(
                    (x - y).abs() <= tol,
                    "{}[{i}]: got {x}, expected {y}",
                    e["name"]
                ),
                _ => assert_eq!(x, y, "{}[{i}]", e["name"]),
            }
        }
    }
}

// ------------------------------------------------------ failure-test helpers

impl Worker {
    /// The worker's consumer name, from its "worker starting" log line.
    pub fn consumer_name(&self, timeout: Duration) -> String {
        let mut name = None;
        wait_until(timeout, || {
            name = self.proc.log_text().lines().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v["fields"]["message"] == "worker starting")
                    .then(|| v["fields"]["consumer"].as_str().map(str::to_owned))
                    .flatten()
            });
            name.is_some()
        });
        name.unwrap_or_else(|| panic!("worker did not start; log:\n{}", self.proc.log_text()))
    }

    /// JSON log lines whose message is `message`.
    pub fn log_events(&self, message: &str) -> Vec<Value> {
        self.proc
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }
}

/// A temporary models directory, removed on drop.
pub struct ModelsDir {
    pub path: PathBuf,
}

impl ModelsDir {
    /// Copies `models/<source>` to `<name>.onnx` for each `(name, source)`.
    pub fn with(files: &[(&str, &str)]) -> ModelsDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "e2e-models-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("temp models dir");
        let dir = ModelsDir { path };
        for (name, source) in files {
            dir.put(name, source);
        }
        dir
    }

    /// Writes (or replaces) model `name` with the file `models/<source>`.
    pub fn put(&self, name: &str, source: &str) {
        std::fs::copy(
            repo_root().join("models").join(source),
            self.path.join(format!("{name}.onnx")),
        )
        .unwrap_or_else(|e| panic!("copy {source}: {e}"));
    }
}

impl Drop for ModelsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ------------------------------------------------- reliability additions

impl Client {
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// A predict request with an `Idempotency-Key` header.
    pub async fn predict_with_key(&self, model: &str, body: &Value, key: &str) -> Reply {
        self.send(
            self.http
                .post(format!("{}/v1/models/{model}/predict", self.base))
                .header("idempotency-key", key)
                .json(body),
        )
        .await
    }
}

/// The key layout the binaries under test use in namespace `ns` (one
/// partition, the default), so tests name keys as the code does.
pub fn keys(ns: &str) -> shared::Keys {
    shared::Keys::new(ns)
}

/// The record key of job `id` in namespace `ns`.
pub fn job_key(ns: &str, id: &str) -> String {
    keys(ns).job(&uuid::Uuid::parse_str(id).expect("a job id"))
}
