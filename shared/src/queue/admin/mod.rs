//! Operator operations on the queue, as `jobctl` runs them: listing and
//! selecting dead letters ([`list_dead`], module `dead`), replaying them
//! onto their work streams ([`replay()`], module `replay`), a job record as
//! stored ([`job_snapshot`]), per-model queue statistics ([`queue_stats`],
//! module `overview`, over the gauges of [`super::stats`]) and the
//! operator's time arguments ([`parse_time_arg`]). Everything here only
//! reads, except [`replay()`], whose writes all happen inside one Lua script
//! so a replay is all-or-nothing.
//!
//! The submodules are private; their items are re-exported here, so
//! callers name `admin::list_dead`, `admin::replay`, `admin::queue_stats`.

mod dead;
mod job;
mod overview;
mod replay;
mod time_arg;

pub use dead::{DeadLetter, DeadLetterFilter, list_dead};
pub use job::{JobSnapshot, job_snapshot};
pub use overview::{ConsumerStats, OldestPending, QueueOverview, QueueStats, queue_stats};
pub use replay::{ReplayOutcome, replay};
pub use time_arg::{TimeArgError, parse_time_arg};

use super::QueueError;

/// Errors of the operator operations.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("dead letter {entry_id} cannot be replayed: {reason}")]
    NotReplayable { entry_id: String, reason: String },
}

impl From<redis::RedisError> for AdminError {
    fn from(e: redis::RedisError) -> AdminError {
        AdminError::Queue(QueueError::Redis(e))
    }
}

impl AdminError {
    /// Whether Redis could not be reached (retrying other entries is futile).
    pub fn is_unavailable(&self) -> bool {
        match self {
            AdminError::Queue(e) => e.is_unavailable(),
            AdminError::NotReplayable { .. } => false,
        }
    }
}
