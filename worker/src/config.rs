//! Worker configuration: flags with environment fallbacks.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "worker",
    about = "Consumes inference jobs from Redis Streams and runs them in ONNX Runtime"
)]
pub struct Config {
    /// Redis to consume from.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Directory whose `*.onnx` files are served, each under its file stem.
    #[arg(long, env = "MODELS_DIR", default_value = "./models")]
    pub models_dir: PathBuf,

    /// Prefix of every Redis key; must match the API's.
    #[arg(long, env = "QUEUE_NAMESPACE", default_value = "infer")]
    pub namespace: String,

    /// Path of libonnxruntime.so. Default: .local/onnxruntime/libonnxruntime.so
    /// (where scripts/setup puts it), then /usr/local/lib/libonnxruntime.so.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,

    /// Independent read→infer→write loops in this process. Two keep the CPU
    /// busy while one loop waits on Redis.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 2)]
    pub concurrency: usize,

    /// Maximum stream entries fetched per model stream in one read.
    #[arg(long, env = "READ_COUNT", default_value_t = 16)]
    pub read_count: usize,

    /// How long one read blocks server-side when the streams are empty.
    #[arg(long, env = "BLOCK_MS", default_value_t = 2000)]
    pub block_ms: u64,

    /// ONNX Runtime intra-op threads per session.
    #[arg(long, env = "ORT_INTRA_THREADS", default_value_t = 1)]
    pub intra_threads: usize,

    /// How long a finished job's record and result stay readable.
    #[arg(long, env = "RESULT_TTL_SECS", default_value_t = 86_400)]
    pub result_ttl_secs: u64,

    /// Redis connect and response time limit for non-blocking commands.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,

    /// How often model signatures are re-published (they also act as a
    /// heartbeat and survive a Redis that lost its data).
    #[arg(long, env = "PUBLISH_INTERVAL_SECS", default_value_t = 15)]
    pub publish_interval_secs: u64,

    /// Log format: `json` or `pretty`.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
}
