//! Reading CSV records with the `csv` crate under the dataset's caps: each
//! record with the line it starts on (blank lines skipped, a byte-order mark
//! too), refused once it outgrows [`MAX_LINE_BYTES`] while it is being read,
//! and failures turned into [`DatasetError`]s that name a line, never the
//! reader's own wording.

use std::fmt;
use std::io;

use super::{DatasetError, Location, MAX_COLUMNS, MAX_LINE_BYTES};

/// The column names of a CSV dataset, in file order and trimmed as
/// [`super::Dataset::from_csv`] reads them: only the header record is read (the
/// same reader and caps as the full parse), so a caller can choose the
/// target before parsing the rows once.
pub fn read_header(bytes: &[u8]) -> Result<Vec<String>, DatasetError> {
    let mut records = Records::new(bytes);
    records.next()?.ok_or(DatasetError::NoHeader)?;
    let columns = records.fields()?;
    Ok(columns.into_iter().map(|c| c.trim().to_owned()).collect())
}

/// The marker of the one I/O error [`Capped`] makes.
#[derive(Debug)]
struct RecordTooLong;

impl fmt::Display for RecordTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("record too long")
    }
}

impl std::error::Error for RecordTooLong {}

/// The CSV reader's input, handed out no further than `limit`: the reader
/// buffers a record whole before it returns it, so the record cap has to
/// stop it while it reads.
struct Capped<'a> {
    bytes: &'a [u8],
    pos: usize,
    limit: usize,
}

impl io::Read for Capped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.bytes.len() {
            return Ok(0);
        }
        let end = self.bytes.len().min(self.limit);
        if self.pos >= end {
            return Err(io::Error::other(RecordTooLong));
        }
        let n = buf.len().min(end - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The non-blank records of a CSV text, each with the line it starts on,
/// checked against [`MAX_LINE_BYTES`] and UTF-8.
pub(super) struct Records<'a> {
    /// The text after any byte-order mark; reader positions index it.
    bytes: &'a [u8],
    reader: csv::Reader<Capped<'a>>,
    /// The record [`Records::next`] read last.
    pub(super) record: csv::StringRecord,
    /// Line of byte `counted` (1-based), kept as the reader moves on so
    /// counting lines stays linear.
    line: usize,
    counted: usize,
}

impl<'a> Records<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Records<'a> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(Capped {
                bytes,
                pos: 0,
                limit: 0,
            });
        Records {
            bytes,
            reader,
            record: csv::StringRecord::new(),
            line: 1,
            counted: 0,
        }
    }

    fn line_at(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.bytes.len());
        if offset > self.counted {
            self.line += newlines(&self.bytes[self.counted..offset]);
            self.counted = offset;
        }
        self.line
    }

    /// Reads the next record that is not blank into `self.record`; `None`
    /// at the end of the text.
    pub(super) fn next(&mut self) -> Result<Option<Location>, DatasetError> {
        loop {
            let before = usize::try_from(self.reader.position().byte())
                .unwrap_or(usize::MAX)
                .min(self.bytes.len());
            // The reader skips empty lines before a record; its first byte
            // (and line) is past them.
            let start = before
                + self.bytes[before..]
                    .iter()
                    .take_while(|b| matches!(b, b'\r' | b'\n'))
                    .count();
            // Two bytes over the cap for a `\r\n` line end; a record that
            // needs more fails its read and is refused below.
            self.reader.get_mut().limit = start.saturating_add(MAX_LINE_BYTES + 2);
            let line = self.line_at(start);
            let location = Location::Line(line);
            let read = self.reader.read_record(&mut self.record);
            let end = usize::try_from(self.reader.position().byte())
                .unwrap_or(usize::MAX)
                .clamp(start, self.bytes.len());
            let raw = &self.bytes[start..end];
            match read {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(e) => return Err(read_error(&e, line, raw)),
            }
            if without_line_end(raw).len() > MAX_LINE_BYTES {
                return Err(DatasetError::LineTooLong { location });
            }
            // A quote opened and never closed runs to the end of the text;
            // the reader takes it as ending there, silently.
            if end == self.bytes.len() && raw.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
                return Err(DatasetError::Malformed {
                    location,
                    message: "a quoted field is not closed (it runs to the end of the file)".into(),
                });
            }
            // A line of spaces is blank too.
            if self.record.len() == 1 && self.record[0].trim().is_empty() {
                continue;
            }
            return Ok(Some(location));
        }
    }

    /// The last record's fields, checked against [`MAX_COLUMNS`] (before
    /// they are copied).
    pub(super) fn fields(&self) -> Result<Vec<String>, DatasetError> {
        if self.record.len() > MAX_COLUMNS {
            return Err(DatasetError::TooManyColumns {
                found: self.record.len(),
            });
        }
        Ok(self.record.iter().map(str::to_owned).collect())
    }
}

/// What a failed read of the record at `line` (its bytes so far: `raw`)
/// means for the client. Only two can happen on bytes in memory: the
/// record outgrew the cap, or it is not UTF-8.
fn read_error(e: &csv::Error, line: usize, raw: &[u8]) -> DatasetError {
    let location = Location::Line(line);
    match e.kind() {
        csv::ErrorKind::Io(io) if io.get_ref().is_some_and(|e| e.is::<RecordTooLong>()) => {
            DatasetError::LineTooLong { location }
        }
        csv::ErrorKind::Utf8 { .. } => DatasetError::NotUtf8 {
            // The invalid bytes may sit on a later line of the record.
            line: line
                + std::str::from_utf8(raw)
                    .err()
                    .map_or(0, |u| newlines(&raw[..u.valid_up_to()])),
        },
        _ => DatasetError::Malformed {
            location,
            message: "the CSV record cannot be read".into(),
        },
    }
}

fn newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// A record's bytes without the line end that closes it.
fn without_line_end(raw: &[u8]) -> &[u8] {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    raw.strip_suffix(b"\r").unwrap_or(raw)
}
