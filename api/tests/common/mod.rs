//! Test harness: a private `redis-server` per test and helpers to drive the
//! router in-process with `tower::ServiceExt::oneshot`.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::{AppState, Config, Routers};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use clap::Parser;
use http_body_util::BodyExt;
use redis::aio::MultiplexedConnection;
use shared::Keys;
use shared::model::ModelInfo;
use shared::queue::consume;
use shared::tensor::{DataType, TensorSpec};
use tower::ServiceExt;

/// A throwaway redis-server on a free port, killed on drop.
pub(crate) struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub(crate) fn start() -> RedisServer {
        for _ in 0..5 {
            if let Some(s) = RedisServer::try_start(free_port()) {
                return s;
            }
        }
        panic!("cannot start redis-server");
    }

    /// On a given port, e.g. to restart a killed server where clients expect it.
    pub(crate) fn start_on(port: u16) -> RedisServer {
        RedisServer::try_start(port).expect("redis-server starts")
    }

    fn try_start(port: u16) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let mut server = RedisServer {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if ping(port) {
                return Some(server);
            }
            // Exited: most likely the port was taken in the meantime.
            if let Some(c) = server.child.as_mut()
                && c.try_wait().ok().flatten().is_some()
            {
                server.child = None;
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A redis-server, an AppState on a fresh namespace, and the routers of
/// the public and the operator listener.
pub(crate) struct Env {
    pub redis: RedisServer,
    pub state: AppState,
    pub app: Router,
    pub ops: Router,
    pub keys: Keys,
}

impl Env {
    pub(crate) async fn start() -> Env {
        Env::start_with(&[]).await
    }

    pub(crate) async fn start_with(extra_args: &[&str]) -> Env {
        let redis = RedisServer::start();
        let ns = format!("t{}", uuid::Uuid::now_v7().simple());
        let url = redis.url();
        let mut args = vec![
            "api",
            "--redis-url",
            &url,
            "--namespace",
            &ns,
            "--redis-timeout-ms",
            "500",
        ];
        args.extend_from_slice(extra_args);
        let config = Config::try_parse_from(args).expect("valid test flags");
        let state = AppState::new(&config).expect("state");
        assert!(
            state.wait_subscribed(Duration::from_secs(5)).await,
            "listener subscribed"
        );
        let routers = Routers::new(state.clone());
        Env {
            redis,
            app: routers.public,
            ops: routers.ops,
            keys: Keys::new(&ns),
            state,
        }
    }

    pub(crate) async fn conn(&self) -> MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("test connection")
    }

    pub(crate) async fn publish(&self, info: &ModelInfo) {
        consume::publish_model(&mut self.conn().await, &self.keys, info)
            .await
            .expect("publish model");
    }

    pub(crate) async fn send(&self, req: Request<Body>) -> Reply {
        send(&self.app, req).await
    }

    /// Sends to the operator listener's router.
    pub(crate) async fn send_ops(&self, req: Request<Body>) -> Reply {
        send(&self.ops, req).await
    }
}

pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub(crate) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    /// Asserts the documented error shape, `content-type: application/json`
    /// and the given status and code; returns the message.
    pub(crate) fn assert_error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/json"[..]),
            "error content-type"
        );
        let v = self.json();
        let obj = v.as_object().expect("object");
        assert_eq!(obj.len(), 1, "only \"error\": {v}");
        let err = obj["error"].as_object().expect("error object");
        assert_eq!(err.len(), 2, "code and message only: {v}");
        assert_eq!(err["code"], code, "{v}");
        let msg = err["message"].as_str().expect("message string");
        assert!(!msg.is_empty());
        msg.to_owned()
    }
}

pub(crate) async fn send(app: &Router, req: Request<Body>) -> Reply {
    let res = app.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub(crate) fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

pub(crate) fn post_json(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

pub(crate) fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    }
}

pub(crate) fn model(name: &str, inputs: Vec<TensorSpec>) -> ModelInfo {
    ModelInfo {
        name: name.into(),
        version: "0123456789abcdef".into(),
        inputs,
        outputs: vec![spec("prediction", DataType::Fp32, &[-1, 1])],
        updated_at_ms: shared::time::now_ms(),
    }
}

/// `features` FP32 [N, width] → `prediction` FP32 [N, 1], like mlp128.
pub(crate) fn mlp(name: &str, width: i64) -> ModelInfo {
    model(name, vec![spec("features", DataType::Fp32, &[-1, width])])
}

pub(crate) fn two_input() -> ModelInfo {
    model(
        "two_input",
        vec![
            spec("x", DataType::Fp32, &[-1, 4]),
            spec("k", DataType::Int64, &[-1, 1]),
        ],
    )
}

pub(crate) fn features_body(n: usize) -> String {
    let row: Vec<String> = (0..n).map(|i| format!("{}", i as f32 / 10.0)).collect();
    format!(r#"{{"features":[{}]}}"#, row.join(","))
}

/// A file removed when dropped (keys files, tenants files).
pub(crate) struct TempFile(pub std::path::PathBuf);

impl TempFile {
    pub(crate) fn new(prefix: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::write(&path, contents).expect("temp file");
        TempFile(path)
    }

    /// A keys file giving each `(tenant, key)` its key.
    pub(crate) fn keys(tenants: &[(&str, &str)]) -> TempFile {
        use sha2::Digest;
        let lines: Vec<String> = tenants
            .iter()
            .map(|(t, k)| format!("{t} {}", hex::encode(sha2::Sha256::digest(k.as_bytes()))))
            .collect();
        TempFile::new("api-keys", &(lines.join("\n") + "\n"))
    }

    pub(crate) fn rewrite(&self, contents: &str) {
        std::fs::write(&self.0, contents).expect("rewrite temp file");
    }

    pub(crate) fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `req` as the tenant holding `key`.
pub(crate) fn as_tenant(mut req: Request<Body>, key: &str) -> Request<Body> {
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    req
}
