//! The one read loop every slot runs, prediction and training slots alike:
//! read new entries of a read group's streams with a blocking `XREADGROUP`
//! on a dedicated connection, hand each batch to the slot's [`Batches`],
//! and, on a slot with the reclaim duty, take over expired leases of those
//! streams every half lease ([`super::upkeep`]).
//!
//! A slot hands a batch over and waits for it before reading again, so it
//! never holds entries it cannot start yet. Reads are never cancelled
//! mid-flight: an entry the server has delivered is always processed, so
//! shutdown waits at most one block interval plus the batch in flight.
//! Which streams form a group, and which slots reclaim, is decided where
//! the loops start ([`crate::slots`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use shared::backoff::Backoff;
use shared::metric_names::redis_op;
use shared::queue::QueueError;
use shared::queue::consume::{self, Delivery};
use shared::redis_conn::{self, Conn, Limits, Topology};
use shared::redis_errors::count_redis_error;
use tokio::sync::Semaphore;
use tokio::sync::watch;

use super::upkeep::reclaim;
use super::{Context, duration_ms};

/// The stream keys one loop reads together, in one `XREADGROUP`, and how to
/// open the dedicated connection that read blocks on (a blocking read
/// stalls everything else on its connection). On a Redis Cluster every key
/// of a group must share a hash slot: the read is routed by its first key.
#[derive(Clone)]
pub struct ReadGroup {
    /// The group's keys, read afresh at every read and every reclaim: the
    /// served set grows when a model is added.
    pub streams: Arc<ArcSwap<Vec<String>>>,
    pub topology: Topology,
    /// The connection's limits; the loop adds its longest block to the
    /// response limit.
    pub limits: Limits,
}

impl ReadGroup {
    /// A group of fixed keys.
    pub fn fixed(streams: Vec<String>, topology: Topology, limits: Limits) -> ReadGroup {
        ReadGroup {
            streams: Arc::new(ArcSwap::from_pointee(streams)),
            topology,
            limits,
        }
    }

    /// A new dedicated connection whose response limit outlasts a server-side
    /// block of `longest_block_ms`.
    async fn connect(&self, longest_block_ms: u64) -> Result<Conn, redis::RedisError> {
        let limits = Limits {
            response: self.limits.response + Duration::from_millis(longest_block_ms),
            ..self.limits
        };
        redis_conn::dedicated(&self.topology, limits).await
    }
}

/// The longest block of a slot that shares permits (see [`ReadSpec::permits`]).
const SHARED_BLOCK_MS: u64 = 250;

/// How one slot reads its group.
#[derive(Debug, Clone)]
pub struct ReadSpec {
    /// Names the kind of slot in its logs (`reads` field).
    pub name: &'static str,
    pub slot: usize,
    /// Entries taken per stream in one read (`XREADGROUP COUNT`).
    pub count: usize,
    /// Server-side block of an empty read.
    pub block_ms: u64,
    /// After a read that returned fewer than `count` entries, how long to
    /// wait for more before handing the batch over (0: at once).
    pub linger_ms: u64,
    /// Whether this slot takes over expired leases of its group's streams,
    /// every half lease (at its start too) and up to this many entries per
    /// stream. Such a slot blocks at most half a lease, to be back in time.
    pub reclaim: Option<usize>,
    /// A permit this slot must hold to read or take over, and holds until
    /// its batch is done: slots of several groups share a bound on how many
    /// batches run at once (training slots: `--train-slots` over all
    /// partitions). A slot without permits reads whenever it is free.
    pub permits: Option<Arc<Semaphore>>,
}

/// What a slot does with the entries it read or took over. The loop waits
/// for it before reading again.
pub trait Batches: Send + Sync {
    fn run(&self, ctx: &Context, batch: Vec<Delivery>) -> impl Future<Output = ()> + Send;
}

