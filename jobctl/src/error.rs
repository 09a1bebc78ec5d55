//! Everything that can make a `jobctl` command fail, each with a message
//! an operator can act on. `main` prints it on one line and exits 1.

use shared::QueueError;
use shared::queue::admin::{AdminError, TimeArgError};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("invalid --redis-url: {0}")]
    RedisUrl(redis::RedisError),
    #[error("cannot reach Redis at {addr}: {source}")]
    Connect {
        addr: String,
        source: redis::RedisError,
    },
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("{0}")]
    Admin(#[from] AdminError),
    #[error("{0}")]
    Time(#[from] TimeArgError),
    #[error(
        "say what to replay: --all, --model MODEL, --since/--until TIME or --id JOB_ID \
         (add --dry-run to see the selection first)"
    )]
    NoSelector,
    #[error(
        "say which webhook calls to replay: --all, or their entry ids (see `jobctl webhooks list`)"
    )]
    NoWebhookSelector,
    #[error("no dead letter for job {0}")]
    NotFound(Uuid),
    #[error(
        "refusing to replay {0} dead letter(s) without confirmation: stdin is not a terminal, \
         pass --yes"
    )]
    NotConfirmed(usize),
    #[error("{0} dead letter(s) could not be replayed (see above)")]
    ReplayFailures(usize),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding JSON output: {0}")]
    Json(#[from] serde_json::Error),
}

impl CliError {
    /// A closed pipe (`jobctl dead list | head`) is the reader's choice, not
    /// a failure.
    pub(crate) fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}
