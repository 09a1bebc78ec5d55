//! What each `jobctl` subcommand does: connect, call the operator operations
//! of [`shared::queue::admin`], render the answer. Results go to stdout,
//! progress and per-entry problems to stderr, so output stays pipeable.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shared::Keys;
use shared::queue::admin::{
    self, AdminError, DeadLetter, DeadLetterFilter, ReplayOutcome, job_snapshot, list_dead,
    parse_time_arg, queue_stats,
};
use shared::redis_conn::{self, Conn, Limits, Topology};
use shared::time::now_ms;

use crate::cli::{
    Args, Command, DeadCommand, ListArgs, ReplayArgs, Selection, ShowArgs, SweepArgs,
    WebhooksCommand,
};
use crate::error::CliError;
use crate::{render, webhooks};

/// Runs the parsed command.
pub(crate) async fn run(args: Args) -> Result<(), CliError> {
    validate(&args)?;
    let keys = args.queue.keys(&args.namespace);
    let mut conn = connect(&args).await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        Command::Dead {
            command: DeadCommand::List(a),
        } => dead_list(&mut conn, &keys, &a, &mut out).await?,
        Command::Dead {
            command: DeadCommand::Show(a),
        } => dead_show(&mut conn, &keys, &a, &mut out).await?,
        Command::Replay(a) => replay(&mut conn, &keys, &a, &mut out).await?,
        Command::Stats(a) => stats(&mut conn, &keys, a.json, &mut out).await?,
        Command::SweepBlobs(a) => sweep_blobs(&mut conn, &keys, &a, &mut out).await?,
        Command::Webhooks {
            command: WebhooksCommand::List(a),
        } => webhooks::list(&mut conn, &keys, &a, &mut out).await?,
        Command::Webhooks {
            command: WebhooksCommand::Replay(a),
        } => webhooks::replay(&mut conn, &keys, &a, &mut out).await?,
    }
    out.flush()?;
    Ok(())
}

/// Rejects a bad command line before touching Redis, so a typo is reported
/// as a typo even when Redis is down.
fn validate(args: &Args) -> Result<(), CliError> {
    match &args.command {
        Command::Replay(a) if !a.has_selector() => Err(CliError::NoSelector),
        Command::Replay(ReplayArgs { selection, .. })
        | Command::Dead {
            command: DeadCommand::List(ListArgs { selection, .. }),
        } => filter_of(selection, now_ms()).map(drop),
        _ => Ok(()),
    }
}

/// One dedicated connection, checked with PING so that an unreachable or
/// misconfigured Redis is reported as such before any command runs.
async fn connect(args: &Args) -> Result<Conn, CliError> {
    let topology = Topology::parse(&args.redis_url).map_err(CliError::RedisUrl)?;
    // The address only: the URL may carry a password.
    let first = match &topology {
        Topology::Single(url) => Some(url),
        Topology::Cluster(nodes) => nodes.first(),
    };
    let addr = match first {
        Some(url) => redis::Client::open(url.as_str())
            .map_err(CliError::RedisUrl)?
            .get_connection_info()
            .addr()
            .to_string(),
        None => String::new(),
    };
    let limit = Duration::from_millis(args.redis_timeout_ms.max(1));
    let limits = Limits {
        connect: limit,
        response: limit,
    };
    let connect_err = |source| CliError::Connect {
        addr: addr.clone(),
        source,
    };
    let mut conn = redis_conn::dedicated(&topology, limits)
        .await
        .map_err(connect_err)?;
    redis::cmd("PING")
        .query_async::<()>(&mut conn)
        .await
        .map_err(connect_err)?;
    Ok(conn)
}

fn filter_of(sel: &Selection, now: i64) -> Result<DeadLetterFilter, CliError> {
    let time = |t: &Option<String>| t.as_deref().map(|s| parse_time_arg(s, now)).transpose();
    Ok(DeadLetterFilter {
        model: sel.model.clone(),
        since_ms: time(&sel.since)?,
        until_ms: time(&sel.until)?,
        job_ids: Vec::new(),
        limit: None,
    })
}

