//! Replaying a dead letter: the job goes back on its work stream with the
//! same id and payload, and its dead-letter entry is deleted, all inside
//! one Lua script ([`crate::queue::scripts`]' `REPLAY`) so a replay is
//! all-or-nothing. The script must still find the entry (else someone
//! replayed it first and nothing is written) and refuses a job that is
//! queued or running already (a job dead-lettered twice has two entries;
//! replaying both would run it twice).

use redis::aio::ConnectionLike;

use super::{AdminError, DeadLetter};
use crate::queue::QueueError;
use crate::queue::keys::{GROUP, Keys, partition_of};
use crate::queue::scripts::REPLAY;

/// What [`replay`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Back on the work stream under this new entry id.
    Replayed { stream_entry_id: String },
    /// The dead-letter entry was already gone (replayed concurrently);
    /// nothing was written.
    AlreadyReplayed,
    /// The job is `queued` or `running` again already; nothing was written
    /// and the dead-letter entry was kept.
    JobActive { status: String },
}

/// Replays one dead letter; the replay script (`lua/replay.lua`) says the
/// exact steps. Entries whose payload does not decode, or disagrees with
/// the entry's `id` or `model` fields, are refused with
/// [`AdminError::NotReplayable`] because a worker could not run them either.
pub async fn replay(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    dl: &DeadLetter,
) -> Result<ReplayOutcome, AdminError> {
    let not_replayable = |reason: String| AdminError::NotReplayable {
        entry_id: dl.entry_id.clone(),
        reason,
    };
    if let Some(reason) = dl.replay_blocker() {
        return Err(not_replayable(reason));
    }
    let env = dl
        .envelope
        .as_ref()
        .map_err(|e| not_replayable(e.clone()))?;
    let reply: Vec<String> = REPLAY
        .key(keys.dead_letters(dl.partition))
        .key(keys.job(&env.id))
        .key(keys.stream_of(env.kind(), &env.model, &env.id))
        .key(keys.delayed_of(env.kind(), &env.model, &env.id))
        .key(keys.job_usage(crate::model::tenant_of(&env.model), partition_of(&env.id)))
        .arg(&dl.entry_id)
        .arg(env.id.to_string())
        .arg(&dl.payload)
        .arg(env.kind().as_str())
        .arg(&env.model)
        .arg(env.submitted_at_ms)
        .arg(GROUP)
        .invoke_async(conn)
        .await?;
    match reply.as_slice() {
        [tag, id] if tag == "replayed" => Ok(ReplayOutcome::Replayed {
            stream_entry_id: id.clone(),
        }),
        [tag] if tag == "gone" => Ok(ReplayOutcome::AlreadyReplayed),
        [tag, status] if tag == "active" => Ok(ReplayOutcome::JobActive {
            status: status.clone(),
        }),
        other => {
            Err(QueueError::Corrupt(format!("unexpected replay script reply {other:?}")).into())
        }
    }
}
