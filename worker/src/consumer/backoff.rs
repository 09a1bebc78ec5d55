//! Riding out Redis blips: a bounded retry of a Redis step that is safe to
//! repeat, on the back-off every loop that lost Redis uses
//! ([`shared::backoff::Backoff::reconnect`]).

use shared::backoff::Backoff;
use shared::queue::QueueError;

use shared::redis_errors::count_redis_error;

/// Retries a Redis step while Redis is unreachable, a few times with
/// back-off, so a blip does not strand a finished batch. Both steps it wraps
/// are safe to repeat: `start` at worst counts one extra attempt, `finish`
/// is a compare-and-set.
pub(crate) async fn with_retry<T, F, Fut>(op: &'static str, mut step: F) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let mut backoff = Backoff::reconnect();
    loop {
        match step().await {
            Err(e) if e.is_unavailable() && backoff.tries() < 6 => {
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
