//! Taking over work a lost worker left behind: entries of the served
//! streams whose lease expired (idle past `--lease-ms`: their worker stopped
//! renewing) are claimed with `XAUTOCLAIM` and run like new deliveries;
//! their start takes a new attempt, and the attempt count decides whether
//! they may still run. Slot 0 of the prediction slots does it every half
//! lease ([`super::read`]). Delayed-retry promotion, trimming and
//! heartbeats are the worker's `maintain` task (crate root).

use shared::metric_names::redis_op;
use shared::queue::consume;

use super::batch::process;
use super::metrics::{count_reclaimed, count_redis_error};
use super::{Context, duration_ms};

/// Takes over the entries of every served stream whose lease expired and
/// runs them like new deliveries; their start takes a new attempt.
pub(super) async fn reclaim_expired(ctx: &Context) {
    for stream in ctx.streams.load().iter() {
        let claimed = async {
            let mut conn = ctx.pool.get().await?;
            consume::reclaim(
                &mut conn,
                stream,
                &ctx.consumer,
                duration_ms(ctx.lease),
                ctx.read_count,
            )
            .await
        }
        .await;
        match claimed {
            Ok(batch) if !batch.is_empty() => {
                tracing::warn!(
                    stream,
                    jobs = batch.len(),
                    "took over jobs whose lease expired"
                );
                count_reclaimed(&ctx.keys, stream, batch.len());
                process(ctx, batch).await;
            }
            Ok(_) => {}
            Err(error) => {
                count_redis_error(redis_op::RECLAIM, &error);
                tracing::warn!(stream, %error, "reclaiming expired leases failed");
            }
        }
    }
}
