//! Command-line surface of `jobctl`: flags, environment fallbacks and
//! subcommands. Parsing only; [`crate::commands`] does the work.

use clap::{Args as ClapArgs, Parser, Subcommand};
use uuid::Uuid;

/// Operator tool for the inference queue: inspect and replay dead letters,
/// show per-model queue statistics.
#[derive(Debug, Parser)]
#[command(name = "jobctl", version)]
pub(crate) struct Args {
    /// Redis to use.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,
    /// Prefix of every Redis key; must match the API's and workers'.
    #[arg(long, env = "QUEUE_NAMESPACE", default_value = "infer", global = true)]
    pub namespace: String,

    #[command(flatten)]
    pub queue: shared::queue_args::QueueArgs,
    /// Connect and response limit for Redis, in milliseconds.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 5000, global = true)]
    pub redis_timeout_ms: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Inspect the dead-letter queue.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Put dead letters back on their work streams (same job id, same
    /// payload, record reset to `queued`).
    Replay(ReplayArgs),
    /// Per-model queue depth, lag, pending entries, consumers and dead
    /// letters.
    Stats(StatsArgs),
    /// Delete model bytes (`{ns}:blob:*`) that no version references, and
    /// count the references of versions stored before reference counts
    /// existed (run once after upgrading; safe to run any time).
    SweepBlobs(SweepArgs),
    /// Webhook calls that exhausted their retries: list them, send them
    /// again.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum WebhooksCommand {
    /// List dead webhook calls, oldest first (per partition).
    List(WebhookListArgs),
    /// Put dead webhook calls back in their outbox (same webhook-id,
    /// retries counted again from zero).
    Replay(WebhookReplayArgs),
}

#[derive(Debug, ClapArgs)]
pub(crate) struct WebhookListArgs {
    /// Show at most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct WebhookReplayArgs {
    /// Every dead webhook call.
    #[arg(long, conflicts_with = "entry")]
    pub all: bool,
    /// The dead-letter entries to replay (the first column of `list`).
    pub entry: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct SweepArgs {
    /// List what would be deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadCommand {
    /// List dead letters, oldest first.
    List(ListArgs),
    /// Everything about one dead-lettered job.
    Show(ShowArgs),
}

/// Time arguments accept RFC 3339 (`2026-11-22T06:40:00Z`) or an age
/// counted back from now (`90s`, `30m`, `1h`, `2d`, `1h30m`).
#[derive(Debug, Clone, Default, ClapArgs)]
pub(crate) struct Selection {
    /// Only dead letters of this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only dead letters that failed at or after this time.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only dead letters that failed before this time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Show at most this many (the oldest).
    #[arg(long)]
    pub limit: Option<usize>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct ShowArgs {
    pub job_id: Uuid,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct ReplayArgs {
    /// Every dead letter.
    #[arg(long, conflicts_with_all = ["model", "since", "until", "ids"])]
    pub all: bool,
    #[command(flatten)]
    pub selection: Selection,
    /// These jobs (repeat the flag or list several ids).
    #[arg(long = "id", value_name = "ID", num_args = 1..)]
    pub ids: Vec<Uuid>,
    /// List what would be replayed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short, long)]
    pub yes: bool,
}

impl ReplayArgs {
    /// Whether the operator said what to replay; replaying everything must be
    /// asked for with `--all`, never be the default.
    pub(crate) fn has_selector(&self) -> bool {
        self.all
            || self.selection.model.is_some()
            || self.selection.since.is_some()
            || self.selection.until.is_some()
            || !self.ids.is_empty()
    }
}

#[derive(Debug, ClapArgs)]
pub(crate) struct StatsArgs {
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_definition_is_consistent() {
        Args::command().debug_assert();
    }

    fn replay(args: &[&str]) -> Result<ReplayArgs, clap::Error> {
        let mut argv = vec!["jobctl", "replay"];
        argv.extend(args);
        match Args::try_parse_from(argv)?.command {
            Command::Replay(r) => Ok(r),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn replay_needs_an_explicit_selector() {
        assert!(!replay(&[]).unwrap().has_selector());
        assert!(!replay(&["--dry-run", "--yes"]).unwrap().has_selector());
        assert!(replay(&["--all"]).unwrap().has_selector());
        assert!(replay(&["--model", "m"]).unwrap().has_selector());
        assert!(replay(&["--since", "1h"]).unwrap().has_selector());
        assert!(replay(&["--until", "1h"]).unwrap().has_selector());
        let id = Uuid::now_v7().to_string();
        assert!(replay(&["--id", &id]).unwrap().has_selector());
    }

    #[test]
    fn ids_can_be_listed_or_repeated_and_must_be_uuids() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let r = replay(&[
            "--id",
            &a.to_string(),
            &b.to_string(),
            "--id",
            &c.to_string(),
        ])
        .unwrap();
        assert_eq!(r.ids, vec![a, b, c]);
        assert!(replay(&["--id", "nope"]).is_err());
    }

    #[test]
    fn all_excludes_every_other_selector() {
        assert!(replay(&["--all", "--model", "m"]).is_err());
        assert!(replay(&["--all", "--since", "1h"]).is_err());
        assert!(replay(&["--all", "--id", &Uuid::now_v7().to_string()]).is_err());
        assert!(replay(&["--all", "--dry-run"]).is_ok());
    }
}
