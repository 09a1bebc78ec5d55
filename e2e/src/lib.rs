//! Test harness for the whole system: a real `redis-server` on a free loopback
//! port, the real `api` and `worker` binaries as child processes, an HTTP
//! client speaking to the API the way a user does, and the reference fixtures
//! written by `scripts/gen-models` (Python onnxruntime).
//!
//! Everything binds to 127.0.0.1 and every process is killed when its handle
//! drops, so a failing test leaves nothing behind. Child logs go to
//! `target/e2e-logs/`, named after the process and its port or pid.
//!
//! The pieces, all re-exported here: where the binaries and logs are
//! (`paths`), child processes (`process`, [`Proc`]), the [`Api`] and
//! [`Worker`] handles (`handles`), the HTTP [`Client`] (`client`), model
//! fixtures (`fixtures`), the Redis servers ([`redis_server`],
//! [`cluster`], [`topology`]), and the clients of the push routes, SSE and
//! WebSocket ([`push`]).

pub mod cluster;
pub mod keyed_load;
pub mod onnx_build;
pub mod procfs;
pub mod prom;
pub mod push;
pub mod redis_server;
pub mod tenancy;
pub mod topology;

mod client;
mod fixtures;
mod handles;
mod paths;
mod process;

use std::sync::atomic::{AtomicU64, Ordering};

pub use client::{Client, Reply};
pub use cluster::RedisCluster;
pub use fixtures::{Case, Fixture, ModelsDir, assert_outputs_match};
pub use handles::{Api, Worker};
pub(crate) use paths::log_dir;
pub use paths::{binary, ort_lib, repo_root};
pub(crate) use process::wait_until;
pub use process::{Proc, free_port};
pub use redis_server::RedisServer;
pub use reqwest::StatusCode;

/// A namespace no other test uses, so tests can share one Redis.
pub fn unique_namespace(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
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
