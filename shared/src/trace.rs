//! W3C Trace Context (`traceparent`) ids: parsing a client's header, making
//! fresh ids, and the text form stored with a job.
//!
//! The API stores one `traceparent` per job: the client's trace id (or a new
//! one) and the span id of the API's submit span. The worker reads it back
//! from the stream envelope and makes its per-job span a child of that span,
//! so logs (`trace_id`, `parent_span_id`) and, with OTLP export on, traces
//! follow a job across processes. Only version `00` is ever written.
//!
//! Parsing follows <https://www.w3.org/TR/trace-context/#traceparent-header>:
//! lowercase hex only, version `ff` invalid, all-zero trace or span ids
//! invalid, version `00` exactly 55 characters, a later version at least 55
//! with a `-` after them (only its first four fields are read). A header
//! that fails any rule is ignored by the caller, never an error.

use std::fmt;

use rand::Rng;

/// The `traceparent` header's name.
pub const TRACEPARENT: &str = "traceparent";

/// Length of a version `00` `traceparent`.
const LEN_V00: usize = 55;

/// Bit 0 of the trace flags: the caller recorded (sampled) its span.
pub const FLAG_SAMPLED: u8 = 0x01;

/// A 16-byte trace id, never all zeros once parsed or generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id, never all zeros once parsed or generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random, non-zero trace id.
    pub fn random() -> TraceId {
        let mut rng = rand::rng();
        loop {
            let id: u128 = rng.random();
            if id != 0 {
                return TraceId(id.to_be_bytes());
            }
        }
    }
}

impl SpanId {
    /// A random, non-zero span id.
    pub fn random() -> SpanId {
        let mut rng = rand::rng();
        loop {
            let id: u64 = rng.random();
            if id != 0 {
                return SpanId(id.to_be_bytes());
            }
        }
    }
}

/// Lowercase hex without allocating: ids are written into log lines per job.
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        buf[2 * i] = DIGITS[usize::from(b >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    // Only ASCII hex digits were written.
    f.write_str(std::str::from_utf8(&buf[..2 * bytes.len()]).map_err(|_| fmt::Error)?)
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// One `traceparent`: a trace, the span that is the parent of whatever
/// continues it, and the trace flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value (surrounding spaces and tabs allowed, as
    /// HTTP field values may carry them); `None` when it breaks any rule of
    /// the spec.
    pub fn parse(value: &str) -> Option<TraceContext> {
        let v = value.trim_matches([' ', '\t']).as_bytes();
        if v.len() < LEN_V00 {
            return None;
        }
        let version = hex_byte(&v[0..2])?;
        if version == 0xff || (version == 0 && v.len() != LEN_V00) {
            return None;
        }
        // A later version may append fields, always after a dash.
        if v.len() > LEN_V00 && v[LEN_V00] != b'-' {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, b) in span_id.iter_mut().enumerate() {
            *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&v[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id: TraceId(trace_id),
            span_id: SpanId(span_id),
            // Version 00 defines only the sampled bit; others are not passed on.
            flags: flags & FLAG_SAMPLED,
        })
    }

    /// The context of a new span with a fresh id in the same trace (or in a
    /// new, sampled trace when there is no parent).
    pub fn child_of(parent: Option<&TraceContext>) -> TraceContext {
        match parent {
            Some(p) => TraceContext {
                trace_id: p.trace_id,
                span_id: SpanId::random(),
                flags: p.flags,
            },
            None => TraceContext {
                trace_id: TraceId::random(),
                span_id: SpanId::random(),
                flags: FLAG_SAMPLED,
            },
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

/// The version `00` header form: `00-<trace id>-<span id>-<flags>`.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        write_hex(f, &self.trace_id.0)?;
        f.write_str("-")?;
        write_hex(f, &self.span_id.0)?;
        f.write_str("-")?;
        write_hex(f, &[self.flags])
    }
}

/// Two lowercase hex digits.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    match pair {
        [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example_and_formats_it_back() {
        let tc = TraceContext::parse(VALID).unwrap();
        assert_eq!(tc.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tc.span_id.to_string(), "00f067aa0ba902b7");
        assert!(tc.sampled());
        assert_eq!(tc.to_string(), VALID);
        assert_eq!(TraceContext::parse(&format!(" {VALID}\t")), Some(tc));
        let unsampled = VALID.replace("-01", "-00");
        assert!(!TraceContext::parse(&unsampled).unwrap().sampled());
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        let bad = [
            "",
            "00",
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // all-zero trace id, all-zero span id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // version ff, non-hex version
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // version 00 with trailing data
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // wrong separators or lengths
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            // a future version must put a dash after the known fields
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for b in bad {
            assert_eq!(TraceContext::parse(b), None, "{b:?}");
        }
    }

    #[test]
    fn later_versions_are_read_for_their_known_fields() {
        let v1 = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds";
        let tc = TraceContext::parse(v1).unwrap();
        assert_eq!(tc.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // Unknown flag bits are dropped; what we write is version 00.
        assert_eq!(tc.flags, FLAG_SAMPLED);
        assert!(tc.to_string().starts_with("00-4bf92f"));
        assert!(TraceContext::parse(&v1[..LEN_V00]).is_some());
    }

    #[test]
    fn children_keep_the_trace_and_get_a_new_span() {
        let parent = TraceContext::parse(VALID).unwrap();
        let child = TraceContext::child_of(Some(&parent));
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(child.flags, parent.flags);
        let root = TraceContext::child_of(None);
        assert_ne!(root.trace_id, parent.trace_id);
        assert!(root.sampled());
        // What we write parses back to itself.
        assert_eq!(TraceContext::parse(&root.to_string()), Some(root));
    }
}