async fn dead_list(
    conn: &mut Conn,
    keys: &Keys,
    a: &ListArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let filter = DeadLetterFilter {
        limit: a.limit,
        ..filter_of(&a.selection, now_ms())?
    };
    let letters = list_dead(conn, keys, &filter).await?;
    if a.json {
        for dl in &letters {
            serde_json::to_writer(&mut *out, &render::DeadLetterJson::new(dl))?;
            out.write_all(b"\n")?;
        }
    } else if letters.is_empty() {
        writeln!(out, "no dead letters match")?;
    } else {
        out.write_all(render::dead_letter_table(&letters).as_bytes())?;
    }
    Ok(())
}

async fn dead_show(
    conn: &mut Conn,
    keys: &Keys,
    a: &ShowArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let filter = DeadLetterFilter {
        job_ids: vec![a.job_id],
        ..Default::default()
    };
    let letters = list_dead(conn, keys, &filter).await?;
    if letters.is_empty() {
        return Err(CliError::NotFound(a.job_id));
    }
    let record = job_snapshot(conn, keys, &a.job_id).await?;
    if a.json {
        serde_json::to_writer_pretty(&mut *out, &render::ShowJson::new(&letters, record.as_ref()))?;
        out.write_all(b"\n")?;
    } else {
        let text = render::show_text(
            &letters,
            record.as_ref(),
            &keys.dead_letters(letters.first().map_or(0, |d| d.partition)),
            &keys.job(&a.job_id),
            now_ms(),
        );
        out.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// Counts for the replay summary.
#[derive(Debug, Default)]
struct Tally {
    selected: usize,
    replayed: usize,
    already: usize,
    active: usize,
    failed: usize,
}

async fn replay(
    conn: &mut Conn,
    keys: &Keys,
    a: &ReplayArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    if !a.has_selector() {
        return Err(CliError::NoSelector);
    }
    let now = now_ms();
    let filter = DeadLetterFilter {
        job_ids: a.ids.clone(),
        ..filter_of(&a.selection, now)?
    };
    let letters = list_dead(conn, keys, &filter).await?;
    let missing: Vec<_> = a
        .ids
        .iter()
        .filter(|id| !letters.iter().any(|dl| dl.job_id == Some(**id)))
        .collect();
    for id in &missing {
        eprintln!(
            "job {id}: not in the dead-letter queue (already replayed, or never dead-lettered)"
        );
    }
    let late = letters
        .iter()
        .filter(|dl| {
            dl.envelope
                .as_ref()
                .is_ok_and(|e| e.deadline_ms.is_some_and(|d| d < now))
        })
        .count();
    if late > 0 {
        // Replay keeps the payload byte for byte, deadline included: say so
        // before the operator wonders why those jobs fail again at once.
        eprintln!(
            "note: {late} selected job(s) have a deadline in the past; \
             workers will fail them with deadline_exceeded"
        );
    }

    if a.dry_run {
        if letters.is_empty() {
            writeln!(out, "no dead letters match")?;
        } else {
            out.write_all(render::dead_letter_table(&letters).as_bytes())?;
        }
        // The same checks a real run makes first, so the dry run predicts
        // its failures too.
        let mut blocked = 0;
        for dl in &letters {
            if let Some(why) = dl.replay_blocker() {
                blocked += 1;
                eprintln!("{}: cannot be replayed: {why}", render_id(dl));
            }
        }
        writeln!(
            out,
            "dry run: would replay {} of {} selected dead letter(s); nothing was changed",
            letters.len() - blocked,
            letters.len()
        )?;
        return Ok(());
    }
    if !letters.is_empty() && !a.yes && !confirm(letters.len())? {
        writeln!(out, "nothing replayed")?;
        return Ok(());
    }

    let tally = replay_all(conn, keys, &letters).await;
    let (tally, abort) = match tally {
        Ok(t) => (t, None),
        Err((t, e)) => (t, Some(e)),
    };
    writeln!(
        out,
        "selected {}, replayed {}, already replayed {}, skipped (job queued or running) {}, failed {}",
        tally.selected, tally.replayed, tally.already, tally.active, tally.failed
    )?;
    if let Some(e) = abort {
        return Err(e);
    }
    if tally.failed > 0 {
        return Err(CliError::ReplayFailures(tally.failed));
    }
    Ok(())
}

/// Replays one entry at a time (each replay is its own atomic script, so an
/// interruption leaves every entry either replayed or untouched). Stops at
/// the first sign that Redis is gone; other errors are counted and reported.
async fn replay_all(
    conn: &mut Conn,
    keys: &Keys,
    letters: &[DeadLetter],
) -> Result<Tally, (Tally, CliError)> {
    let mut tally = Tally {
        selected: letters.len(),
        ..Default::default()
    };
    let bar = progress_bar(letters.len());
    for dl in letters {
        match admin::replay(conn, keys, dl).await {
            Ok(ReplayOutcome::Replayed { .. }) => tally.replayed += 1,
            Ok(ReplayOutcome::AlreadyReplayed) => tally.already += 1,
            Ok(ReplayOutcome::JobActive { status }) => {
                tally.active += 1;
                bar.suspend(|| {
                    eprintln!(
                        "{}: skipped, it is {status} already (dead-lettered more than once?)",
                        render_id(dl)
                    )
                });
            }
            Err(e) if e.is_unavailable() => {
                bar.abandon();
                return Err((tally, e.into()));
            }
            Err(AdminError::NotReplayable { reason, .. }) => {
                tally.failed += 1;
                bar.suspend(|| eprintln!("{}: cannot be replayed: {reason}", render_id(dl)));
            }
            Err(e) => {
                tally.failed += 1;
                bar.suspend(|| eprintln!("{}: {e}", render_id(dl)));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(tally)
}

/// How a dead letter is named in messages: by job, else by entry.
fn render_id(dl: &DeadLetter) -> String {
    dl.job_id.map_or_else(
        || format!("dead-letter entry {}", dl.entry_id),
        |id| format!("job {id}"),
    )
}

/// A bar on stderr; indicatif draws nothing when stderr is not a terminal,
/// so logs and pipes get only the summary.
fn progress_bar(len: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "replaying {bar:40} {pos}/{len} [{elapsed_precise}, eta {eta}]",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Asks on the terminal; without one there is nobody to ask, so the answer
/// is an error telling the operator to pass `--yes`.
fn confirm(n: usize) -> Result<bool, CliError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::NotConfirmed(n));
    }
    eprint!("replay {n} dead letter(s)? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

async fn stats(
    conn: &mut Conn,
    keys: &Keys,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let overview = queue_stats(conn, keys).await?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &render::StatsJson::new(&overview))?;
        out.write_all(b"\n")?;
    } else {
        out.write_all(render::stats_table(&overview).as_bytes())?;
    }
    Ok(())
}

async fn sweep_blobs(
    conn: &mut Conn,
    keys: &Keys,
    a: &SweepArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let r = shared::queue::blobs::sweep(conn, keys, a.dry_run).await?;
    let bytes: u64 = r.unreferenced.iter().map(|(_, n)| n).sum();
    if a.json {
        let doc = serde_json::json!({
            "dry_run": a.dry_run,
            "versions_counted": r.adopted,
            "blobs": r.blobs_seen,
            "unreferenced": r.unreferenced.iter()
                .map(|(sha, size)| serde_json::json!({"sha256": sha, "size": size}))
                .collect::<Vec<_>>(),
            "unreferenced_bytes": bytes,
            "deleted": r.deleted,
        });
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        out.write_all(b"\n")?;
        return Ok(());
    }
    for (sha, size) in &r.unreferenced {
        writeln!(out, "{sha}  {size} bytes")?;
    }
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    let n = if a.dry_run {
        r.unreferenced.len()
    } else {
        r.deleted
    };
    writeln!(
        out,
        "{} blobs, {} unreferenced ({bytes} bytes): {verb} {n}; {} versions newly counted",
        r.blobs_seen,
        r.unreferenced.len(),
        r.adopted
    )?;
    Ok(())
}
