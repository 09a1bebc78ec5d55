//! How `jobctl` shows things: aligned text tables for people, JSON for
//! programs, and the small formatting helpers both use. No Redis access here.

use serde::Serialize;
use shared::job::JobError;
use shared::queue::admin::{DeadLetter, JobSnapshot, QueueOverview, QueueStats};
use shared::queue::wire::JobSpec;
use shared::tensor::Tensor;
use shared::time::rfc3339_ms;

/// Longest error message shown in a table cell; `dead show` has the rest.
const MESSAGE_WIDTH: usize = 60;

/// Columns padded to their widest cell, two spaces apart; the last column is
/// not padded so lines carry no trailing blanks.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(&mut headers.iter().copied());
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
        out.push('\n');
    }
    out
}

/// Cuts text to `max` characters, marking the cut, and flattens line breaks
/// so one record stays on one table line.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut out: String = flat.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A duration for people: `850ms`, `12.3s`, `3m04s`, `2h05m`, `3d04h`.
pub(crate) fn human_ms(ms: u64) -> String {
    const S: u64 = 1_000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;
    const D: u64 = 24 * H;
    match ms {
        ms if ms < S => format!("{ms}ms"),
        ms if ms < M => format!("{}.{}s", ms / S, ms % S / 100),
        ms if ms < H => format!("{}m{:02}s", ms / M, ms % M / S),
        ms if ms < D => format!("{}h{:02}m", ms / H, ms % H / M),
        ms => format!("{}d{:02}h", ms / D, ms % D / H),
    }
}

fn job_id_text(dl: &DeadLetter) -> String {
    dl.job_id
        .map_or_else(|| "(no valid id)".to_owned(), |id| id.to_string())
}

/// The `dead list` / `replay --dry-run` table.
pub(crate) fn dead_letter_table(letters: &[DeadLetter]) -> String {
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|dl| {
            vec![
                job_id_text(dl),
                dl.model.clone(),
                rfc3339_ms(dl.failed_at_ms),
                dl.attempts.to_string(),
                dl.error.code.clone(),
                truncate(&dl.error.message, MESSAGE_WIDTH),
            ]
        })
        .collect();
    table(
        &[
            "JOB ID",
            "MODEL",
            "FAILED AT",
            "ATTEMPTS",
            "CODE",
            "MESSAGE",
        ],
        &rows,
    )
}

/// A dead letter as JSON (`dead list --json`, one per line).
#[derive(Debug, Serialize)]
pub(crate) struct DeadLetterJson<'a> {
    pub job_id: Option<String>,
    pub entry_id: &'a str,
    pub model: &'a str,
    pub failed_at: String,
    pub failed_at_ms: i64,
    pub attempts: u32,
    pub error: &'a JobError,
    pub payload_bytes: usize,
    /// Why `replay` would refuse it; absent when it can be replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_replayable: Option<String>,
}

impl<'a> DeadLetterJson<'a> {
    pub(crate) fn new(dl: &'a DeadLetter) -> DeadLetterJson<'a> {
        DeadLetterJson {
            job_id: dl.job_id.map(|id| id.to_string()),
            entry_id: &dl.entry_id,
            model: &dl.model,
            failed_at: rfc3339_ms(dl.failed_at_ms),
            failed_at_ms: dl.failed_at_ms,
            attempts: dl.attempts,
            error: &dl.error,
            payload_bytes: dl.payload.len(),
            not_replayable: dl.replay_blocker(),
        }
    }
}

/// One input of a payload, without its data.
#[derive(Debug, Serialize)]
pub(crate) struct InputSummary {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub values: usize,
}

/// The decoded payload, summarized.
#[derive(Debug, Serialize)]
pub(crate) struct EnvelopeSummary {
    pub kind: String,
    pub submitted_at: String,
    pub deadline: Option<String>,
    pub inputs: Vec<InputSummary>,
}

impl EnvelopeSummary {
    fn new(dl: &DeadLetter) -> Option<EnvelopeSummary> {
        let env = dl.envelope.as_ref().ok()?;
        // Only predictions carry tensors.
        let inputs: &[Tensor] = match &env.spec {
            JobSpec::Predict { inputs, .. } => inputs,
            JobSpec::Validate { .. } | JobSpec::Retrain(_) => &[],
        };
        Some(EnvelopeSummary {
            kind: env.kind().as_str().to_owned(),
            submitted_at: rfc3339_ms(env.submitted_at_ms),
            deadline: env.deadline_ms.map(rfc3339_ms),
            inputs: inputs
                .iter()
                .map(|t| InputSummary {
                    name: t.name.clone(),
                    datatype: t.data.datatype().to_string(),
                    shape: t.shape.clone(),
                    values: t.data.len(),
                })
                .collect(),
        })
    }
}

/// `dead show --json`.
#[derive(Debug, Serialize)]
pub(crate) struct ShowJson<'a> {
    pub dead_letters: Vec<ShownLetter<'a>>,
    /// The job record as stored, or null when it has expired.
    pub record: Option<RecordJson<'a>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ShownLetter<'a> {
    #[serde(flatten)]
    pub letter: DeadLetterJson<'a>,
    pub payload: Option<EnvelopeSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_error: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RecordJson<'a> {
    pub fields: &'a std::collections::BTreeMap<String, String>,
    pub ttl_secs: Option<i64>,
}

impl<'a> ShowJson<'a> {
    pub(crate) fn new(letters: &'a [DeadLetter], record: Option<&'a JobSnapshot>) -> ShowJson<'a> {
        ShowJson {
            dead_letters: letters
                .iter()
                .map(|dl| ShownLetter {
                    letter: DeadLetterJson::new(dl),
                    payload: EnvelopeSummary::new(dl),
                    payload_error: dl.envelope.as_ref().err().map(String::as_str),
                })
                .collect(),
            record: record.map(|r| RecordJson {
                fields: &r.fields,
                ttl_secs: r.ttl_secs,
            }),
        }
    }
}

