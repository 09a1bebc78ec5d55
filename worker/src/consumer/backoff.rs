//! Riding out Redis blips: the back-off of a loop that lost Redis, and a
//! bounded retry of a Redis step that is safe to repeat.

use std::time::Duration;

use shared::queue::QueueError;

use super::metrics::count_redis_error;

/// Exponential back-off for a loop that lost Redis: 100 ms doubling to 5 s.
pub(crate) struct Backoff(pub(crate) u32);

impl Backoff {
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    fn next_delay(&mut self) -> Duration {
        let ms = 100u64.saturating_mul(1 << self.0.min(6)).min(5_000);
        self.0 += 1;
        Duration::from_millis(ms)
    }
}

/// Retries a Redis step while Redis is unreachable, a few times with
/// back-off, so a blip does not strand a finished batch. Both steps it wraps
/// are safe to repeat: `start` at worst counts one extra attempt, `finish`
/// is a compare-and-set.
pub(crate) async fn with_retry<T, F, Fut>(op: &'static str, mut step: F) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let mut backoff = Backoff(0);
    loop {
        match step().await {
            Err(e) if e.is_unavailable() && backoff.0 < 6 => {
                count_redis_error(op, &e);
                tracing::warn!(error = %e, "redis unavailable; retrying");
                backoff.wait().await;
            }
            Err(e) => {
                count_redis_error(op, &e);
                return Err(e);
            }
            ok => return ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100_ms_to_5_s() {
        let mut b = Backoff(0);
        let ms: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }
}
