//! The queue gauges of `GET /metrics`: per model stream length, pending
//! entries, consumer-group lag, oldest pending age, consumers and workers
//! with a fresh heartbeat, plus delayed retries and dead letters.
//!
//! They are sampled from Redis at scrape time ([`shared::queue::stats`], two
//! pipelined round trips) rather than kept as recorder gauges, so a model
//! that disappears stops being reported instead of keeping its last value.
//! A sample is reused for [`REFRESH_EVERY`]: any number of scrapers (several
//! Prometheus replicas, a KEDA scaler) cost Redis at most one sample per
//! interval. When Redis cannot be sampled the gauges are left out of the
//! scrape (Prometheus marks them stale) and the failure is counted in
//! `onnxq_redis_errors_total{op="stream_stats"}`.

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::metric_names::{
    DEAD_LETTERS, DELAYED_JOBS, STREAM_CONSUMERS, STREAM_LAG, STREAM_LENGTH,
    STREAM_OLDEST_PENDING_AGE, STREAM_PENDING, WORKERS_READY, redis_op,
};
use shared::queue::stats::{self, Sample, StreamSample};
use shared::redis_errors::count_redis_error;
use tokio::sync::Mutex;

use crate::queue::Queue;

/// Longest reuse of one sample.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The cached sample, shared by the clones handed to every request.
#[derive(Clone, Default)]
pub(crate) struct StreamStats {
    cache: Arc<Mutex<Cached>>,
}

#[derive(Default)]
struct Cached {
    taken: Option<Instant>,
    text: String,
}

impl StreamStats {
    pub(crate) fn new() -> StreamStats {
        StreamStats::default()
    }

    /// The gauges in Prometheus text format, sampled now or at most
    /// [`REFRESH_EVERY`] ago; empty when Redis could not be sampled.
    pub(crate) async fn render(&self, queue: &Queue) -> String {
        // Held across the sample: concurrent scrapes wait for it and reuse it
        // instead of sampling in parallel.
        let mut cached = self.cache.lock().await;
        if cached.taken.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return cached.text.clone();
        }
        let limits = queue.redis_limits();
        // Two round trips, each bounded by the connection's own limits; this
        // bounds the rare extra ones (see `stats::lag`) as well.
        let budget = 2 * (limits.connect + limits.response);
        let mut conn = queue.conn();
        let sampled = tokio::time::timeout(budget, stats::sample(&mut conn, queue.keys())).await;
        cached.text = match sampled {
            Ok(Ok(sample)) => render(&sample),
            Ok(Err(error)) => {
                count_redis_error(redis_op::STREAM_STATS, &error);
                tracing::warn!(%error, "cannot sample the queue gauges");
                String::new()
            }
            Err(elapsed) => {
                count_redis_error(redis_op::STREAM_STATS, &elapsed);
                tracing::warn!(?budget, "sampling the queue gauges timed out");
                String::new()
            }
        };
        cached.taken = Some(Instant::now());
        cached.text.clone()
    }
}

/// One gauge family: its name, help text and value per stream.
struct PerModel {
    name: &'static str,
    help: &'static str,
    value: fn(&StreamSample) -> f64,
}

const PER_MODEL: [PerModel; 6] = [
    PerModel {
        name: STREAM_LENGTH,
        help: "Entries in the model's stream (XLEN), acknowledged ones included until trimmed.",
        value: |s| s.length as f64,
    },
    PerModel {
        name: STREAM_PENDING,
        help: "Entries delivered to a worker and not yet acknowledged (running or lost with a worker).",
        value: |s| s.pending as f64,
    },
    PerModel {
        name: STREAM_LAG,
        help: "Entries not yet delivered to any worker (consumer-group lag): the backlog to scale on.",
        value: |s| s.lag as f64,
    },
    PerModel {
        name: STREAM_OLDEST_PENDING_AGE,
        help: "Age of the oldest delivered, unacknowledged entry, since it was enqueued (0 when none).",
        value: |s| s.oldest_pending_age_ms as f64 / 1e3,
    },
    PerModel {
        name: STREAM_CONSUMERS,
        help: "Consumers in the model's consumer group: registered on their first delivery, kept until deleted.",
        value: |s| s.consumers as f64,
    },
    PerModel {
        name: WORKERS_READY,
        help: "Workers serving the model with a heartbeat in the last 10 seconds.",
        value: |s| s.workers.fresh as f64,
    },
];

/// The sample in Prometheus text format (version 0.0.4).
fn render(sample: &Sample) -> String {
    let mut out = String::new();
    for family in &PER_MODEL {
        header(&mut out, family.name, family.help);
        for s in &sample.streams {
            let _ = writeln!(
                out,
                "{}{{model=\"{}\"}} {}",
                family.name,
                escape(&s.model),
                (family.value)(s)
            );
        }
    }
    header(
        &mut out,
        DELAYED_JOBS,
        "Jobs waiting out a retry back-off before going back on their stream.",
    );
    let _ = writeln!(out, "{DELAYED_JOBS} {}", sample.delayed);
    header(
        &mut out,
        DEAD_LETTERS,
        "Entries in the dead-letter stream (all models).",
    );
    let _ = writeln!(out, "{DEAD_LETTERS} {}", sample.dead_letters);
    out
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::queue::heartbeat::ModelWorkers;

    #[test]
    fn renders_every_gauge_per_model_and_the_totals() {
        let sample = Sample {
            streams: vec![StreamSample {
                model: "mlp128".into(),
                length: 7,
                pending: 2,
                lag: 3,
                oldest_pending_age_ms: 1500,
                consumers: 4,
                workers: ModelWorkers {
                    model: "mlp128".into(),
                    fresh: 1,
                    last_beat_age_ms: Some(10),
                },
            }],
            delayed: 5,
            dead_letters: 6,
        };
        let text = render(&sample);
        for line in [
            "onnxq_stream_length{model=\"mlp128\"} 7",
            "onnxq_stream_pending{model=\"mlp128\"} 2",
            "onnxq_stream_lag{model=\"mlp128\"} 3",
            "onnxq_stream_oldest_pending_age_seconds{model=\"mlp128\"} 1.5",
            "onnxq_stream_consumers{model=\"mlp128\"} 4",
            "onnxq_workers_ready{model=\"mlp128\"} 1",
            "onnxq_delayed_jobs 5",
            "onnxq_dead_letters 6",
            "# TYPE onnxq_stream_lag gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
