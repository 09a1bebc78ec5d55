//! Every Lua script of the protocol, each in its own `.lua` file under
//! `lua/` that names its KEYS and ARGV at the top, and how they are sent:
//! in pipelines split by hash slot, surviving a Redis restart (or a
//! failover) that emptied the script cache, and optionally confirmed by
//! `WAIT` on a replica.
//!
//! Rules every script keeps, so Redis Cluster accepts it: every key it
//! touches comes in through `KEYS` (no key name is built inside Lua), and
//! all its keys share a hash slot (see [`super::keys`]).

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::cluster_routing::Slot;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};

use super::QueueError;

fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}

const USAGE_RELEASE: &str = include_str!("lua/usage_release.lua");
const ENTRY_PAYLOAD: &str = include_str!("lua/entry_payload.lua");
const REGISTRY_COMMON: &str = include_str!("lua/registry_common.lua");
const WEBHOOK_QUEUE: &str = include_str!("lua/webhook_queue.lua");

macro_rules! scripts {
    ($($(#[$doc:meta])* $name:ident = [$($part:expr),*];)*) => {
        $(
            $(#[$doc])*
            pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| script(&[$($part),*]));
        )*
        /// Every script's source, for the tests that check them.
        #[cfg(test)]
        pub(crate) fn sources() -> Vec<(&'static str, String)> {
            vec![$((stringify!($name), [$($part),*].concat())),*]
        }
    };
}

scripts! {
    /// [`super::ops::submit`].
    SUBMIT = [include_str!("lua/submit.lua")];
    /// [`super::ops::cancel`].
    CANCEL = [WEBHOOK_QUEUE, USAGE_RELEASE, include_str!("lua/cancel.lua")];
    /// [`super::consume::start`].
    START = [WEBHOOK_QUEUE, ENTRY_PAYLOAD, USAGE_RELEASE, include_str!("lua/start.lua")];
    /// [`super::consume::finish`].
    FINISH = [WEBHOOK_QUEUE, ENTRY_PAYLOAD, USAGE_RELEASE, include_str!("lua/finish.lua")];
    /// [`super::consume::renew`].
    RENEW = [include_str!("lua/renew.lua")];
    /// [`super::consume::write_progress`].
    PROGRESS = [WEBHOOK_QUEUE, include_str!("lua/progress.lua")];
    /// [`super::consume::release_due`].
    RELEASE_DUE = [include_str!("lua/release_due.lua")];
    /// [`super::consume::trim_acked`].
    TRIM = [include_str!("lua/trim.lua")];
    /// [`super::ratelimit::take`].
    TAKE = [include_str!("lua/take.lua")];
    /// [`super::heartbeat::beat`].
    BEAT = [include_str!("lua/beat.lua")];
    /// [`super::loading::mark`].
    MARK = [include_str!("lua/mark.lua")];
    /// [`super::loading`]'s quarantine.
    QUARANTINE = [include_str!("lua/quarantine.lua")];
    /// [`super::blobs`]: count a version's bytes found uncounted.
    ADOPT = [include_str!("lua/adopt.lua")];
    /// [`super::blobs`]: delete a blob nothing references.
    DROP_UNREFERENCED = [include_str!("lua/drop_unreferenced.lua")];
    /// [`super::datasets::put`].
    DATASET_PUT = [USAGE_RELEASE, include_str!("lua/dataset_put.lua")];
    /// [`super::datasets::delete`].
    DATASET_DELETE = [USAGE_RELEASE, include_str!("lua/dataset_delete.lua")];
    /// [`super::registry`]: a new version.
    REGISTER = [REGISTRY_COMMON, include_str!("lua/register.lua")];
    /// [`super::registry`]: make a version current.
    PROMOTE_VERSION = [REGISTRY_COMMON, include_str!("lua/promote_version.lua")];
    /// [`super::registry`]: back to the previous current version.
    ROLLBACK = [REGISTRY_COMMON, include_str!("lua/rollback.lua")];
    /// [`super::registry`]: a validation's verdict.
    SETTLE = [REGISTRY_COMMON, include_str!("lua/settle.lua")];
    /// [`super::registry`]: delete a version.
    DELETE_VERSION = [REGISTRY_COMMON, include_str!("lua/delete_version.lua")];
    /// The dead-letter replay.
    REPLAY = [include_str!("lua/replay.lua")];
    /// [`super::webhooks::outbox::settle`].
    WEBHOOK_SETTLE = [include_str!("lua/webhook_settle.lua")];
    /// [`super::webhooks::outbox::release_due`].
    WEBHOOK_RELEASE = [include_str!("lua/webhook_release.lua")];
    /// [`super::webhooks::outbox::replay`].
    WEBHOOK_REPLAY = [include_str!("lua/webhook_replay.lua")];
    /// [`super::webhooks::secrets::rotate`].
    WEBHOOK_ROTATE = [include_str!("lua/webhook_rotate.lua")];
    /// [`super::watch::watch_job`].
    WATCH = [include_str!("lua/watch.lua")];
}

/// How sure a write must be before the caller acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledged by the master: lost if the master dies before its
    /// replica copied it.
    #[default]
    Async,
    /// Copied to at least `replicas` replicas (`WAIT`), within `timeout_ms`.
    Replicated { replicas: u32, timeout_ms: u64 },
}

/// Runs many invocations of one script, one pipelined round trip per hash
/// slot (a cluster refuses a pipeline that crosses slots; on one node the
/// keys of one partition share a slot too, so the common case is one round
/// trip). `first_keys[i]` is invocation `i`'s first key, which its slot is
/// read from. Answers come back in invocation order.
///
/// EVALSHA fails with NOSCRIPT after a restart or a failover to a replica
/// that never saw the script; then the script is loaded (on every node)
/// and the pipeline sent once more. Invocations are safe to resend: one
/// that failed with NOSCRIPT did not run.
///
/// Under [`Durability::Replicated`] each pipeline ends with `WAIT`, on the
/// same connection to the same master, so it covers these writes.
pub(crate) async fn invoke_all<T: redis::FromRedisValue>(
    conn: &mut impl ConnectionLike,
    script: &Script,
    first_keys: &[&str],
    invocations: &[redis::ScriptInvocation<'_>],
    durability: Durability,
) -> Result<Vec<T>, QueueError> {
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, key) in first_keys.iter().enumerate() {
        let slot = Slot::for_key(key);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    let mut out: Vec<Option<T>> = (0..invocations.len()).map(|_| None).collect();
    for (_, members) in &groups {
        let mut pipe = redis::pipe();
        for &i in members {
            pipe.invoke_script(&invocations[i]);
        }
        if let Durability::Replicated {
            replicas,
            timeout_ms,
        } = durability
        {
            pipe.cmd("WAIT").arg(replicas).arg(timeout_ms);
        }
        let mut values = match pipe.query_async::<Vec<Value>>(conn).await {
            Err(e) if is_noscript(&e) => {
                script.load_async(conn).await?;
                pipe.query_async::<Vec<Value>>(conn).await?
            }
            other => other?,
        };
        if let Durability::Replicated { replicas, .. } = durability {
            let acked: i64 = match values.pop() {
                Some(v) => redis::from_redis_value(v).map_err(RedisError::from)?,
                None => 0,
            };
            if acked < i64::from(replicas) {
                return Err(QueueError::NotReplicated {
                    acked: u32::try_from(acked.max(0)).unwrap_or(0),
                    wanted: replicas,
                });
            }
        }
        if values.len() != members.len() {
            return Err(QueueError::Corrupt(format!(
                "{} answers for {} script calls",
                values.len(),
                members.len()
            )));
        }
        for (&i, v) in members.iter().zip(values) {
            out[i] = Some(redis::from_redis_value(v).map_err(RedisError::from)?);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// One invocation, with [`invoke_all`]'s slot split, NOSCRIPT recovery
/// and durability.
pub(crate) async fn invoke<T: redis::FromRedisValue>(
    conn: &mut impl ConnectionLike,
    script: &Script,
    first_key: &str,
    invocation: &redis::ScriptInvocation<'_>,
    durability: Durability,
) -> Result<T, QueueError> {
    if durability == Durability::Async {
        return Ok(invocation.invoke_async(conn).await?);
    }
    let mut answers = invoke_all(
        conn,
        script,
        &[first_key],
        std::slice::from_ref(invocation),
        durability,
    )
    .await?;
    answers
        .pop()
        .ok_or_else(|| QueueError::Corrupt("a script call went unanswered".into()))
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobRecord, JobStatus};

    /// The scripts that read or write job records.
    const JOB_SCRIPTS: [&str; 10] = [
        "SUBMIT",
        "CANCEL",
        "START",
        "FINISH",
        "RENEW",
        "PROGRESS",
        "RELEASE_DUE",
        "REPLAY",
        "WEBHOOK_SETTLE",
        "WATCH",
    ];

    /// The argument text of every `redis.call('CMD', ...)` in `src`,
    /// with its command.
    fn calls(src: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = src;
        while let Some(i) = rest.find("call('") {
            let after = &rest[i + 6..];
            let Some(end) = after.find('\'') else { break };
            let cmd = after[..end].to_owned();
            let mut depth = 1;
            let mut args = String::new();
            for c in after[end + 1..].chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                args.push(c);
            }
            out.push((cmd, args));
            rest = after;
        }
        out
    }

    /// `src` without its comments, whose apostrophes would pair up with
    /// the quotes of literals.
    fn code(src: &str) -> String {
        src.lines()
            .map(|l| l.split_once("--").map_or(l, |(c, _)| c))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The text of every `record` table a script builds for one
    /// `HSET ..., unpack(record)` (a call costs Redis more than a field
    /// does): its constructor and each `record[#record + 1] = ...` line.
    fn record_tables(src: &str) -> Vec<String> {
        let mut out = Vec::new();
        if !src.contains("unpack(record)") {
            return out;
        }
        let mut rest = src;
        while let Some(i) = rest.find("local record = {") {
            let after = &rest[i..];
            let end = after.find('}').unwrap_or(after.len());
            out.push(after[..end].to_owned());
            rest = &after[end..];
        }
        out.extend(
            src.lines()
                .filter_map(|l| l.split_once("record[#record + 1] ="))
                .map(|(_, assigned)| assigned.to_owned()),
        );
        out
    }

    #[test]
    fn a_record_table_is_written_by_an_hset() {
        for (name, src) in sources() {
            let src = code(&src);
            if src.contains("local record = {") {
                assert!(
                    calls(&src)
                        .iter()
                        .any(|(cmd, args)| cmd == "HSET" && args.contains("unpack(record)")),
                    "{name} builds a record table no HSET writes"
                );
            }
        }
    }

    fn literals(args: &str) -> Vec<&str> {
        args.split('\'').skip(1).step_by(2).collect()
    }

    #[test]
    fn no_script_builds_a_key_name() {
        for (name, src) in sources() {
            let src = code(&src);
            for (cmd, args) in calls(&src) {
                let first = args
                    .trim_start_matches([',', ' '])
                    .split(',')
                    .next()
                    .unwrap_or("");
                assert!(
                    !first.contains(".."),
                    "{name}: {cmd} on a key built in Lua: {first}"
                );
            }
            // A key assembled in a local first: its pieces are literals.
            for lit in literals(&src) {
                for part in [
                    ":job:",
                    ":stream:",
                    ":delayed",
                    ":dead",
                    ":usage:",
                    ":registry",
                ] {
                    assert!(!lit.contains(part), "{name}: key-like literal {lit:?}");
                }
            }
        }
    }

    #[test]
    fn every_script_names_its_keys_and_args_at_the_top() {
        for (name, src) in sources() {
            assert!(src.contains("KEYS"), "{name} takes no KEYS");
        }
        for file in [
            include_str!("lua/submit.lua"),
            include_str!("lua/start.lua"),
            include_str!("lua/finish.lua"),
            include_str!("lua/release_due.lua"),
            include_str!("lua/cancel.lua"),
            include_str!("lua/replay.lua"),
            include_str!("lua/webhook_settle.lua"),
            include_str!("lua/webhook_release.lua"),
            include_str!("lua/webhook_replay.lua"),
            include_str!("lua/webhook_rotate.lua"),
        ] {
            let head: String = file.lines().take_while(|l| l.starts_with("--")).collect();
            assert!(head.contains("KEYS") && head.contains("ARGV"), "{head}");
        }
    }

    #[test]
    fn record_fields_in_lua_are_the_rust_list() {
        let statuses = [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Canceled,
        ];
        let mut used = std::collections::BTreeSet::new();
        for (name, src) in sources() {
            if !JOB_SCRIPTS.contains(&name) {
                continue;
            }
            let src = code(&src);
            let mut hash_args: Vec<(String, String)> = calls(&src)
                .into_iter()
                .filter(|(cmd, _)| cmd.starts_with('H'))
                .collect();
            hash_args.extend(record_tables(&src).into_iter().map(|t| ("HSET".into(), t)));
            for (cmd, args) in hash_args {
                for lit in literals(&args) {
                    // Usage hashes count `jobs` and `bytes`; records hold
                    // statuses as values.
                    if lit == "jobs" || statuses.iter().any(|s| s.as_str() == lit) {
                        continue;
                    }
                    assert!(
                        JobRecord::ALL_FIELDS.contains(&lit),
                        "{name}: {cmd} uses record field {lit:?}, not in JobRecord::ALL_FIELDS"
                    );
                    used.insert(lit.to_owned());
                }
            }
        }
        for field in JobRecord::FIELDS {
            assert!(JobRecord::ALL_FIELDS.contains(&field), "{field}");
        }
        // Every field the list names is written by some script (results
        // and progress are written through ARGV-driven HSETs too).
        for field in JobRecord::ALL_FIELDS {
            assert!(used.contains(field), "no script uses {field:?}");
        }
    }
}
