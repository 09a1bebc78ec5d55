//! Taking over work a lost worker left behind: entries of a stream whose
//! lease expired (idle past `--lease-ms`: their worker stopped renewing) are
//! claimed with `XAUTOCLAIM` and run like new deliveries; their start takes
//! a new attempt, and the attempt count decides whether they may still run.
//!
//! The read loop calls this on the slots that have the reclaim duty
//! ([`super::read::ReadSpec::reclaim`]). Releasing due retries, trimming
//! and heartbeats are the worker's `maintain` task (crate root).

use shared::metric_names::redis_op;
use shared::queue::consume::{self, Delivery};
use shared::redis_errors::count_redis_error;

use super::metrics::count_reclaimed;
use super::{Context, duration_ms};

/// Claims up to `count` entries of `stream` whose lease expired; none when
/// there are none or Redis fails (counted and logged: the next round tries
/// again).
pub(crate) async fn reclaim(
    ctx: &Context,
    stream: &str,
    count: usize,
    reads: &'static str,
    slot: usize,
) -> Vec<Delivery> {
    let claimed = async {
        let mut conn = ctx.pool.get();
        consume::reclaim(
            &mut conn,
            stream,
            &ctx.consumer,
            duration_ms(ctx.lease),
            count,
        )
        .await
    }
    .await;
    match claimed {
        Ok(batch) => {
            if !batch.is_empty() {
                tracing::warn!(
                    reads,
                    slot,
                    stream,
                    jobs = batch.len(),
                    "took over jobs whose lease expired"
                );
                count_reclaimed(&ctx.keys, stream, batch.len());
            }
            batch
        }
        Err(error) => {
            count_redis_error(redis_op::RECLAIM, &error);
            tracing::warn!(reads, slot, stream, %error, "reclaiming expired leases failed");
            Vec::new()
        }
    }
}