/// Reads `group` as `spec` says and hands every batch to `batches`, until
/// `shutdown` turns true.
pub async fn read_loop<B: Batches>(
    ctx: Arc<Context>,
    group: ReadGroup,
    spec: ReadSpec,
    batches: B,
    mut shutdown: watch::Receiver<bool>,
) {
    let (reads, slot) = (spec.name, spec.slot);
    // With a shared bound, a slot blocks briefly so the permit moves on to
    // the slots of the other groups (their partitions) in turn.
    let spec_block_ms = if spec.permits.is_some() {
        spec.block_ms.min(SHARED_BLOCK_MS)
    } else {
        spec.block_ms
    };
    let block_ms = match spec.reclaim {
        Some(_) => spec_block_ms.min(duration_ms(ctx.lease / 2)),
        None => spec_block_ms,
    }
    // Redis takes BLOCK 0 as "forever": the loop would never see shutdown.
    .max(1);
    let mut conn: Option<Conn> = None;
    let mut backoff = Backoff::reconnect();
    // At once on the first round: a worker starting may be replacing one
    // that died with jobs in hand.
    let mut last_reclaim: Option<Instant> = None;
    while !*shutdown.borrow_and_update() {
        let _permit = match &spec.permits {
            Some(p) => tokio::select! {
                got = Arc::clone(p).acquire_owned() => match got {
                    Ok(permit) => Some(permit),
                    Err(_) => break,
                },
                _ = shutdown.changed() => continue,
            },
            None => None,
        };
        if let Some(count) = spec.reclaim
            && last_reclaim.is_none_or(|t| t.elapsed() >= ctx.lease / 2)
        {
            last_reclaim = Some(Instant::now());
            if take_over(&ctx, &group, count, &batches, &spec).await {
                // Running them may have taken a while: see shutdown first.
                continue;
            }
        }
        if conn.is_none() {
            match group.connect(block_ms.max(spec.linger_ms)).await {
                Ok(c) => conn = Some(c),
                Err(error) => {
                    tracing::warn!(reads, slot, %error, "cannot connect to redis; backing off");
                    count_redis_error(redis_op::CONNECT, &QueueError::Redis(error));
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let streams = group.streams.load_full();
        let read = consume::read_new(c, &streams, &ctx.consumer, spec.count, block_ms).await;
        let read = match read {
            Ok(mut batch)
                if spec.linger_ms > 0 && !batch.is_empty() && batch.len() < spec.count =>
            {
                // Triton's max_queue_delay: give stragglers a moment to join.
                let more = consume::read_new(
                    c,
                    &streams,
                    &ctx.consumer,
                    spec.count - batch.len(),
                    spec.linger_ms,
                )
                .await;
                match more {
                    Ok(more) => batch.extend(more),
                    Err(error) => {
                        count_redis_error(redis_op::READ, &error);
                        // What was already read must still run: keep it.
                        tracing::warn!(reads, slot, %error, "second read of a batch failed");
                        conn = None;
                    }
                }
                Ok(batch)
            }
            other => other,
        };
        match read {
            Ok(batch) => {
                backoff.reset();
                if !batch.is_empty() {
                    batches.run(&ctx, batch).await;
                }
            }
            Err(QueueError::Redis(e)) if e.code() == Some("NOGROUP") => {
                count_redis_error(redis_op::READ, &QueueError::Redis(e));
                // The stream or group vanished (e.g. a Redis without
                // persistence restarted): recreate and read again.
                tracing::warn!(reads, slot, "consumer group missing; recreating");
                if let Err(error) = ctx.ensure_groups_of(&streams).await {
                    count_redis_error(redis_op::ENSURE_GROUP, &error);
                    tracing::warn!(reads, slot, %error, "cannot recreate consumer groups");
                    backoff.wait().await;
                }
            }
            Err(error) => {
                count_redis_error(redis_op::READ, &error);
                tracing::warn!(reads, slot, %error, "reading the streams failed; reconnecting");
                conn = None;
                backoff.wait().await;
            }
        }
    }
    tracing::debug!(reads, slot, "slot stopped");
}

/// Takes over the expired leases of the group's streams and hands each
/// stream's entries over as one batch; whether there were any.
async fn take_over<B: Batches>(
    ctx: &Context,
    group: &ReadGroup,
    count: usize,
    batches: &B,
    spec: &ReadSpec,
) -> bool {
    let mut took = false;
    for stream in group.streams.load_full().iter() {
        let batch = reclaim(ctx, stream, count, spec.name, spec.slot).await;
        if !batch.is_empty() {
            took = true;
            batches.run(ctx, batch).await;
        }
    }
    took
}
