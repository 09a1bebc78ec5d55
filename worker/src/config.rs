//! Worker configuration: flags with environment fallbacks. A value out of
//! its range is refused when the flags are parsed, and one that contradicts
//! another by [`Config::validate`], both before the worker starts: nothing
//! is adjusted silently.

use std::path::PathBuf;

use clap::Parser;
use clap::builder::RangedU64ValueParser;

/// Flags whose values contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--retry-max-ms ({max}) must not be below --retry-base-ms ({base})")]
    RetryMaxBelowBase { base: u64, max: u64 },
}

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

    /// Where loaded model versions are cached on disk, by SHA-256, so a
    /// restart or a rollback does not fetch the bytes from Redis again.
    /// Default: `<temp dir>/onnx-queue-model-cache`.
    #[arg(long, env = "MODEL_CACHE_DIR")]
    pub model_cache_dir: Option<PathBuf>,

    /// Prefix of every Redis key; must match the API's.
    #[arg(long, env = "QUEUE_NAMESPACE", default_value = "infer")]
    pub namespace: String,

    #[command(flatten)]
    pub queue: shared::queue_args::QueueArgs,

    /// Path of libonnxruntime.so. Default: .local/onnxruntime/libonnxruntime.so
    /// (where scripts/setup puts it), then /usr/local/lib/libonnxruntime.so.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,

    /// Independent read→infer→write loops in this process (at least 1). Two
    /// keep the CPU busy while one loop waits on Redis.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 2,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub concurrency: usize,

    /// Most jobs fetched per model stream in one read, and most rows stacked
    /// into one ONNX Runtime run (dynamic batching); 1 turns batching off.
    #[arg(
        long = "max-batch",
        alias = "read-count",
        env = "MAX_BATCH",
        default_value_t = 16,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_batch: usize,

    /// After a read that returned fewer than `--max-batch` jobs, wait at most
    /// this long for more before running the batch (0: run at once).
    #[arg(long, env = "MAX_BATCH_DELAY_MS", default_value_t = 0)]
    pub max_batch_delay_ms: u64,

    /// How long one read blocks server-side when the streams are empty
    /// (at least 1: Redis takes 0 as "forever").
    #[arg(long, env = "BLOCK_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub block_ms: u64,

    /// ONNX Runtime intra-op threads per session (at least 1; ONNX Runtime
    /// would take 0 as "one per core").
    #[arg(long, env = "ORT_INTRA_THREADS", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub intra_threads: usize,

    /// How long a succeeded job's record and result stay readable.
    #[arg(long, env = "RESULT_TTL_SECS", default_value_t = 86_400)]
    pub result_ttl_secs: u64,

    /// How long a failed job's record stays readable (its dead letter, if
    /// any, stays in the dead-letter stream independently).
    #[arg(long, env = "FAILED_TTL_SECS", default_value_t = 604_800)]
    pub failed_ttl_secs: u64,

    /// Lease on a delivered job: renewed while it runs; once a job's lease
    /// has been idle this long (its worker died or stalled), another worker
    /// takes it over. At least 100: it is renewed every third of it.
    #[arg(long, env = "LEASE_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub lease_ms: u64,

    /// Attempts per job (first run included, so at least 1) before it fails
    /// for good and is dead-lettered. Counts runs lost to worker crashes too.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// First retry back-off; doubles per attempt, with jitter.
    #[arg(long, env = "RETRY_BASE_MS", default_value_t = 200)]
    pub retry_base_ms: u64,

    /// Longest retry back-off; not below `--retry-base-ms`.
    #[arg(long, env = "RETRY_MAX_MS", default_value_t = 30_000)]
    pub retry_max_ms: u64,

    /// On SIGTERM, how long in-flight jobs may take to finish before the
    /// process exits anyway (their leases then run out and others take over).
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// How often acknowledged entries are trimmed from the streams. Redis is
    /// blocked while it frees trimmed entries (about 0.15 us each), so short
    /// intervals keep each pause small: 1 s at 5000 jobs/s is under 1 ms.
    /// At least 1.
    #[arg(long, env = "TRIM_INTERVAL_SECS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub trim_interval_secs: u64,

    /// Approximate cap of the dead-letter stream.
    #[arg(long, env = "DEAD_LETTER_MAX_LEN", default_value_t = 100_000)]
    pub dead_letter_max_len: usize,

    /// Redis connect and response time limit for non-blocking commands
    /// (at least 1).
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_timeout_ms: u64,

    /// How often model signatures are re-published (they also act as a
    /// heartbeat and survive a Redis that lost its data). At least 1.
    #[arg(long, env = "PUBLISH_INTERVAL_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub publish_interval_secs: u64,

    /// Address for `/metrics`, `/healthz` and `/readyz` (e.g. `0.0.0.0:9090`);
    /// unset: no HTTP listener.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Retrain jobs this worker runs at once (each on its own blocking
    /// thread, read from the training stream only when a slot is free);
    /// 0: this worker never trains, so training can be kept to a pool of
    /// its own.
    #[arg(long, env = "TRAIN_SLOTS", default_value_t = 1)]
    pub train_slots: usize,

    /// Command for `"trainer": "external"` retrain jobs, split on
    /// whitespace (program, then arguments; no shell, no quoting; use a
    /// wrapper script for anything else). It gets `ONNXQ_DATASET` (the
    /// training rows as CSV), `ONNXQ_PARAMS` (JSON) and `ONNXQ_OUTPUT`
    /// (where to write the ONNX model). Unset: such jobs are left to
    /// workers that have one.
    #[arg(long, env = "EXTERNAL_TRAINER")]
    pub external_trainer: Option<String>,

    /// How long an external trainer may run before it is killed (at least
    /// 1 s).
    #[arg(long, env = "EXTERNAL_TRAINER_TIMEOUT_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub external_trainer_timeout_secs: u64,

    /// Where external trainers' input and output files are written (one
    /// directory per attempt, removed afterwards). Default: the temp dir.
    #[arg(long, env = "TRAIN_DIR")]
    pub train_dir: Option<PathBuf>,

    /// Longest one ONNX Runtime run may take, in ms; past it the run is
    /// terminated and its jobs fail `inference_timeout` (not retried).
    #[arg(long, env = "MAX_RUN_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_run_ms: u64,

    /// The worker's memory ceiling (`RLIMIT_DATA`), in MiB: past it an
    /// allocation fails, so a run that asks for more than that fails
    /// `inference_out_of_memory` instead of the worker being OOM-killed.
    /// 0: 90 % of the container's memory limit if there is one, else none.
    #[arg(long, env = "MAX_MEMORY_MB", default_value_t = 0)]
    pub max_memory_mb: u64,

    /// Most output elements one job's run may produce (all outputs
    /// together), checked before they are copied out of ONNX Runtime; past
    /// it the job fails `result_too_large` (not retried).
    #[arg(long, env = "MAX_OUTPUT_ELEMENTS", default_value_t = 4 << 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_output_elements: u64,

    /// Largest result JSON of one job, in bytes, checked while it is
    /// encoded; past it the job fails `result_too_large` (not retried).
    #[arg(long, env = "MAX_RESULT_BYTES", default_value_t = 16 << 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_result_bytes: u64,

    /// Longest the training step of a retrain job may take (either
    /// trainer), in seconds; past it the job fails `training_timeout`.
    #[arg(long, env = "MAX_TRAIN_SECS", default_value_t = 1800,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_train_secs: u64,

    /// Most epochs x rows x features one retrain job may ask for; more
    /// fails `training_budget_exceeded` (the API refuses it at submit when
    /// it can tell). At 9-13 ns a unit, the default is about 6 minutes.
    #[arg(long, env = "MAX_TRAIN_WORK", default_value_t = 30_000_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_train_work: u64,

    /// Log format: `json` or `pretty`.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,

    /// OTLP/HTTP base URL (e.g. `http://127.0.0.1:4318`) to export job
    /// traces to; `/v1/traces` is appended. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Address-space limit (RLIMIT_AS) of a model validation child process,
    /// in MiB: a model that needs more to load or to run once on zeros is
    /// `invalid` with `model_validation_memory`. At least 1.
    #[arg(long, env = "VALIDATE_MEMORY_MB", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub validate_memory_mb: u64,

    /// CPU-time limit (RLIMIT_CPU) of a validation child, in seconds
    /// (`model_validation_timeout`); at least 1.
    #[arg(long, env = "VALIDATE_CPU_SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub validate_cpu_secs: u64,

    /// Wall-clock limit of a validation child, in seconds: the worker kills
    /// it then (`model_validation_timeout`); at least 1.
    #[arg(long, env = "VALIDATE_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub validate_timeout_secs: u64,

    /// Largest declared size of one tensor of a model, and of all its
    /// tensors together (sparse ones at their dense size), in bytes
    /// (`model_tensor_too_large`). Checked before ONNX Runtime sees a model.
    #[arg(long, env = "MAX_MODEL_TENSOR_BYTES", default_value_t = 256 << 20)]
    pub max_model_tensor_bytes: u64,

    /// Most nodes of a model, subgraphs and functions included
    /// (`model_too_complex`).
    #[arg(long, env = "MAX_MODEL_NODES", default_value_t = 100_000)]
    pub max_model_nodes: usize,

    /// Most registry versions loaded in ONNX Runtime at once; past it the
    /// least recently used are unloaded (and loaded again on demand). The
    /// worker still serves every current model. At least 1.
    #[arg(long, env = "MAX_LOADED_MODELS", default_value_t = 64,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_loaded_models: usize,

    /// Memory budget of the loaded versions, in bytes, estimated per version
    /// as 2 × its ONNX size + 2 MiB; past it the least recently used are
    /// unloaded.
    #[arg(long, env = "MAX_LOADED_MODEL_BYTES", default_value_t = 1 << 30)]
    pub max_loaded_model_bytes: u64,

    /// A load marker not refreshed for this long (ms) means its worker died
    /// while loading that version: the version is quarantined. At least 1.
    #[arg(long, env = "LOAD_STALE_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub load_stale_ms: u64,
}

