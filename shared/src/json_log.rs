//! The JSON log format: each line written straight from the recorded
//! values, and each span's fields kept as the text of a JSON object.
//!
//! The fmt layer formats a span's fields once, when the span is created,
//! and stores the text with the span; every log line inside the span then
//! copies it under `span`. `tracing-subscriber`'s own `JsonFields` gathers
//! the fields into a map of `serde_json::Value`s first (an allocation per
//! field), and a field recorded later (`Span::record`) makes it parse the
//! whole object back and write it again. Every request and every job opens
//! such a span, whether or not anything is ever logged in it, so that cost
//! is paid per request: `scripts/bench --instructions-only` counted
//! 24,000 instructions per job creating the API's spans and 9,400 recording
//! `job_id` on the job-view request's span. Its line formatter then parses
//! the span's text back into `Value`s for every line, and passes every
//! piece of output through a UTF-8 check: 29,000 instructions for each
//! worker's "job finished" line.
//!
//! [`SpanFields`] writes `"name":value` pairs as they are visited and
//! appends a later field before the closing brace (a field recorded twice
//! appears twice, and a JSON reader keeps the last value, as `Span::record`
//! means). [`JsonLines`] writes the same lines as `tracing-subscriber`'s
//! JSON format with the current span and no span list (`timestamp`,
//! `level`, `fields`, `target`, `span` with its `name`), copying the span's
//! text as it is. The tests compare both with the stock formatter.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON span-field formatter (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct SpanFields;

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        writer.write_char('{')?;
        let mut visitor = Pairs {
            out: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_char('}')
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // An object written by `format_fields` ends in its brace; take it
        // off, append, and close again.
        if current.fields.pop() != Some('}') {
            current.fields.clear();
            return self.format_fields(current.as_writer(), fields);
        }
        let first = current.fields.len() == 1;
        let mut visitor = Pairs {
            out: &mut current.fields,
            first,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        let result = visitor.result;
        current.fields.push('}');
        result
    }
}

/// The JSON line formatter (see the module docs); spans' fields must be
/// kept by [`SpanFields`], whose text it copies.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S> FormatEvent<S, SpanFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, SpanFields>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A `log` record comes as an event of target `log`; its own target
        // and level are in its fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        w.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut w)?;
        write!(w, "\",\"level\":\"{}\",\"fields\":{{", meta.level())?;
        let mut fields = Pairs {
            out: &mut w,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_str("},\"target\":")?;
        quoted(&mut w, |e| e.write_str(meta.target()))?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            w.write_str(",\"span\":")?;
            let ext = span.extensions();
            let kept = ext
                .get::<FormattedFields<SpanFields>>()
                .map(|f| f.fields.as_str())
                .filter(|f| f.len() > 2 && f.ends_with('}'));
            match kept {
                Some(object) => {
                    w.write_str(&object[..object.len() - 1])?;
                    w.write_char(',')?;
                }
                None => w.write_char('{')?,
            }
            w.write_str("\"name\":")?;
            quoted(&mut w, |e| e.write_str(span.name()))?;
            w.write_char('}')?;
        }
        w.write_str("}\n")
    }
}

/// Writes each visited field as `"name":value`, comma-separated.
struct Pairs<'a, W: Write> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<W: Write> Pairs<'_, W> {
    fn pair(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !self.first {
                self.out.write_char(',')?;
            }
            self.first = false;
            quoted(self.out, |e| e.write_str(field.name()))?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }
}

