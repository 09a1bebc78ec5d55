//! The Redis queue protocol: every key, stream field and state transition the
//! API and the workers agree on. Nothing outside this module names a Redis key.
//!
//! # Data flow
//!
//! ```text
//!  API    ── submit (Lua): idempotency check, queue-depth check, HSET job:{id} status=queued,
//!                          XADD stream:{model} * id {id} job <msgpack>,
//!                          ZADD jobs:{tenant}:{hour} 0 {id}                          (one round trip;
//!                          a bulk submit pipelines the calls, one round trip per partition)
//!  API    ── GET /v1/jobs: ZRANGE jobs:{tenant}:{hour} BYLEX REV per partition, newest hours first,
//!                          then HMGET job:{id} of each id found
//!  worker ── XREADGROUP GROUP workers {consumer} COUNT n BLOCK t STREAMS stream:{m1} … > …
//!         ── XAUTOCLAIM entries whose lease (idle time) expired              (takeover of dead workers)
//!         ── start (Lua): deadline and attempt checks, status → running, attempts += 1
//!                          (PUBLISH job-finished only if the record is `watched`, as progress
//!                          and a retry do: an event stream follows it)
//!         ── inference on a blocking thread, leases renewed meanwhile (XCLAIM JUSTID)
//!         ── finish (Lua): if attempts unchanged → result | error | retry via delayed set |
//!                          dead letter; EXPIRE per state; XACK; PUBLISH job-finished
//!  API    ── GET /v1/jobs/{id}: HMGET job:{id} <record fields>; `?wait` sleeps on the job-finished channel
//!  API    ── DELETE /v1/jobs/{id} (Lua): queued → canceled (workers ack it unrun), or running →
//!                          cancel_requested, which the worker's lease renewal sees: it stops the run
//!                          and finishes the attempt canceled
//!  jobctl ── replay (Lua): dead letter → same id and payload back on the stream
//!  worker ── heartbeat (Lua) every 2 s: ZADD workers:{model} <Redis ms> {consumer}, prune, PEXPIRE
//!  API    ── /readyz, /metrics: ZRANGE workers:{model}; XLEN / XINFO GROUPS / XPENDING per model
//!  worker ── start: register (Lua) each models-dir file in registry:{model}, current, blob:{sha}
//!  API    ── upload: register (Lua, status validating) + submit a validate job on stream:.control
//!  worker ── validate job: ONNX Runtime loads the blob → settle (Lua) ready | invalid
//!  API    ── promote / rollback (Lua): check ready, HSET current, HSET models, INCR registry-epoch,
//!                          PUBLISH events:models + events:registry
//!  worker ── on events:registry or a changed registry-epoch (checked every 2 s): load, then ArcSwap
//!  worker ── around each load of a registry version: HSET loading {consumer} (refreshed every 1 s), HDEL;
//!            a stale marker of another worker → quarantine (Lua): version quarantined, INCR epoch, PUBLISH
//!  API    ── DELETE version (Lua): not current → HDEL version, LREM history, blob-refs −1, DEL blob at 0
//!  jobctl ── sweep-blobs: count pre-existing references, DEL blobs nothing references
//!  API    ── PUT dataset: parse the CSV, then HSET dataset:{name} csv meta, SADD datasets
//!  API    ── retrain: submit a retrain job on stream:.train
//!  worker ── training slot: XREADGROUP COUNT 1 on stream:.train; start; train on a blocking thread,
//!                          HSET job:{id} progress (Lua, only for the current attempt) as epochs pass;
//!                          register (Lua) the new version ready; promote if the policy says so; finish
//! ```
//!
//! # Guarantees
//!
//! * A job is accepted (202) only after its record and its stream entry are
//!   written by one script: there is never a record without an entry or the
//!   reverse, and an `Idempotency-Key` can never create two jobs.
//! * A stream entry is acknowledged only inside the same Lua script that
//!   writes the job's terminal state (or parks it for a retry), so a crash can
//!   neither lose a finished result nor leave a finished job unacknowledged:
//!   until the ack, the entry stays in the consumer group's pending list, and
//!   another worker takes it over once its lease expires.
//! * The finish script is a compare-and-set on the attempt number taken by
//!   the start script: a worker whose attempt is no longer current (it
//!   stalled past its lease) cannot overwrite the result of the attempt that
//!   replaced it.
//! * Streams are trimmed only below the oldest pending and the last delivered
//!   entry, i.e. only of acknowledged entries.
//!
//! See [`keys`] for the key layout and [`wire`] for the stream entry format;
//! [`ops`] holds the API's operations, [`consume`] the worker's and
//! [`admin`] the operator's (`jobctl`); [`heartbeat`] tells which workers
//! serve which model, and [`stats`] reads the queue gauges, for `/metrics`
//! and `jobctl stats` alike; `paging` walks streams and the keyspace.
//! [`registry`] holds model versions, their bytes and the `current` pointer;
//! [`datasets`] the training data retrain jobs read; [`usage`] what each
//! tenant holds (counted by the scripts that change it, checked against its
//! quotas on the way in); [`loading`] the load markers that quarantine a
//! version that killed its worker; [`blobs`] the operator's sweep of
//! unreferenced model bytes; [`index`] the per-tenant job index behind
//! `GET /v1/jobs`, written by the submit script; [`watch`] the mark that
//! makes a job's scripts publish every transition for the API's event
//! streams.

