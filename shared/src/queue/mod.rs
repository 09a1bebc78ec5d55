//! The Redis queue protocol: every key, stream field and state transition the
//! API and the workers agree on. Nothing outside this module names a Redis key.
//!
//! # Data flow
//!
//! ```text
//!  API  ── submit: MULTI { HSET job:{id} status=queued …; XADD stream:{model} * id {id} job <msgpack> } EXEC
//!  worker ── XREADGROUP GROUP workers {consumer} COUNT n BLOCK t STREAMS stream:{m1} stream:{m2} … > > …
//!         ── start (Lua): status queued|running → running, attempts += 1      (one pipelined round trip per read)
//!         ── inference on a blocking thread
//!         ── finish (Lua): if attempts unchanged → HSET result/error, EXPIRE ttl, XACK, PUBLISH job-finished
//!  API  ── GET /v1/jobs/{id}: HGETALL job:{id}; `?wait` sleeps on the job-finished channel
//! ```
//!
//! # Guarantees
//!
//! * A job is accepted (202) only after its record and its stream entry are
//!   written in one MULTI/EXEC: there is never a record without an entry or
//!   the reverse.
//! * A stream entry is acknowledged only inside the same Lua script that
//!   writes the job's terminal state, so a crash can neither lose a finished
//!   result nor leave a finished job unacknowledged: until the ack, the entry
//!   stays in the consumer group's pending list.
//! * The finish script is a compare-and-set on the attempt number taken by
//!   the start script: a worker whose attempt is no longer current cannot
//!   overwrite the result of the attempt that replaced it.
//!
//! See [`keys`] for the key layout and [`wire`] for the stream entry format;
//! [`ops`] holds the API's operations, [`consume`] the worker's.

pub mod admin;
pub mod consume;
pub mod keys;
pub mod ops;
mod scripts;
pub mod wire;

pub use keys::Keys;

/// Errors talking to or decoding from the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis connection pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("encoding a stream entry: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("corrupt data in redis: {0}")]
    Corrupt(String),
}

impl QueueError {
    /// Whether the error says Redis could not be reached or did not answer in
    /// time, as opposed to a protocol or data problem.
    pub fn is_unavailable(&self) -> bool {
        match self {
            QueueError::Redis(e) => redis_unavailable(e),
            QueueError::Pool(_) => true,
            QueueError::Encode(_) | QueueError::Corrupt(_) => false,
        }
    }
}

/// Connection trouble, or a server that is up but not serving yet (still
/// loading its AOF after a restart, or a replica without its master). A
/// MULTI/EXEC or pipeline reports those per command, wrapped in an aborted
/// transaction, so the inner errors are checked too.
fn redis_unavailable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    let not_serving = |k: ServerErrorKind| {
        matches!(
            k,
            ServerErrorKind::BusyLoading | ServerErrorKind::TryAgain | ServerErrorKind::MasterDown
        )
    };
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    if let ErrorKind::Server(k) = e.kind()
        && not_serving(k)
    {
        return true;
    }
    e.clone()
        .into_server_errors()
        .is_some_and(|errs| errs.iter().any(|(_, s)| s.kind().is_some_and(not_serving)))
}
