//! Code both binaries share: the data model of a job and its tensors, the Redis
//! queue protocol (key layout, stream wire format, atomic state transitions),
//! connection set-up and logging, and the small helpers both need exactly
//! once: [`backoff`], the [`shutdown`] signal, [`digest`]s, tenant-qualified
//! names ([`model::Qualified`]) and the count of failed Redis calls
//! ([`redis_errors`]).
//!
//! The API writes jobs through [`queue`] and the worker reads and finishes them
//! through the same module, so the two sides cannot drift apart: every Redis
//! key, stream field and Lua script lives in `queue/`.

#[cfg(feature = "jemalloc")]
pub mod allocator;
pub mod backoff;
pub mod digest;
pub mod job;
pub mod json_log;
pub mod metric_names;
pub mod model;
pub mod packed;
pub mod queue;
pub mod queue_args;
pub mod redis_conn;
pub mod redis_errors;
pub mod retrain;
pub mod shutdown;
pub mod telemetry;
pub mod tensor;
pub mod time;
pub mod trace;

pub use queue::{Keys, QueueError};
