//! Request rate limits as token buckets in Redis, so every API replica draws
//! from the same buckets.
//!
//! A bucket (`{ns}:rate:{tenant}` or `{ns}:rate:{tenant}:{model}`, a hash of
//! `tokens` and `at`, see [`super::keys`]) holds up to `burst` tokens and
//! refills at `per_sec`; a request takes one token from every bucket that
//! applies to it, or from none: [`take`] checks them all, then takes from
//! all, in one script. The clock is Redis's (`TIME`), so replicas with skewed
//! clocks agree. A bucket expires once it would be full again: an idle
//! tenant costs no memory.

use redis::aio::ConnectionLike;

use super::QueueError;
use super::scripts::TAKE;

/// A bucket's shape: `burst` tokens at most, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: u64,
}

impl Rate {
    /// Seconds a bucket takes to fill from empty: the window the burst is
    /// spread over (the `w` of the `RateLimit-Policy` header).
    pub fn window_secs(&self) -> u64 {
        (self.burst as f64 / self.per_sec.max(f64::MIN_POSITIVE)).ceil() as u64
    }
}

/// One bucket a request draws from.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub key: String,
    pub rate: Rate,
}

/// A bucket's state after [`take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Whole tokens left.
    pub remaining: u64,
    /// Milliseconds until the bucket is full again.
    pub full_in_ms: u64,
}

/// What [`take`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A token was taken from every bucket; their levels, in order.
    Allowed(Vec<Level>),
    /// Bucket `index` is empty; nothing was taken. The next token comes in
    /// `retry_in_ms`.
    Limited { index: usize, retry_in_ms: u64 },
}

/// Takes one token from every bucket, or none if any is empty.
pub async fn take(
    conn: &mut impl ConnectionLike,
    buckets: &[Bucket],
) -> Result<Verdict, QueueError> {
    if buckets.is_empty() {
        return Ok(Verdict::Allowed(Vec::new()));
    }
    let mut inv = TAKE.prepare_invoke();
    for b in buckets {
        inv.key(&b.key)
            .arg(b.rate.per_sec.max(f64::MIN_POSITIVE) / 1e3)
            .arg(b.rate.burst.max(1));
    }
    let reply: Vec<i64> = inv.invoke_async(conn).await?;
    let at = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
    match reply.first() {
        Some(1) => Ok(Verdict::Allowed(
            (0..buckets.len())
                .map(|i| Level {
                    remaining: at(1 + 2 * i),
                    full_in_ms: at(2 + 2 * i),
                })
                .collect(),
        )),
        Some(0) => Ok(Verdict::Limited {
            index: (at(1) as usize).saturating_sub(1),
            retry_in_ms: at(2).max(1),
        }),
        other => Err(QueueError::Corrupt(format!(
            "rate limit script answered {other:?}"
        ))),
    }
}
