//! The one count both binaries keep of failed Redis calls,
//! [`REDIS_ERRORS`] by `op` (one of [`crate::metric_names::redis_op`]).
//! Only Redis's own failures count (unreachable, refused, timed out, an
//! error reply); a failure of the data (corrupt, not encodable) is a bug to
//! log, not an outage to graph.

use crate::metric_names::REDIS_ERRORS;
use crate::queue::QueueError;

/// An error that is, or may be, a failure of Redis itself.
pub trait RedisFailure {
    /// Whether [`count_redis_error`] counts it.
    fn is_redis_failure(&self) -> bool;
}

impl RedisFailure for QueueError {
    fn is_redis_failure(&self) -> bool {
        matches!(self, QueueError::Redis(_))
    }
}

impl RedisFailure for redis::RedisError {
    fn is_redis_failure(&self) -> bool {
        true
    }
}

/// A caller's own time limit on a Redis call ran out: Redis did not answer.
impl RedisFailure for tokio::time::error::Elapsed {
    fn is_redis_failure(&self) -> bool {
        true
    }
}

/// Counts `e` under `op` if it is a failure of Redis itself.
pub fn count_redis_error(op: &'static str, e: &impl RedisFailure) {
    if e.is_redis_failure() {
        metrics::counter!(REDIS_ERRORS, "op" => op).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::*;
    use crate::metric_names::redis_op;

    /// Counters by name and labels; nothing else is recorded.
    #[derive(Default)]
    struct Counts(Mutex<HashMap<String, Arc<AtomicU64>>>);

    struct Count(Arc<AtomicU64>);

    impl metrics::CounterFn for Count {
        fn increment(&self, n: u64) {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
        fn absolute(&self, n: u64) {
            self.0.store(n, Ordering::Relaxed);
        }
    }

    impl Counts {
        fn get(&self, series: &str) -> u64 {
            self.0
                .lock()
                .unwrap()
                .get(series)
                .map_or(0, |c| c.load(Ordering::Relaxed))
        }
    }

    impl Recorder for Counts {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let series = format!("{}{{{}}}", key.name(), labels.join(","));
            let count = Arc::clone(self.0.lock().unwrap().entry(series).or_default());
            Counter::from_arc(Arc::new(Count(count)))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn redis_failures_count_under_their_op_and_data_failures_do_not() {
        let counts = Counts::default();
        metrics::with_local_recorder(&counts, || {
            let refused = redis::RedisError::from((redis::ErrorKind::Io, "refused"));
            count_redis_error(redis_op::SUBMIT, &QueueError::Redis(refused.clone()));
            count_redis_error(redis_op::SUBMIT, &refused);
            count_redis_error(redis_op::READ, &QueueError::Corrupt("bad".into()));
            count_redis_error(
                redis_op::READ,
                &QueueError::NotReplicated {
                    acked: 0,
                    wanted: 1,
                },
            );
        });
        assert_eq!(counts.get("onnxq_redis_errors_total{op=submit}"), 2);
        assert_eq!(counts.get("onnxq_redis_errors_total{op=read}"), 0);
    }

    #[tokio::test]
    async fn a_timed_out_call_counts() {
        let elapsed = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            std::future::pending::<()>(),
        )
        .await
        .unwrap_err();
        let counts = Counts::default();
        metrics::with_local_recorder(&counts, || {
            count_redis_error(redis_op::STREAM_STATS, &elapsed)
        });
        assert_eq!(counts.get("onnxq_redis_errors_total{op=stream_stats}"), 1);
    }
}
