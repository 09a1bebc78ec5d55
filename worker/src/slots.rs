//! Starts the worker's read loops, and is the one place that decides the
//! read groups: which stream keys each loop reads together, with which
//! parameters, and which of a group's slots takes over expired leases.
//!
//! Today there are two groups: every served stream (the models' and the
//! control stream, swapped when a model is added), read by the
//! `--concurrency` prediction slots, and the training stream, read by the
//! `--train-slots` training slots. Every slot runs
//! [`consumer::read::read_loop`] on a dedicated connection of its own.

use std::sync::Arc;

use shared::queue::keys::TRAIN;
use tokio::sync::watch;
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
    let mut loops = Vec::with_capacity(predict_slots + train_slots);

    let served = ReadGroup {
        streams: Arc::clone(&ctx.streams),
        redis_url: ctx.redis_url.clone(),
        limits: ctx.limits,
    };
    for slot in 0..predict_slots {
        let spec = ReadSpec {
            name: "predict",
            slot,
            count: ctx.read_count,
            block_ms: ctx.block_ms,
            linger_ms: ctx.max_batch_delay_ms,
            // One slot of the group takes over expired leases, a batch at a
            // time: the others may block for the full block interval.
            reclaim: (slot == 0).then_some(ctx.read_count),
        };
        loops.push(tokio::spawn(read_loop(
            Arc::clone(ctx),
            served.clone(),
            spec,
            consumer::Predictions,
            stop.clone(),
        )));
    }

    let training = ReadGroup::fixed(
        vec![ctx.keys.stream(TRAIN)],
        ctx.redis_url.clone(),
        ctx.limits,
    );
    for slot in 0..train_slots {
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
        };
        let batches = Training {
            config: Arc::clone(trainer),
            shutdown: stop.clone(),
        };
        loops.push(tokio::spawn(read_loop(
            Arc::clone(ctx),
            training.clone(),
            spec,
            batches,
            stop.clone(),
        )));
    }
    loops
}