/// `dead show` as text: every dead letter of the job, then its record.
pub(crate) fn show_text(
    letters: &[DeadLetter],
    record: Option<&JobSnapshot>,
    dead_key: &str,
    record_key: &str,
    now_ms: i64,
) -> String {
    let mut out = String::new();
    for dl in letters {
        let ago = u64::try_from(now_ms - dl.failed_at_ms).unwrap_or(0);
        let mut rows = vec![
            ("job id", job_id_text(dl)),
            ("entry", format!("{} in {dead_key}", dl.entry_id)),
            ("model", dl.model.clone()),
            (
                "failed at",
                format!("{} ({} ago)", rfc3339_ms(dl.failed_at_ms), human_ms(ago)),
            ),
            ("attempts", dl.attempts.to_string()),
            ("error code", dl.error.code.clone()),
            ("error", dl.error.message.clone()),
            (
                "payload",
                format!("{} bytes (MessagePack)", dl.payload.len()),
            ),
        ];
        match EnvelopeSummary::new(dl) {
            Some(env) => {
                rows.push(("kind", env.kind));
                rows.push(("submitted at", env.submitted_at));
                rows.push(("deadline", env.deadline.unwrap_or_else(|| "none".into())));
                for (i, t) in env.inputs.iter().enumerate() {
                    rows.push((
                        if i == 0 { "inputs" } else { "" },
                        format!(
                            "{} {} {:?} ({} values)",
                            t.name, t.datatype, t.shape, t.values
                        ),
                    ));
                }
            }
            None => rows.push((
                "payload error",
                dl.envelope.as_ref().err().cloned().unwrap_or_default(),
            )),
        }
        rows.push((
            "replayable",
            dl.replay_blocker()
                .map_or_else(|| "yes".to_owned(), |why| format!("no: {why}")),
        ));
        out.push_str(&key_values(&rows));
        out.push('\n');
    }
    match record {
        Some(rec) => {
            let expiry = rec.ttl_secs.map_or_else(
                || "never".to_owned(),
                |s| format!("in {}", human_ms(s as u64 * 1000)),
            );
            out.push_str(&format!("record {record_key} (expires {expiry})\n"));
            let rows: Vec<(&str, String)> = rec
                .fields
                .iter()
                .map(|(k, v)| (k.as_str(), record_value(k, v)))
                .collect();
            out.push_str(&indent(&key_values(&rows)));
        }
        None => out.push_str(&format!("record {record_key}: gone (expired)\n")),
    }
    out
}

/// Times in a record are Unix ms; show them readable too.
fn record_value(field: &str, v: &str) -> String {
    match (field, v.parse::<i64>()) {
        ("created_at" | "started_at" | "finished_at" | "retry_at", Ok(ms)) => {
            format!("{v} ({})", rfc3339_ms(ms))
        }
        _ => v.to_owned(),
    }
}