impl Config {
    /// Checks what the flags' own ranges cannot: values that must agree.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retry_max_ms < self.retry_base_ms {
            return Err(ConfigError::RetryMaxBelowBase {
                base: self.retry_base_ms,
                max: self.retry_max_ms,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_parses_and_limits_refuse_zero() {
        let c = Config::try_parse_from(["worker"]).expect("defaults parse");
        assert_eq!(c.max_run_ms, 30_000);
        assert_eq!(c.max_output_elements, 4 << 20);
        assert_eq!(c.max_result_bytes, 16 << 20);
        assert_eq!(c.max_train_secs, 1800);
        assert_eq!(c.validate(), Ok(()));
        for flag in [
            "--max-run-ms",
            "--max-output-elements",
            "--max-result-bytes",
            "--max-train-secs",
        ] {
            assert!(
                Config::try_parse_from(["worker", flag, "0"]).is_err(),
                "{flag} 0"
            );
        }
    }

    /// Refused at parse time, naming the flag and the range, where the
    /// worker used to raise the value silently.
    #[test]
    fn values_out_of_range_are_refused_not_adjusted() {
        for (flag, refused, lowest) in [
            ("--concurrency", "0", "1"),
            ("--max-batch", "0", "1"),
            ("--read-count", "0", "1"),
            ("--block-ms", "0", "1"),
            ("--intra-threads", "0", "1"),
            ("--lease-ms", "99", "100"),
            ("--max-attempts", "0", "1"),
            ("--trim-interval-secs", "0", "1"),
            ("--publish-interval-secs", "0", "1"),
            ("--external-trainer-timeout-secs", "0", "1"),
            ("--validate-cpu-secs", "0", "1"),
            ("--validate-timeout-secs", "0", "1"),
            ("--max-loaded-models", "0", "1"),
            ("--load-stale-ms", "0", "1"),
            ("--redis-timeout-ms", "0", "1"),
            ("--validate-memory-mb", "0", "1"),
        ] {
            let err = Config::try_parse_from(["worker", flag, refused])
                .expect_err(&format!("{flag} {refused} is refused"))
                .to_string();
            assert!(
                err.contains(flag) || flag == "--read-count",
                "{flag}: {err}"
            );
            assert!(
                err.contains(&format!("{refused} is not in {lowest}..")),
                "{flag}: {err}"
            );
            assert!(
                Config::try_parse_from(["worker", flag, lowest]).is_ok(),
                "{flag} {lowest} is accepted"
            );
        }
    }

    #[test]
    fn a_retry_cap_below_the_base_is_refused() {
        let parse = |base: &str, max: &str| {
            Config::try_parse_from(["worker", "--retry-base-ms", base, "--retry-max-ms", max])
                .expect("parses")
        };
        assert_eq!(
            parse("500", "499").validate(),
            Err(ConfigError::RetryMaxBelowBase {
                base: 500,
                max: 499
            })
        );
        assert_eq!(
            parse("500", "499").validate().unwrap_err().to_string(),
            "--retry-max-ms (499) must not be below --retry-base-ms (500)"
        );
        assert_eq!(parse("500", "500").validate(), Ok(()));
        assert_eq!(parse("0", "0").validate(), Ok(()));
    }
}
