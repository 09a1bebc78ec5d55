//! The Redis Streams side of the worker, and the [`Context`] every slot of
//! one worker process shares.
//!
//! * [`read`]: the one read loop every slot runs (predictions and
//!   training): a blocking `XREADGROUP` of a read group's streams on a
//!   dedicated connection, handing each batch to the slot's [`read::Batches`].
//! * [`attempt`]: an attempt's life cycle: start the jobs of a batch (one
//!   script call per stream), renew their leases while they run, then end
//!   every attempt in one pipelined round trip; the retry / dead-letter
//!   decision.
//! * [`batch`]: what a prediction slot does with a batch: inference on a
//!   blocking thread (stacked across jobs by [`crate::execute`]) beside the
//!   batch's `validate` jobs.
//! * [`upkeep`]: taking over entries whose lease expired (`XAUTOCLAIM`).
//! * [`metrics`]: what the consumer logs and counts about jobs and Redis.
//! * [`backoff`]: riding out Redis blips.
//!
//! Which streams a loop reads and which slot takes over expired leases is
//! decided where the loops start ([`crate::slots`]). The rest of the
//! upkeep (releasing due retries, trimming, heartbeats) is the worker's
//! `maintain` task in the crate root.

pub mod attempt;
pub mod backoff;
pub mod batch;
pub mod metrics;
pub mod read;
pub mod upkeep;

pub use attempt::{Attempted, Runnable};
pub use batch::Predictions;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::Rng;
use shared::queue::consume::{self, Policy};
use shared::queue::{Keys, QueueError};
use shared::redis_conn::Pool;
use shared::redis_conn::{Limits, Topology};
use uuid::Uuid;

use crate::models::ModelStore;

/// What every slot of one worker process shares.
pub struct Context {
    pub keys: Keys,
    /// The served model versions, swapped when the registry changes.
    pub models: Arc<ModelStore>,
    /// Per partition, the streams of the models this worker serves and the
    /// partition's control stream; replaced when a model is added. Each is
    /// shared with the read group of that partition's prediction slots,
    /// which reads whatever it holds at each read.
    pub streams: Vec<Arc<ArcSwap<Vec<String>>>>,
    /// Unique per process start, so a restarted worker never inherits the
    /// pending entries of its previous life under the same name.
    pub consumer: String,
    pub topology: Topology,
    pub pool: Pool,
    pub limits: Limits,
    pub read_count: usize,
    /// Rows stacked into one ONNX Runtime run at most; 1 turns stacking off.
    pub max_batch_rows: usize,
    /// After a read that returned fewer than `read_count` entries, how long
    /// to wait for more before running the batch (0: run at once).
    pub max_batch_delay_ms: u64,
    pub block_ms: u64,
    pub lease: Duration,
    pub policy: Policy,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Context {
    /// Creates the consumer group of every served stream, of the control
    /// stream and of the training stream.
    pub async fn ensure_groups(&self) -> Result<(), QueueError> {
        let mut all = self.served_streams();
        all.extend(self.train_streams());
        self.ensure_groups_of(&all).await
    }

    /// Creates the consumer groups of the given stream keys (those of one
    /// read group); keys outside this namespace are skipped.
    pub async fn ensure_groups_of(&self, streams: &[String]) -> Result<(), QueueError> {
        let mut conn = self.pool.get();
        for stream in streams
            .iter()
            .filter(|s| self.keys.parse_stream(s).is_some())
        {
            consume::ensure_group(&mut conn, stream).await?;
        }
        Ok(())
    }

    /// Reads the streams of the models served now (after a model was added),
    /// in every partition.
    pub fn refresh_streams(&self) {
        let names = self.models.names();
        for (p, group) in self.keys.all_partitions().zip(&self.streams) {
            let mut streams: Vec<String> = names.iter().map(|m| self.keys.stream(m, p)).collect();
            streams.push(self.keys.stream(shared::queue::keys::CONTROL, p));
            group.store(Arc::new(streams));
        }
    }

    /// Every served stream of every partition (the control streams too).
    pub fn served_streams(&self) -> Vec<String> {
        self.streams
            .iter()
            .flat_map(|g| g.load().iter().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// The training stream of every partition.
    pub fn train_streams(&self) -> Vec<String> {
        self.keys
            .all_partitions()
            .map(|p| self.keys.stream(shared::queue::keys::TRAIN, p))
            .collect()
    }

    /// Publishes every served model's signature.
    pub async fn publish_models(&self) -> Result<(), QueueError> {
        let mut conn = self.pool.get();
        for model in self.models.snapshot().values() {
            let mut info = model.info().clone();
            // Promotion writes the new current version's signature; a worker
            // that has not swapped yet must not put its old one back.
            if let Ok(loaded) = info.version.parse::<u32>()
                && shared::queue::registry::current(&mut conn, &self.keys, &info.name).await?
                    != Some(loaded)
            {
                continue;
            }
            info.updated_at_ms = shared::time::now_ms();
            consume::publish_model(&mut conn, &self.keys, &info).await?;
        }
        Ok(())
    }

    /// The back-off before retry number `attempt` (see [`retry_delay`]).
    fn retry_delay(&self, attempt: u32) -> Duration {
        retry_delay(
            self.retry_base,
            self.retry_max,
            attempt,
            rand::rng().random::<f64>(),
        )
    }
}

/// The back-off before retry number `attempt` (1-based attempt that just
/// failed): exponential, capped, with "equal jitter" (half fixed, half
/// `jitter` in `[0, 1)`) so jobs failing together do not retry together.
fn retry_delay(base: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let exp = shared::backoff::delay(base, max, attempt.saturating_sub(1));
    shared::backoff::equal_jitter(exp, jitter)
}

/// A unique consumer name: host, pid and a random suffix.
pub fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let suffix = Uuid::now_v7().simple().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &suffix[suffix.len() - 8..]
    )
}

/// Whole milliseconds of `d`, saturating.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_is_capped_and_keeps_half_fixed() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(retry_delay(base, max, 1, 0.0), Duration::from_millis(50));
        assert_eq!(retry_delay(base, max, 3, 0.0), Duration::from_millis(200));
        let top = retry_delay(base, max, 3, 0.999_999);
        assert!(top < Duration::from_millis(400) && top > Duration::from_millis(399));
        // Past the cap, and far past it (no overflow).
        assert_eq!(retry_delay(base, max, 5, 0.0), max / 2);
        assert_eq!(retry_delay(base, max, u32::MAX, 0.0), max / 2);
        assert!(retry_delay(base, max, u32::MAX, 0.999_999) <= max);
    }
}