/// `key  value` lines, values aligned; a value's own line breaks (error
/// messages have them) are indented to stay in the value column.
fn key_values(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let continuation = format!("\n{:width$}  ", "");
    rows.iter()
        .map(|(k, v)| {
            let v = v.trim_end().replace('\n', &continuation);
            format!("{k:<width$}  {v}\n")
        })
        .collect()
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// `stats` as a table, then the dead-letter total.
pub(crate) fn stats_table(o: &QueueOverview) -> String {
    let rows: Vec<Vec<String>> = o
        .queues
        .iter()
        .map(|q| {
            vec![
                q.model.clone(),
                q.depth().to_string(),
                q.pending.to_string(),
                q.lag.to_string(),
                q.consumers.len().to_string(),
                q.oldest_pending
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |p| human_ms(p.age_ms)),
                q.stream_length.to_string(),
                q.dead_letters
                    .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            ]
        })
        .collect();
    let mut out = if rows.is_empty() {
        "no models or streams in this namespace\n".to_owned()
    } else {
        table(
            &[
                "MODEL",
                "DEPTH",
                "PENDING",
                "LAG",
                "CONSUMERS",
                "OLDEST PENDING",
                "STREAM LEN",
                "DEAD",
            ],
            &rows,
        )
    };
    out.push_str(&format!("dead letters: {} total\n", o.dead_letters));
    out
}

/// `stats --json`.
#[derive(Debug, Serialize)]
pub(crate) struct StatsJson {
    pub models: Vec<QueueJson>,
    pub dead_letters_total: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct QueueJson {
    pub model: String,
    pub stream: String,
    pub depth: u64,
    pub lag: u64,
    pub pending: u64,
    pub stream_length: u64,
    pub group_exists: bool,
    pub consumers: Vec<ConsumerJson>,
    pub oldest_pending: Option<OldestJson>,
    /// Null when the dead-letter stream was too long to count per model.
    pub dead_letters: Option<u64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ConsumerJson {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct OldestJson {
    pub entry_id: String,
    pub consumer: String,
    pub age_ms: u64,
    pub idle_ms: u64,
    pub deliveries: u64,
}

impl StatsJson {
    pub(crate) fn new(o: &QueueOverview) -> StatsJson {
        StatsJson {
            models: o.queues.iter().map(QueueJson::new).collect(),
            dead_letters_total: o.dead_letters,
        }
    }
}

impl QueueJson {
    fn new(q: &QueueStats) -> QueueJson {
        QueueJson {
            model: q.model.clone(),
            stream: q.stream.clone(),
            depth: q.depth(),
            lag: q.lag,
            pending: q.pending,
            stream_length: q.stream_length,
            group_exists: q.group_exists,
            consumers: q
                .consumers
                .iter()
                .map(|c| ConsumerJson {
                    name: c.name.clone(),
                    pending: c.pending,
                    idle_ms: c.idle_ms,
                })
                .collect(),
            oldest_pending: q.oldest_pending.as_ref().map(|p| OldestJson {
                entry_id: p.entry_id.clone(),
                consumer: p.consumer.clone(),
                age_ms: p.age_ms,
                idle_ms: p.idle_ms,
                deliveries: p.deliveries,
            }),
            dead_letters: q.dead_letters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_ms(0), "0ms");
        assert_eq!(human_ms(999), "999ms");
        assert_eq!(human_ms(12_345), "12.3s");
        assert_eq!(human_ms(184_000), "3m04s");
        assert_eq!(human_ms(2 * 3_600_000 + 5 * 60_000), "2h05m");
        assert_eq!(human_ms(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
    }

    #[test]
    fn truncation_marks_the_cut_and_keeps_one_line() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("exactly10!", 10), "exactly10!");
        assert_eq!(truncate("0123456789abc", 10), "012345678…");
        assert_eq!(truncate("a\nb\tc", 10), "a b c");
        assert_eq!(
            truncate("ééééééé", 3),
            "éé…",
            "counts characters, not bytes"
        );
    }

    #[test]
    fn multi_line_values_stay_in_their_column() {
        let out = key_values(&[("a", "x".into()), ("long key", "one\ntwo\n".into())]);
        assert_eq!(out, "a         x\nlong key  one\n          two\n");
    }

    #[test]
    fn tables_align_columns_without_trailing_blanks() {
        let t = table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["wide cell".into(), "x".into(), "".into()],
                vec!["y".into(), "z".into(), "last".into()],
            ],
        );
        assert_eq!(
            t,
            "A          LONG HEADER  C\n\
             wide cell  x\n\
             y          z            last\n"
        );
    }
}
