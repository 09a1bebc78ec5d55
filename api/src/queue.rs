//! The job store as handlers see it: the process's shared Redis connection
//! and its limits, the key layout, and how submissions and cancels treat the
//! queue. Handlers that touch Redis take it as their `State<Queue>`; it is
//! one part of the application state, a cheap clone (handles and counted
//! references).

use shared::Keys;
use shared::redis_conn::{Conn, Limits};

#[derive(Clone)]
pub(crate) struct Queue {
    conn: Conn,
    keys: Keys,
    limits: Limits,
    policy: QueuePolicy,
}

/// How submissions and cancels treat the queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueuePolicy {
    /// 0 = unbounded.
    pub max_queue_depth: u64,
    /// TTL of an idempotency key (the workers' result TTL).
    pub idempotency_ttl_secs: u64,
    /// TTL of a canceled job's record.
    pub canceled_ttl_secs: u64,
    /// How long a job index bucket outlives its hour: the longest record
    /// TTL the API knows (see [`shared::queue::index`]).
    pub index_ttl_secs: u64,
    /// Whether a 202 waits for a replica's copy of the job.
    pub durability: shared::queue::Durability,
    /// Whether webhooks may point at internal addresses
    /// (`--webhook-allow-private`).
    pub webhook_allow_private: bool,
    /// How long a rotated-out signing secret still signs.
    pub webhook_secret_overlap_secs: u64,
}

impl Queue {
    pub(crate) fn new(conn: Conn, keys: Keys, limits: Limits, policy: QueuePolicy) -> Queue {
        Queue {
            conn,
            keys,
            limits,
            policy,
        }
    }

    /// A handle to the process's shared Redis connection (see
    /// [`shared::redis_conn::shared`]); every command on it is bounded by
    /// the configured Redis limits.
    pub(crate) fn conn(&self) -> Conn {
        self.conn.clone()
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) fn redis_limits(&self) -> Limits {
        self.limits
    }

    pub(crate) fn policy(&self) -> &QueuePolicy {
        &self.policy
    }
}