impl<W: Write> Visit for Pairs<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.pair(field, |w| quoted(w, |e| e.write_str(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.pair(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.pair(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.pair(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; `JsonFields` writes `null` too.
        if value.is_finite() {
            self.pair(field, |w| write!(w, "{value}"));
        } else {
            self.pair(field, |w| w.write_str("null"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.pair(field, |w| quoted(w, |e| write!(e, "{value:?}")));
    }
}

/// Writes a JSON string: the quotes, and what `body` writes escaped.
fn quoted<W: Write>(
    w: &mut W,
    body: impl FnOnce(&mut Escaped<'_, W>) -> fmt::Result,
) -> fmt::Result {
    w.write_char('"')?;
    body(&mut Escaped(w))?;
    w.write_char('"')
}

/// A writer that escapes what passes through it for a JSON string (RFC
/// 8259 §7: the quote, the backslash and the control characters).
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Every byte to escape is ASCII, so a byte scan never splits a
        // character, and the plain runs between them go out whole.
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..0x20 => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::prelude::*;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// Each line `log` writes through `layer`, parsed, with its timestamp
    /// taken out and checked for the stock format (RFC 3339, microseconds,
    /// UTC).
    fn lines<L>(layer: impl FnOnce(Lines) -> L, log: impl FnOnce()) -> Vec<Value>
    where
        L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
    {
        let out = Lines::default();
        let subscriber = tracing_subscriber::registry().with(layer(out.clone()));
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'));
        text.lines()
            .map(|l| {
                let mut v = serde_json::from_str::<Value>(l).unwrap();
                let at = v["timestamp"].take();
                let at = at.as_str().unwrap();
                assert!(
                    at.len() == 27 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
                    "{at}"
                );
                v
            })
            .collect()
    }

    fn ours(log: impl FnOnce()) -> Vec<Value> {
        lines(
            |out| {
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .fmt_fields(SpanFields)
                    .event_format(JsonLines)
                    .with_writer(out)
            },
            log,
        )
    }

    fn stock(log: impl FnOnce()) -> Vec<Value> {
        lines(
            |out| {
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(out)
            },
            log,
        )
    }

    fn every_kind_of_field() {
        let hostile = "quote \" backslash \\ newline \n tab \t bell \u{7} é 😀";
        let span = tracing::info_span!(
            "job",
            job_id = tracing::field::Empty,
            text = hostile,
            shown = %"display \"x\"",
            debugged = ?("a", 1),
            n = -3i64,
            u = 7u64,
            yes = true,
            ratio = 0.25f64,
            nan = f64::NAN,
        );
        span.in_scope(|| tracing::info!("before the record"));
        span.record("job_id", tracing::field::display("0199-abc"));
        span.record("n", 4i64);
        span.in_scope(|| tracing::warn!(status = "succeeded", code = %"a \"b\"", n = 3u64, "after\nthe record"));
        let empty = tracing::info_span!("empty");
        empty.in_scope(|| tracing::info!("no fields"));
        empty.record("nothing", 1u64);
        let late = tracing::info_span!("late", id = tracing::field::Empty);
        late.record("id", "x");
        late.in_scope(|| {
            tracing::error!(
                ratio = 1.5f64,
                yes = false,
                "recorded into a span with none"
            )
        });
        tracing::info!(parent: &span, "explicit parent");
        tracing::debug!(target: "elsewhere", "outside every span");
    }

    #[test]
    fn lines_match_the_stock_json_formatter() {
        let ours = ours(every_kind_of_field);
        let stock = stock(every_kind_of_field);
        assert_eq!(ours.len(), 6);
        assert_eq!(ours, stock);
        assert_eq!(
            ours[1]["fields"],
            json!({"message": "after\nthe record", "status": "succeeded", "code": "a \"b\"", "n": 3})
        );
        assert_eq!(ours[1]["level"], "WARN");
        assert_eq!(ours[5]["target"], "elsewhere");
        assert!(ours[5].get("span").is_none());
        assert_eq!(
            ours[1]["span"],
            json!({
                "name": "job",
                "job_id": "0199-abc",
                "text": "quote \" backslash \\ newline \n tab \t bell \u{7} é 😀",
                "shown": "display \"x\"",
                "debugged": "(\"a\", 1)",
                "n": 4,
                "u": 7,
                "yes": true,
                "ratio": 0.25,
                "nan": null,
            })
        );
        assert_eq!(ours[3]["span"], json!({"name": "late", "id": "x"}));
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        quoted(&mut out, |e| e.write_str("a\u{1}b\u{1f}\"")).unwrap();
        assert_eq!(out, "\"a\\u0001b\\u001f\\\"\"");
        assert_eq!(
            serde_json::from_str::<String>(&out).unwrap(),
            "a\u{1}b\u{1f}\""
        );
    }
}