pub mod admin;
pub mod blobs;
pub mod consume;
pub mod datasets;
pub mod heartbeat;
pub mod index;
pub mod keys;
pub mod loading;
pub mod ops;
mod paging;
pub mod ratelimit;
pub mod registry;
pub mod scripts;
pub mod stats;
pub mod usage;
pub mod watch;
pub mod webhooks;
pub mod wire;

pub use keys::Keys;
pub use scripts::Durability;

/// Errors talking to or decoding from the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("encoding a stream entry: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("corrupt data in redis: {0}")]
    Corrupt(String),
    /// A write that [`scripts::Durability::Replicated`] asked to be copied
    /// was acknowledged by fewer replicas than wanted within the timeout.
    /// The write itself happened on the master.
    #[error("{acked} of {wanted} replicas confirmed the write in time")]
    NotReplicated { acked: u32, wanted: u32 },
}

impl QueueError {
    /// Whether the error says Redis could not be reached or did not answer in
    /// time, as opposed to a protocol or data problem.
    pub fn is_unavailable(&self) -> bool {
        match self {
            QueueError::Redis(e) => redis_unavailable(e),
            QueueError::Encode(_) | QueueError::Corrupt(_) | QueueError::NotReplicated { .. } => {
                false
            }
        }
    }
}

/// Connection trouble, or a server that is up but not serving yet (still
/// loading its AOF after a restart, or a replica without its master), or a
/// cluster whose slot is failing over. A MULTI/EXEC or pipeline reports
/// those per command, wrapped in an aborted transaction, so the inner
/// errors are checked too.
fn redis_unavailable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    // While a master fails over, the cluster answers CLUSTERDOWN, TRYAGAIN,
    // READONLY (a demoted master) or redirects (MOVED, ASK) to the node that
    // died; the cluster client retries these within its budget and then
    // returns the last one. The store is moving, not broken: retry later.
    let not_serving = |k: ServerErrorKind| {
        matches!(
            k,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::ReadOnly
        )
    };
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    // The cluster client found no connection for the slot (its node is
    // gone and no other serves it yet).
    if e.kind() == ErrorKind::ClusterConnectionNotFound {
        return true;
    }
    // A Redis at its `maxmemory` with `noeviction` refuses writes: "retry
    // later", like a Redis that is loading. A script is refused at its
    // first write, so nothing half-written is left behind.
    if e.code() == Some("OOM") {
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

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    fn server(kind: ServerErrorKind) -> QueueError {
        QueueError::Redis(RedisError::from((
            ErrorKind::Server(kind),
            "from the server",
        )))
    }

    #[test]
    fn a_cluster_failing_over_is_unavailable_not_broken() {
        for kind in [
            ServerErrorKind::ClusterDown,
            ServerErrorKind::TryAgain,
            ServerErrorKind::Moved,
            ServerErrorKind::Ask,
            ServerErrorKind::ReadOnly,
            ServerErrorKind::MasterDown,
            ServerErrorKind::BusyLoading,
        ] {
            assert!(server(kind).is_unavailable(), "{kind:?}");
        }
        let lost = RedisError::from((ErrorKind::ClusterConnectionNotFound, "no node"));
        assert!(QueueError::Redis(lost).is_unavailable());
        // A script or protocol error is a bug, not an outage.
        assert!(!server(ServerErrorKind::ResponseError).is_unavailable());
        assert!(!server(ServerErrorKind::CrossSlot).is_unavailable());
        assert!(!server(ServerErrorKind::NoScript).is_unavailable());
    }
}
