//! Starts the worker's read loops, and is the one place that decides the
//! read groups: which stream keys each loop reads together, with which
//! parameters, and which of a group's slots takes over expired leases.
//!
//! Every partition (see `shared::queue::keys`) is a group of its own: its
//! keys share one hash slot, which a cluster requires of one `XREADGROUP`,
//! and each of its loops blocks on a dedicated connection.
//! * Prediction: `max(--concurrency, P)` slots, slot `j` reading partition
//!   `j mod P`'s served streams (the models' and the control stream,
//!   swapped when a model is added), so every partition has a reader; the
//!   first slot of each partition takes over its expired leases.
//! * Training: one slot per partition reads its training stream, and
//!   `--train-slots` permits bound how many run at once: a slot holds one
//!   to read and to train, so a worker never trains more jobs at once than
//!   it has training slots, whatever P is.
//!
//! Every slot runs [`consumer::read::read_loop`].

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::consumer::read::{ReadGroup, ReadSpec, read_loop};
use crate::consumer::{self, Context};
use crate::retrain::TrainerConfig;
use crate::training::Training;

/// Spawns `predict_slots` prediction slots and `train_slots` training
/// slots; each runs until `stop` turns true.
pub fn start(
    ctx: &Arc<Context>,
    trainer: &Arc<TrainerConfig>,
    predict_slots: usize,
    train_slots: usize,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let parts = ctx.streams.len().max(1);
    let readers = predict_slots.max(parts);
    let mut loops = Vec::with_capacity(readers + parts);
    for slot in 0..readers {
        let p = slot % parts;
        let group = ReadGroup {
            streams: Arc::clone(&ctx.streams[p]),
            topology: ctx.topology.clone(),
            limits: ctx.limits,
        };
        let spec = ReadSpec {
            name: "predict",
            slot,
            count: ctx.read_count,
            block_ms: ctx.block_ms,
            linger_ms: ctx.max_batch_delay_ms,
            // One slot of each group takes over expired leases, a batch at
            // a time: the others may block for the full block interval.
            reclaim: (slot < parts).then_some(ctx.read_count),
            permits: None,
        };
        loops.push(tokio::spawn(read_loop(
            Arc::clone(ctx),
            group,
            spec,
            consumer::Predictions,
            stop.clone(),
        )));
    }

    if train_slots == 0 {
        return loops;
    }
    let permits = Arc::new(Semaphore::new(train_slots));
    for (slot, stream) in ctx.train_streams().into_iter().enumerate() {
        let spec = ReadSpec {
            name: "train",
            slot,
            count: 1,
            block_ms: ctx.block_ms,
            linger_ms: 0,
            // Every training slot takes over for itself, one job at a time:
            // a slot must not take a job it cannot start at once, so none
            // can take over for the others.
            reclaim: Some(1),
            permits: Some(Arc::clone(&permits)),
        };
        let batches = Training {
            config: Arc::clone(trainer),
            shutdown: stop.clone(),
        };
        loops.push(tokio::spawn(read_loop(
            Arc::clone(ctx),
            ReadGroup::fixed(vec![stream], ctx.topology.clone(), ctx.limits),
            spec,
            batches,
            stop.clone(),
        )));
    }
    loops
}
