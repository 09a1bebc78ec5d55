//! A prediction slot's loop: read (or, on slot 0, reclaim) a batch of
//! entries of every served stream and hand it to [`super::batch`], until
//! shutdown.
//!
//! Each slot owns a dedicated connection for its blocking `XREADGROUP`;
//! everything else goes through the shared pool. Several slots overlap one
//! batch's Redis round trips with another batch's inference. Reads are
//! never cancelled mid-flight: an entry the server has delivered is always
//! processed, so shutdown waits at most one block interval plus the batch
//! in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use shared::metric_names::redis_op;
use shared::queue::QueueError;
use shared::queue::consume;
use shared::redis_conn::{self, Limits};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::batch::process;
use super::metrics::count_redis_error;
use super::upkeep::reclaim_expired;
use super::{Context, duration_ms};

/// One read→run→write loop, until `shutdown` turns true. Slot 0 also
/// reclaims expired leases, every half lease.
pub async fn run_slot(ctx: Arc<Context>, slot: usize, mut shutdown: watch::Receiver<bool>) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Backoff(0);
    let mut last_reclaim = Instant::now();
    // The server blocks up to block_ms; the client must wait longer than that.
    let read_limits = Limits {
        response: ctx.limits.response + Duration::from_millis(ctx.block_ms),
        ..ctx.limits
    };
    while !*shutdown.borrow_and_update() {
        if slot == 0 && last_reclaim.elapsed() >= ctx.lease / 2 {
            last_reclaim = Instant::now();
            reclaim_expired(&ctx).await;
        }
        if conn.is_none() {
            match redis_conn::dedicated(&ctx.redis_url, read_limits).await {
                Ok(c) => conn = Some(c),
                Err(error) => {
                    metrics::counter!(shared::metric_names::REDIS_ERRORS, "op" => redis_op::CONNECT)
                        .increment(1);
                    tracing::warn!(slot, %error, "cannot connect to redis; backing off");
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        // Slot 0 must come back in time to reclaim; others may block longer.
        let block_ms = if slot == 0 {
            ctx.block_ms.min(duration_ms(ctx.lease / 2).max(1))
        } else {
            ctx.block_ms
        };
        let streams = ctx.streams.load_full();
        let read = consume::read_new(c, &streams, &ctx.consumer, ctx.read_count, block_ms).await;
        let read = match read {
            Ok(mut batch)
                if ctx.max_batch_delay_ms > 0
                    && !batch.is_empty()
                    && batch.len() < ctx.read_count =>
            {
                // Triton's max_queue_delay: give stragglers a moment to join.
                let more = consume::read_new(
                    c,
                    &streams,
                    &ctx.consumer,
                    ctx.read_count - batch.len(),
                    ctx.max_batch_delay_ms,
                )
                .await;
                match more {
                    Ok(more) => batch.extend(more),
                    Err(error) => {
                        count_redis_error(redis_op::READ, &error);
                        // What was already read must still run: keep it.
                        tracing::warn!(slot, %error, "second read of a batch failed");
                        conn = None;
                    }
                }
                Ok(batch)
            }
            other => other,
        };
        match read {
            Ok(batch) => {
                backoff = Backoff(0);
                if !batch.is_empty() {
                    process(&ctx, batch).await;
                }
            }
            Err(QueueError::Redis(e)) if e.code() == Some("NOGROUP") => {
                metrics::counter!(shared::metric_names::REDIS_ERRORS, "op" => redis_op::READ)
                    .increment(1);
                // The stream or group vanished (e.g. a Redis without
                // persistence restarted): recreate and read again.
                tracing::warn!(slot, "consumer group missing; recreating");
                if let Err(error) = ctx.ensure_groups().await {
                    count_redis_error(redis_op::ENSURE_GROUP, &error);
                    tracing::warn!(slot, %error, "cannot recreate consumer groups");
                    backoff.wait().await;
                }
            }
            Err(error) => {
                count_redis_error(redis_op::READ, &error);
                tracing::warn!(slot, %error, "reading the job streams failed; reconnecting");
                conn = None;
                backoff.wait().await;
            }
        }
    }
    tracing::debug!(slot, "slot stopped");
}
