//! The `api` binary as a harness sees it: the `LISTENING` line, the log line
//! with the bound address, and a graceful SIGTERM that ends long-polls.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{RedisServer, features_body, mlp};
use shared::Keys;
use shared::queue::consume;

struct Api {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Api {
    fn next_line(&self, deadline: Instant) -> Option<String> {
        self.lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    }
}

/// One HTTP/1.1 exchange on a fresh connection; returns status and body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let status = raw[9..12].parse().expect("status code");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn binary_announces_its_port_serves_and_stops_on_sigterm() {
    let redis = RedisServer::start();
    let ns = format!("b{}", uuid::Uuid::now_v7().simple());
    let mut child = Command::new(env!("CARGO_BIN_EXE_api"))
        .args(["--listen", "127.0.0.1:0", "--redis-url", &redis.url()])
        .args(["--namespace", &ns, "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn api");
    // stdout carries the LISTENING line, stderr the logs: read both.
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let readers: [Box<dyn Read + Send>; 2] = [Box::new(stdout), Box::new(stderr)];
    for stream in readers {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let api = Api { child, lines };

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let addr = loop {
        let line = api
            .next_line(deadline)
            .unwrap_or_else(|| panic!("no LISTENING line; got {seen:#?}"));
        if let Some(addr) = line.strip_prefix("LISTENING ") {
            break addr.to_owned();
        }
        seen.push(line);
    };
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let is_listen_log = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
            v["fields"]["message"] == format!("listening on {addr}") && v["fields"]["addr"] == addr
        })
    };
    // The log line travels on stderr, the LISTENING line on stdout: either
    // may reach the channel first.
    let mut logged = seen.iter().any(|l| is_listen_log(l));
    while !logged {
        let Some(line) = api.next_line(deadline) else {
            break;
        };
        logged = is_listen_log(&line);
        seen.push(line);
    }
    assert!(logged, "no 'listening on' log line with addr: {seen:#?}");

    let (status, body) = http(&addr, "GET", "/healthz", "");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = http(&addr, "GET", "/nope", "");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains(r#""code":"not_found""#), "{body}");

    // A long-poll in flight when SIGTERM arrives answers at once.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    consume::publish_model(&mut conn, &Keys::new(&ns), &mlp("m", 2))
        .await
        .unwrap();
    let (status, body) = http(&addr, "POST", "/v1/models/m/predict", &features_body(2));
    assert_eq!(status, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let url = format!("{}?wait=30", v["status_url"].as_str().unwrap());
    let poll_addr = addr.clone();
    let poll = std::thread::spawn(move || http(&poll_addr, "GET", &url, ""));
    std::thread::sleep(Duration::from_millis(300));

    let t = Instant::now();
    let pid = api.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (status, body) = poll.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"queued""#), "{body}");
    let mut api = api;
    let exit = loop {
        if let Some(st) = api.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}
