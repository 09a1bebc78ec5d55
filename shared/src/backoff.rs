//! Waiting before trying again: exponential back-off, capped, and the
//! "equal jitter" that keeps many clients failing together from retrying
//! together. Loops that lost Redis use [`Backoff::reconnect`]; the worker's
//! job retries use [`delay`] with [`equal_jitter`].

use std::time::Duration;

/// The delay before try `n` (0 for the first retry): `base × 2ⁿ`, at most
/// `max`. Saturates instead of overflowing, however large `n` grows.
pub fn delay(base: Duration, max: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32 << n.min(31)).min(max)
}

/// Half of `d` fixed, the other half scaled by `jitter` (in `[0, 1)`, e.g.
/// from a random source): never less than half the back-off, so a retry
/// is never early, yet spread out.
pub fn equal_jitter(d: Duration, jitter: f64) -> Duration {
    let half = d / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// The back-off of a loop that retries until it succeeds: [`delay`] of
/// the tries so far, reset by the caller once it succeeds.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    tries: u32,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            tries: 0,
        }
    }

    /// A loop that lost Redis: 100 ms doubling to 5 s. Short enough that a
    /// blip costs little, long enough that an outage is not hammered.
    pub const fn reconnect() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// How many waits since the start or the last [`Backoff::reset`].
    pub fn tries(&self) -> u32 {
        self.tries
    }

    /// What the next [`Backoff::wait`] sleeps.
    pub fn next_delay(&self) -> Duration {
        delay(self.base, self.max, self.tries)
    }

    /// Back to the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.tries = 0;
    }

    /// Sleeps [`Backoff::next_delay`] and doubles the next one.
    pub async fn wait(&mut self) {
        let d = self.next_delay();
        self.tries = self.tries.saturating_add(1);
        tokio::time::sleep(d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reconnect_doubles_from_100_ms_to_5_s_until_reset() {
        let mut b = Backoff::reconnect();
        let mut waited = Vec::new();
        for _ in 0..9 {
            let t = tokio::time::Instant::now();
            b.wait().await;
            waited.push(t.elapsed().as_millis());
        }
        assert_eq!(waited, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(b.tries(), 9);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn delay_is_capped_without_overflow() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(delay(base, max, 0), base);
        assert_eq!(delay(base, max, 3), Duration::from_millis(800));
        assert_eq!(delay(base, max, 4), max);
        assert_eq!(delay(base, max, u32::MAX), max);
        assert_eq!(delay(Duration::MAX, Duration::MAX, 40), Duration::MAX);
    }

    #[test]
    fn equal_jitter_keeps_half_fixed() {
        let d = Duration::from_millis(400);
        assert_eq!(equal_jitter(d, 0.0), Duration::from_millis(200));
        let top = equal_jitter(d, 0.999_999);
        assert!(top < d && top > Duration::from_millis(399), "{top:?}");
        // Out-of-range jitter is clamped, not trusted.
        assert_eq!(equal_jitter(d, 7.0), d);
        assert_eq!(equal_jitter(d, -1.0), d / 2);
    }
}
