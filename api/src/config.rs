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

    #[command(flatten)]
    pub queue: shared::queue_args::QueueArgs,

    #[command(flatten)]
    pub webhooks: crate::webhooks::WebhookArgs,

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

    /// Most items one bulk submit (`POST /v1/models/{model}/predict/batch`)
    /// may carry; its body is bounded by `--max-body-bytes` as well.
    #[arg(long, env = "MAX_BULK", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_bulk: u32,

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

    /// Longest event stream (`GET /v1/jobs/{id}/events`), in seconds: then
    /// it closes and the client resumes with `Last-Event-ID`, so a stream
    /// cannot hold its long-poll slot for ever.
    #[arg(long, env = "MAX_STREAM_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_stream_secs: u64,

    /// Jobs one WebSocket session (`/v1/ws`) may have in flight (submitted,
    /// not yet pushed back): a predict past it is refused with
    /// `in_flight_limit` until a result has been pushed.
    #[arg(long, env = "WS_MAX_IN_FLIGHT", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub ws_max_in_flight: u32,

    /// A WebSocket session with no job in flight and no message from the
    /// client for this many seconds is closed (its long-poll slot freed).
    #[arg(long, env = "WS_IDLE_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_idle_secs: u64,

    /// Tenant policies (YAML): quotas, shares of the request pools, rate
    /// limits; re-read on SIGHUP. Unset: the built-in defaults for every
    /// tenant (see the README's Security model).
    #[arg(long, env = "TENANTS_FILE")]
    pub tenants_file: Option<std::path::PathBuf>,

    /// After SIGTERM, how long in-flight requests may take before the
    /// process exits anyway, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Operator listener (e.g. `127.0.0.1:9091`): serves `/metrics` with
    /// every tenant's series, `/readyz` with per-model worker detail, and
    /// `/healthz`. Unset: no operator listener, and the public listener's
    /// `/metrics` and `/readyz` leave tenants' model names out.
    #[arg(long, env = "OPS_LISTEN")]
    pub ops_listen: Option<String>,

    /// A connection must deliver a complete request head within this many
    /// ms: from accept for its first request, from the first byte for each
    /// later one. 10 s covers a head (at most 32 KiB) over any working link;
    /// a slowloris client is cut off after it.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,

    /// A kept-alive connection with no request in progress is closed after
    /// this many seconds without the first byte of a next request. 75 s
    /// outlasts the usual 60 s idle timeout of load balancers and proxy
    /// pools, so they, not we, close pooled connections first (the other
    /// way round races their next request against our close).
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 75,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,

    /// A request body that delivers no byte for this many ms is cut off
    /// with 408 `request_timeout`. 10 s: longer than any pause of a working
    /// upload, short enough that a stalled one gives its slot back quickly.
    #[arg(long, env = "BODY_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_ms: u64,

    /// Slowest accepted request body, in bytes per second, after
    /// `--body-rate-grace-secs`: a body must keep ahead of a line rising
    /// at this rate from the end of the grace period, or it is cut off with
    /// 408 `request_timeout`. 32 KiB/s (256 kbit/s) is below any link that
    /// uploads models (64 MiB: 34 min at this rate) yet makes holding a
    /// request slot cost real bandwidth. 0 turns the rate rule off.
    #[arg(long, env = "MIN_BODY_BYTES_PER_SEC", default_value_t = 32 * 1024)]
    pub min_body_bytes_per_sec: u64,

    /// Seconds a request body may take before `--min-body-bytes-per-sec`
    /// applies (TCP slow start, a client preparing its data): 5 s.
    #[arg(long, env = "BODY_RATE_GRACE_SECS", default_value_t = 5)]
    pub body_rate_grace_secs: u64,

    /// Open connections on the public listener at most. The file-descriptor
    /// budget (RLIMIT_NOFILE minus a reserve) can lower it; the figures are
    /// logged at start. 4096 idle connections cost tens of MiB; past the
    /// cap a connection is refused, except for a small reserve that serves
    /// health probes and metrics one request each.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Open connections from one client address at most; 0: no per-address
    /// cap. Default 1024, as many as `--max-concurrent-requests` by
    /// default: one reverse proxy can still use every request slot, but one
    /// address cannot take the whole connection table. Behind a proxy all
    /// clients share its address: size this for the proxy.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 1024)]
    pub max_connections_per_ip: u64,

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

/// What one request may ask for: how long it may wait and how large its
/// body and its training work may be. Handlers take it as their
/// `State<RequestLimits>`.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Longest long-poll (`?wait=`).
    pub max_wait: Duration,
    /// Largest accepted JSON request body.
    pub max_body_bytes: usize,
    /// Largest accepted model upload.
    pub max_model_bytes: usize,
    /// Largest accepted dataset upload.
    pub max_dataset_bytes: usize,
    /// Most epochs x rows x features a retrain job may ask for.
    pub max_train_work: u64,
    /// Most items of one bulk submit.
    pub max_bulk: usize,
    /// Longest event stream.
    pub max_stream: Duration,
    /// Jobs in flight per WebSocket session.
    pub ws_max_in_flight: usize,
    /// A quiet WebSocket session's life.
    pub ws_idle: Duration,
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

    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            max_wait: self.max_wait(),
            max_body_bytes: self.max_body_bytes,
            max_model_bytes: self.max_model_bytes,
            max_dataset_bytes: self.max_dataset_bytes,
            max_train_work: self.max_train_work,
            max_bulk: self.max_bulk as usize,
            max_stream: Duration::from_secs(self.max_stream_secs),
            ws_max_in_flight: self.ws_max_in_flight as usize,
            ws_idle: Duration::from_secs(self.ws_idle_secs),
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The request-body rules of [`crate::body_deadline`].
    pub fn body_rules(&self) -> crate::body_deadline::BodyRules {
        crate::body_deadline::BodyRules {
            stall: Duration::from_millis(self.body_timeout_ms),
            min_bytes_per_sec: self.min_body_bytes_per_sec,
            grace: Duration::from_secs(self.body_rate_grace_secs),
        }
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
        assert_eq!(c.max_bulk, 1000);
        assert_eq!(c.max_queue_depth, 100_000);
        assert_eq!(c.max_concurrent_requests, 1024);
        assert!(Config::try_parse_from(["api", "--max-concurrent-requests", "0"]).is_err());
        let c = Config::try_parse_from(["api", "--max-queue-depth", "0"]).expect("valid flags");
        assert_eq!(c.max_queue_depth, 0);
    }

    #[test]
    fn edge_defaults_and_their_bounds() {
        let c = Config::try_parse_from(["api"]).expect("valid flags");
        assert_eq!(c.ops_listen, None);
        assert_eq!(c.header_read_timeout(), Duration::from_secs(10));
        assert_eq!(c.idle_timeout(), Duration::from_secs(75));
        let rules = c.body_rules();
        assert_eq!(rules.stall, Duration::from_secs(10));
        assert_eq!(rules.min_bytes_per_sec, 32 * 1024);
        assert_eq!(rules.grace, Duration::from_secs(5));
        assert_eq!(c.max_connections, 4096);
        assert_eq!(c.max_connections_per_ip, 1024);
        for zero in [
            "--header-read-timeout-ms",
            "--idle-timeout-secs",
            "--body-timeout-ms",
            "--max-connections",
        ] {
            assert!(
                Config::try_parse_from(["api", zero, "0"]).is_err(),
                "{zero} 0"
            );
        }
        let c = Config::try_parse_from(["api", "--max-connections-per-ip", "0"]).expect("0 = off");
        assert_eq!(c.max_connections_per_ip, 0);
    }
}
