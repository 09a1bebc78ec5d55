//! The processes under test as handles: an [`Api`] on a free port (its
//! listeners read from its stdout) and a [`Worker`] serving a models
//! directory, with what failure tests read from a worker's log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::client::Client;
use crate::paths::{ort_lib, repo_root};
use crate::process::{Proc, spawn, spawn_via, wait_until};

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

    /// Starts the API through `launcher`, a command that ends by exec-ing
    /// the binary (`prlimit ... --`, `valgrind --tool=callgrind`), so the
    /// pid is the API's.
    pub fn spawn_via(
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
            // A profiled API (valgrind) starts tens of times slower.
            .recv_timeout(Duration::from_secs(if launcher.is_some() {
                120
            } else {
                30
            }))
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

    /// Like [`Worker::spawn`], started through `launcher` (see
    /// [`Api::spawn_via`]).
    pub fn spawn_via(
        redis_url: &str,
        namespace: &str,
        extra: &[&str],
        launcher: &[String],
    ) -> Worker {
        let args = worker_args(redis_url, namespace, &repo_root().join("models"), extra);
        Worker {
            proc: spawn_via("worker", Some(launcher), &args, Stdio::null()),
        }
    }

    pub fn spawn_with_models(
        redis_url: &str,
        namespace: &str,
        models_dir: &Path,
        extra: &[&str],
    ) -> Worker {
        let args = worker_args(redis_url, namespace, models_dir, extra);
        Worker {
            proc: spawn("worker", &args, Stdio::null()),
        }
    }

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

fn worker_args(redis_url: &str, namespace: &str, models_dir: &Path, extra: &[&str]) -> Vec<String> {
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
    args
}
