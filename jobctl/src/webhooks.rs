//! `jobctl webhooks list | replay`: the webhook calls that exhausted their
//! retries (see [`shared::queue::webhooks`]), and putting them back in
//! their outbox, same `webhook-id`, tries reset, for the dispatchers to
//! send again.

use std::io::Write;

use serde::Serialize;
use shared::Keys;
use shared::queue::webhooks::outbox::{self, DeadCall};
use shared::redis_conn::Conn;
use shared::time::rfc3339_ms;

use crate::cli::{WebhookListArgs, WebhookReplayArgs};
use crate::error::CliError;

/// Most dead calls one command reads.
const MAX_LISTED: usize = 100_000;

#[derive(Serialize)]
struct Row<'a> {
    entry_id: &'a str,
    partition: u16,
    job_id: Option<String>,
    event: Option<&'static str>,
    webhook_id: Option<String>,
    tries: Option<u32>,
    error: &'a str,
    failed_at: Option<String>,
}

fn row(d: &DeadCall) -> Row<'_> {
    let call = d.call.as_ref().ok();
    Row {
        entry_id: &d.entry_id,
        partition: d.partition,
        job_id: call.map(|c| c.id.to_string()),
        event: call.map(|c| c.event.as_str()),
        webhook_id: call.map(|c| c.webhook_id()),
        tries: call.map(|c| c.tries),
        error: &d.error,
        failed_at: d.failed_at_ms.map(rfc3339_ms),
    }
}

pub(crate) async fn list(
    conn: &mut Conn,
    keys: &Keys,
    args: &WebhookListArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let dead = outbox::dead(conn, keys, args.limit.min(MAX_LISTED)).await?;
    if args.json {
        let rows: Vec<Row<'_>> = dead.iter().map(row).collect();
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        out.write_all(b"\n")?;
        return Ok(());
    }
    writeln!(out, "{} dead webhook call(s)", dead.len())?;
    for d in &dead {
        let r = row(d);
        writeln!(
            out,
            "{}  p{}  job {}  {}  tries {}  failed {}  {}",
            r.entry_id,
            r.partition,
            r.job_id.as_deref().unwrap_or("?"),
            r.event.unwrap_or("?"),
            r.tries.map_or("?".into(), |t| t.to_string()),
            r.failed_at.as_deref().unwrap_or("?"),
            r.error
        )?;
    }
    Ok(())
}

pub(crate) async fn replay(
    conn: &mut Conn,
    keys: &Keys,
    args: &WebhookReplayArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    if !args.all && args.entry.is_empty() {
        return Err(CliError::NoWebhookSelector);
    }
    let dead = outbox::dead(conn, keys, MAX_LISTED).await?;
    let chosen: Vec<&DeadCall> = dead
        .iter()
        .filter(|d| args.all || args.entry.contains(&d.entry_id))
        .collect();
    let mut replayed = 0;
    for d in &chosen {
        if outbox::replay(conn, keys, d).await? {
            replayed += 1;
        } else {
            writeln!(out, "{}: already replayed, or unreadable", d.entry_id)?;
        }
    }
    writeln!(out, "replayed {replayed} webhook call(s)")?;
    Ok(())
}
