//! The command-line settings of the queue that the API, the workers and
//! `jobctl` must agree on besides the namespace: how many partitions each
//! model's stream has, and how sure a write must be before it is acted on.
//! One definition, flattened into each binary's configuration.

use crate::queue::Durability;
use crate::queue::keys::MAX_PARTITIONS;

/// How sure the queue's writes must be (see [`Durability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityMode {
    /// A write is acted on once its master has it (Redis's own default).
    Async,
    /// A submit is answered 202, and a worker's finish counts, only once a
    /// replica holds it too (`WAIT 1`).
    Replicated,
}

#[derive(Debug, Clone, clap::Args)]
pub struct QueueArgs {
    /// Stream partitions per model, each under its own hash tag (on a
    /// cluster, its own slot): set it to at least the number of masters.
    /// API, workers and jobctl must agree; see the README on changing it.
    #[arg(long, env = "QUEUE_PARTITIONS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_PARTITIONS)))]
    pub partitions: u16,

    /// `async`: a write counts once the master has it. `replicated`: the
    /// 202 of a submit and a worker's finish wait until a replica confirms
    /// it (`WAIT`); a write no replica confirms in time is answered 503
    /// `not_replicated` (submit) or retried (finish).
    #[arg(long, env = "DURABILITY", value_enum, default_value_t = DurabilityMode::Async)]
    pub durability: DurabilityMode,

    /// How long a `replicated` write waits for its replica, in ms.
    #[arg(long, env = "REPLICATION_TIMEOUT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub replication_timeout_ms: u64,
}

impl QueueArgs {
    pub fn durability(&self) -> Durability {
        match self.durability {
            DurabilityMode::Async => Durability::Async,
            DurabilityMode::Replicated => Durability::Replicated {
                replicas: 1,
                timeout_ms: self.replication_timeout_ms,
            },
        }
    }

    /// The key layout of `namespace` with these partitions.
    pub fn keys(&self, namespace: &str) -> crate::queue::Keys {
        crate::queue::Keys::with_partitions(namespace, self.partitions)
    }
}
