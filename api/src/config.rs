//! Command-line and environment configuration of the API process.
//!
//! Every flag has an environment fallback so the same binary runs unchanged
//! from a shell, a container or a test harness.

use std::time::Duration;

use clap::{Parser, ValueEnum};

/// `api`: accepts inference jobs over HTTP and queues them in Redis.
#[derive(Debug, Clone, Parser)]
#[command(name = "api", version, about)]
pub struct Config {
    /// Redis holding the queue, job records and model signatures.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Address to listen on; port 0 picks a free port (logged and printed).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: String,

    /// Prefix of every Redis key; must match the workers'.
    #[arg(long, env = "QUEUE_NAMESPACE", default_value = "infer")]
    pub namespace: String,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest accepted model upload (`POST /v1/models/{model}/versions`),
    /// in bytes; only that route takes bodies over `--max-body-bytes`.
    #[arg(long, env = "MAX_MODEL_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_model_bytes: usize,

    /// Largest accepted dataset upload (`PUT /v1/datasets/{name}`), in
    /// bytes; datasets are stored in Redis, so this bounds their memory.
    #[arg(long, env = "MAX_DATASET_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_dataset_bytes: usize,

    /// Most epochs x rows x features a retrain job may ask for; set it to
    /// the workers' `--max-train-work`. The API refuses what it can tell
    /// is over it (422 `training_budget_exceeded`); the workers check again.
    #[arg(long, env = "MAX_TRAIN_WORK", default_value_t = 30_000_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_train_work: u64,

    /// Upper bound for the `?wait=` long-poll of `GET /v1/jobs/{id}`, in seconds.
    #[arg(long, env = "MAX_WAIT_SECS", default_value_t = 30)]
    pub max_wait_secs: u64,

    /// Time limit for connecting to Redis and for each Redis reply, in ms.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,

    /// How long an `Idempotency-Key` is remembered, in seconds. Set it to the
    /// workers' `--result-ttl-secs`: a retry within that time gets the
    /// original job (and its result) back.
    #[arg(long, env = "RESULT_TTL_SECS", default_value_t = 86_400)]
    pub result_ttl_secs: u64,

    /// How long a canceled job stays readable, in seconds.
    #[arg(long, env = "CANCELED_TTL_SECS", default_value_t = 86_400)]
    pub canceled_ttl_secs: u64,

    /// Per-model queue bound: unfinished entries (undelivered plus in
    /// progress) at which submissions get 429; 0 means unbounded.
    #[arg(long, env = "MAX_QUEUE_DEPTH", default_value_t = 100_000)]
    pub max_queue_depth: u64,

    /// Requests handled at once; past it requests get 503 `overloaded` at
    /// once (health, readiness and metrics are never refused).
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,

    /// Waiting polls (`GET /v1/jobs/{id}?wait=N`) held at once, in a pool
    /// of their own: they cost no CPU while they wait, so they must not take
    /// the request slots submissions need. Past it: 503 `overloaded`.
    #[arg(long, env = "MAX_LONG_POLLS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_long_polls: u32,

    /// Tenant policies (YAML): quotas, shares of the request pools, rate
    /// limits; re-read on SIGHUP. Unset: the built-in defaults for every
    /// tenant (see the README's Security model).
    #[arg(long, env = "TENANTS_FILE")]
    pub tenants_file: Option<std::path::PathBuf>,

    /// After SIGTERM, how long in-flight requests may take before the
    /// process exits anyway, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Tenants' API keys: lines of `<tenant> <sha256 hex of the key>`;
    /// re-read on SIGHUP. Unset: no keys, every request belongs to the
    /// tenant `default`.
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,

    /// Log output format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// OTLP/HTTP base URL (e.g. `http://127.0.0.1:4318`) to export job
    /// traces to; `/v1/traces` is appended. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Pretty => "pretty",
        }
    }
}

impl Config {
    /// Limits for pooled request traffic: an outage becomes a quick 503.
    pub fn redis_limits(&self) -> shared::redis_conn::Limits {
        let t = Duration::from_millis(self.redis_timeout_ms.max(1));
        shared::redis_conn::Limits {
            connect: t,
            response: t,
        }
    }

    pub fn max_wait(&self) -> Duration {
        Duration::from_secs(self.max_wait_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::try_parse_from(["api", "--namespace", "t1", "--log-format", "json"])
            .expect("valid flags");
        assert_eq!(c.namespace, "t1");
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(Config::try_parse_from(["api", "--log-format", "xml"]).is_err());
        assert!(Config::try_parse_from(["api", "--max-body-bytes", "-1"]).is_err());
        assert_eq!(c.result_ttl_secs, 86_400);
        assert_eq!(c.canceled_ttl_secs, 86_400);
        assert_eq!(c.max_queue_depth, 100_000);
        assert_eq!(c.max_concurrent_requests, 1024);
        assert!(Config::try_parse_from(["api", "--max-concurrent-requests", "0"]).is_err());
        let c = Config::try_parse_from(["api", "--max-queue-depth", "0"]).expect("valid flags");
        assert_eq!(c.max_queue_depth, 0);
    }
}
