//! Tabular training data: a numeric feature matrix plus one target column,
//! parsed from CSV bytes or from inline rows, with errors that name the line
//! or row and the column at fault.
//!
//! CSV format (read with the `csv` crate): UTF-8 (a leading byte-order mark
//! is skipped), comma separated, header row required, `\n` or `\r\n` line
//! ends, blank lines ignored. A field may be double-quoted (`"mean radius"`,
//! `""` for a quote inside), and a quoted field may span lines; a record is
//! named in errors by the line it starts on. Every column other than the
//! target is a feature and must hold a finite number in every row; the
//! target must be numeric too (class indices `0..k` for classification).
//!
//! [`MAX_LINE_BYTES`] (per record) holds while the reader reads: it is never
//! handed more than a record's worth of bytes past the start of a record,
//! so an attacker's one-line file is refused after a mebibyte, not split
//! into millions of fields first; [`MAX_COLUMNS`] is then checked on the
//! header record that bound leaves.

mod records;

use std::collections::HashSet;
use std::fmt;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use records::Records;
pub use records::read_header;

/// Where a bad value sits: a physical line of a CSV file (1-based, blank
/// lines counted; a record over several lines is named by its first) or an
/// index into inline rows (0-based, like the JSON array it came from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Line(usize),
    Row(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Row(i) => write!(f, "rows[{i}]"),
        }
    }
}

/// Most columns a dataset may have (the target included).
pub const MAX_COLUMNS: usize = 10_000;
/// Longest line (record, for one with quoted line breaks) of a CSV
/// dataset, in bytes, its line end not counted.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Characters of a column name or value quoted in an error, at most.
const QUOTED_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DatasetError {
    #[error("dataset has {found} columns; at most {MAX_COLUMNS} are accepted")]
    TooManyColumns { found: usize },
    #[error("{location} is longer than the limit of {MAX_LINE_BYTES} bytes")]
    LineTooLong { location: Location },
    #[error("dataset is not UTF-8 text (invalid bytes on line {line})")]
    NotUtf8 { line: usize },
    #[error("dataset is empty: a header row is required")]
    NoHeader,
    #[error("dataset has a header but no data rows")]
    NoRows,
    #[error("{location}: {message}")]
    Malformed { location: Location, message: String },
    #[error("column {index}: name {name:?} is empty or contains control characters")]
    BadColumnName { index: usize, name: String },
    #[error("column {name:?} appears more than once")]
    DuplicateColumn { name: String },
    #[error("target column {target:?} not found (columns: {})", preview(.available))]
    MissingTarget {
        target: String,
        available: Vec<String>,
    },
    #[error("dataset has no feature columns besides the target {target:?}")]
    NoFeatures { target: String },
    #[error("{location}: expected {expected} fields (as in the header), found {found}")]
    Ragged {
        location: Location,
        expected: usize,
        found: usize,
    },
    #[error("{location}, column {column:?}: {value:?} is not a number")]
    NotNumeric {
        location: Location,
        column: String,
        value: String,
    },
    #[error("{location}, column {column:?}: {value} is not a finite number")]
    NonFinite {
        location: Location,
        column: String,
        value: String,
    },
}

/// Column names listed in an error, at most.
const PREVIEW: usize = 12;

/// The first [`PREVIEW`] names, each clipped, and how many more there are.
fn preview(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(PREVIEW)
        .map(|n| format!("{:?}", truncate_to(n, QUOTED_CHARS)))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > PREVIEW {
        s.push_str(&format!(", ... {} more", names.len() - PREVIEW));
    }
    s
}

/// Inline training data as it arrives in a JSON request:
/// `{"columns": ["x1", "x2", "target"], "rows": [[0.5, 1.0, 0], [1.5, -2.0, 1]]}`.
/// Each row lists one number per column, in the order of `columns`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineRows {
    /// At least one feature and the target.
    #[cfg_attr(feature = "openapi", schema(min_items = 2))]
    pub columns: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub rows: Vec<Vec<f64>>,
}

impl InlineRows {
    pub fn into_dataset(self, target_column: &str) -> Result<Dataset, DatasetError> {
        Dataset::from_rows(&self.columns, &self.rows, target_column)
    }
}

/// Feature matrix (rows × features, in column order without the target)
/// and the target column, both as `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    feature_names: Vec<String>,
    target_name: String,
    features: Array2<f64>,
    target: Array1<f64>,
}

impl Dataset {
    /// Parses CSV bytes (format in the module docs) and takes
    /// `target_column` as the target, every other column as a feature.
    pub fn from_csv(bytes: &[u8], target_column: &str) -> Result<Self, DatasetError> {
        let mut records = Records::new(bytes);
        records.next()?.ok_or(DatasetError::NoHeader)?;
        let columns = records.fields()?;
        let mut builder = Builder::new(columns, target_column)?;
        while let Some(loc) = records.next()? {
            let fields = &records.record;
            builder.push(loc, fields.len(), |j| fields.get(j).unwrap_or("").trim())?;
        }
        builder.finish()
    }

    /// Builds a dataset from column names and rows of numbers (one number per
    /// column, in the order of `columns`); see [`InlineRows`] for the JSON
    /// shape. Errors locate rows by their 0-based index.
    pub fn from_rows(
        columns: &[String],
        rows: &[Vec<f64>],
        target_column: &str,
    ) -> Result<Self, DatasetError> {
        let mut builder = Builder::new(columns.to_vec(), target_column)?;
        for (i, row) in rows.iter().enumerate() {
            builder.push_numbers(Location::Row(i), row)?;
        }
        builder.finish()
    }

    pub fn n_rows(&self) -> usize {
        self.features.nrows()
    }

    pub fn n_features(&self) -> usize {
        self.features.ncols()
    }

    /// Feature column names, in the order of the feature matrix's columns
    /// (the order of the source, target left out).
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    pub fn target_name(&self) -> &str {
        &self.target_name
    }

    pub fn features(&self) -> ArrayView2<'_, f64> {
        self.features.view()
    }

    pub fn target(&self) -> ArrayView1<'_, f64> {
        self.target.view()
    }

    /// CSV (format of the module docs) of the given rows, in that order:
    /// the feature columns, then the target column; numbers in their
    /// shortest round-trip form, so parsing it gives back the same values.
    /// For handing a split (e.g. [`crate::Split::train_idx`]) to an external
    /// trainer. Panics if a row index is out of range.
    pub fn to_csv(&self, rows: &[usize]) -> Vec<u8> {
        let mut out = String::new();
        let names = self.feature_names.iter().chain([&self.target_name]);
        let header: Vec<String> = names.map(|n| csv_field(n)).collect();
        out.push_str(&header.join(","));
        out.push('\n');
        for &i in rows {
            for v in self.features.row(i) {
                out.push_str(&format!("{v:?},"));
            }
            out.push_str(&format!("{:?}\n", self.target[i]));
        }
        out.into_bytes()
    }
}

fn csv_field(name: &str) -> String {
    if name.contains([',', '"']) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_owned()
    }
}

/// Accumulates rows column-major-agnostic into one flat buffer while checking
/// each value, so CSV and inline rows share one set of rules.
struct Builder {
    columns: Vec<String>,
    target_idx: usize,
    features: Vec<f64>,
    target: Vec<f64>,
}

impl Builder {
    fn new(columns: Vec<String>, target_column: &str) -> Result<Self, DatasetError> {
        if columns.len() > MAX_COLUMNS {
            return Err(DatasetError::TooManyColumns {
                found: columns.len(),
            });
        }
        let columns: Vec<String> = columns.into_iter().map(|c| c.trim().to_owned()).collect();
        // A set, so a wide header costs linear time, not quadratic.
        let mut seen: HashSet<&str> = HashSet::with_capacity(columns.len());
        for (index, name) in columns.iter().enumerate() {
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(DatasetError::BadColumnName {
                    index,
                    name: truncate_to(name, QUOTED_CHARS),
                });
            }
            if !seen.insert(name) {
                return Err(DatasetError::DuplicateColumn {
                    name: truncate_to(name, QUOTED_CHARS),
                });
            }
        }
        let target_idx = columns
            .iter()
            .position(|c| c == target_column)
            .ok_or_else(|| DatasetError::MissingTarget {
                target: truncate_to(target_column, QUOTED_CHARS),
                available: columns.clone(),
            })?;
        if columns.len() < 2 {
            return Err(DatasetError::NoFeatures {
                target: target_column.to_owned(),
            });
        }
        Ok(Builder {
            columns,
            target_idx,
            features: Vec::new(),
            target: Vec::new(),
        })
    }

    fn check_width(&self, location: Location, found: usize) -> Result<(), DatasetError> {
        if found != self.columns.len() {
            return Err(DatasetError::Ragged {
                location,
                expected: self.columns.len(),
                found,
            });
        }
        Ok(())
    }

    fn push<'a>(
        &mut self,
        location: Location,
        width: usize,
        field: impl Fn(usize) -> &'a str,
    ) -> Result<(), DatasetError> {
        self.check_width(location, width)?;
        for j in 0..width {
            let raw = field(j);
            let value: f64 = raw.parse().map_err(|_| DatasetError::NotNumeric {
                location,
                column: self.columns[j].clone(),
                value: truncate(raw),
            })?;
            self.accept(location, j, value, raw)?;
        }
        Ok(())
    }

    fn push_numbers(&mut self, location: Location, row: &[f64]) -> Result<(), DatasetError> {
        self.check_width(location, row.len())?;
        for (j, &value) in row.iter().enumerate() {
            self.accept(location, j, value, &value.to_string())?;
        }
        Ok(())
    }

    fn accept(
        &mut self,
        location: Location,
        j: usize,
        value: f64,
        raw: &str,
    ) -> Result<(), DatasetError> {
        if !value.is_finite() {
            return Err(DatasetError::NonFinite {
                location,
                column: self.columns[j].clone(),
                value: truncate(raw),
            });
        }
        if j == self.target_idx {
            self.target.push(value);
        } else {
            self.features.push(value);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Dataset, DatasetError> {
        let n = self.target.len();
        if n == 0 {
            return Err(DatasetError::NoRows);
        }
        let target_name = self.columns.remove(self.target_idx);
        let d = self.columns.len();
        let features = Array2::from_shape_vec((n, d), self.features)
            .expect("one value per feature column was pushed for every row");
        Ok(Dataset {
            feature_names: self.columns,
            target_name,
            features,
            target: Array1::from_vec(self.target),
        })
    }
}

fn truncate(raw: &str) -> String {
    truncate_to(raw, 40)
}

fn truncate_to(raw: &str, max: usize) -> String {
    match raw.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &raw[..i]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Dataset, DatasetError> {
        Dataset::from_csv(text.as_bytes(), "y")
    }

    #[test]
    fn parses_header_quotes_crlf_and_blank_lines() {
        let ds = csv("\u{feff}\"a, b\", c ,y\r\n1,2.5,0\r\n\r\n -3 ,4e1,1\r\n").unwrap();
        assert_eq!(ds.feature_names(), ["a, b", "c"]);
        assert_eq!(ds.target_name(), "y");
        assert_eq!(ds.n_rows(), 2);
        assert_eq!(
            ds.features(),
            ndarray::array![[1.0, 2.5], [-3.0, 40.0]].view()
        );
        assert_eq!(ds.target(), ndarray::array![0.0, 1.0].view());
    }

    #[test]
    fn wide_and_long_inputs_stop_at_their_limits_with_the_limit_named() {
        // The header of the reproduced attack: 80,000 columns.
        let wide: Vec<String> = (0..80_000).map(|i| format!("c{i}")).collect();
        let err = csv(&format!("{},y\n", wide.join(","))).unwrap_err();
        assert_eq!(err, DatasetError::TooManyColumns { found: 80_001 });
        assert!(err.to_string().contains("10000"), "{err}");
        let err = Dataset::from_rows(&wide, &[], "c0").unwrap_err();
        assert!(matches!(err, DatasetError::TooManyColumns { .. }), "{err}");

        let long = format!("a,y\n{},0\n", "1".repeat(MAX_LINE_BYTES));
        let err = csv(&long).unwrap_err();
        assert_eq!(
            err,
            DatasetError::LineTooLong {
                location: Location::Line(2)
            }
        );
        assert!(err.to_string().contains("1048576 bytes"), "{err}");
    }

    #[test]
    fn a_duplicate_at_the_end_of_a_wide_header_is_found() {
        let mut names: Vec<String> = (0..MAX_COLUMNS - 1).map(|i| format!("c{i}")).collect();
        names.push("c0".into());
        let err = csv(&format!("{}\n", names.join(","))).unwrap_err();
        assert_eq!(err, DatasetError::DuplicateColumn { name: "c0".into() });
    }

    #[test]
    fn quoted_names_in_errors_are_clipped() {
        let name = "n".repeat(5_000);
        let err = csv(&format!("{name},{name},y\n1,2,3\n")).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
        let err = csv(&format!("{name},b\n1,2\n")).unwrap_err();
        assert!(matches!(err, DatasetError::MissingTarget { .. }));
        assert!(err.to_string().len() < 600, "{}", err.to_string().len());
    }

    #[test]
    fn target_can_be_any_column() {
        let ds = csv("y,a,b\n7,1,2\n").unwrap();
        assert_eq!(ds.feature_names(), ["a", "b"]);
        assert_eq!(ds.target()[0], 7.0);
        assert_eq!(ds.features().row(0).to_vec(), [1.0, 2.0]);
    }

    #[test]
    fn errors_name_line_and_column() {
        assert_eq!(csv(""), Err(DatasetError::NoHeader));
        assert_eq!(csv("\n \n"), Err(DatasetError::NoHeader));
        assert_eq!(csv("a,y\n"), Err(DatasetError::NoRows));
        assert_eq!(
            csv("a,b\n1,2\n"),
            Err(DatasetError::MissingTarget {
                target: "y".into(),
                available: vec!["a".into(), "b".into()]
            })
        );
        assert_eq!(
            csv("y\n1\n"),
            Err(DatasetError::NoFeatures { target: "y".into() })
        );
        assert_eq!(
            csv("a,y\n1,0\n1,2,3\n"),
            Err(DatasetError::Ragged {
                location: Location::Line(3),
                expected: 2,
                found: 3
            })
        );
        let err = csv("a,b,y\n1,2,0\n\n1,abc,1\n").unwrap_err();
        assert_eq!(
            err,
            DatasetError::NotNumeric {
                location: Location::Line(4),
                column: "b".into(),
                value: "abc".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "line 4, column \"b\": \"abc\" is not a number"
        );
        assert!(matches!(
            csv("a,y\n,1\n"),
            Err(DatasetError::NotNumeric { location: Location::Line(2), ref value, .. }) if value.is_empty()
        ));
        for bad in ["NaN", "inf", "-infinity", "1e400"] {
            assert_eq!(
                csv(&format!("a,y\n1,0\n{bad},1\n")),
                Err(DatasetError::NonFinite {
                    location: Location::Line(3),
                    column: "a".into(),
                    value: bad.into()
                }),
                "{bad}"
            );
        }
        assert!(matches!(
            csv("a,y\n1,nan\n"),
            Err(DatasetError::NonFinite { ref column, .. }) if column == "y"
        ));
        assert_eq!(
            csv("a,a,y\n1,2,3\n"),
            Err(DatasetError::DuplicateColumn { name: "a".into() })
        );
        assert_eq!(
            csv("a,,y\n1,2,3\n"),
            Err(DatasetError::BadColumnName {
                index: 1,
                name: String::new()
            })
        );
        assert!(matches!(
            csv("\"a,y\n1,2\n"),
            Err(DatasetError::Malformed {
                location: Location::Line(1),
                ..
            })
        ));
        assert!(matches!(
            csv("a,y\n1,2\n3,4\"\n"),
            Err(DatasetError::Malformed {
                location: Location::Line(3),
                ..
            })
        ));
        assert_eq!(
            Dataset::from_csv(b"a,y\n1,0\n\xff,1\n", "y"),
            Err(DatasetError::NotUtf8 { line: 3 })
        );
    }

    #[test]
    fn a_quoted_field_may_span_lines_and_later_lines_keep_their_numbers() {
        let ds = csv("\"first\nname\",y\n1,0\n2,1\n").unwrap_err();
        // A line break in a name is refused like any control character…
        assert!(
            matches!(ds, DatasetError::BadColumnName { index: 0, .. }),
            "{ds}"
        );
        // …but a record may span lines, and errors after it count physical lines.
        let err = csv("a,y\n\"1\n\",0\nx,1\n").unwrap_err();
        assert_eq!(
            err,
            DatasetError::NotNumeric {
                location: Location::Line(4),
                column: "a".into(),
                value: "x".into()
            }
        );
        let ds = csv("\"a\",\"y\"\n\"1.5\n\",\"0\"\n2,1\n").unwrap();
        assert_eq!(ds.features(), ndarray::array![[1.5], [2.0]].view());
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let ds = Dataset::from_csv(b"\xEF\xBB\xBFa,y\n1,0\n", "y").unwrap();
        assert_eq!(ds.feature_names(), ["a"]);
        assert_eq!(read_header(b"\xEF\xBB\xBFa,y\n").unwrap(), ["a", "y"]);
        // Only at the start: elsewhere it is text like any other.
        assert!(matches!(
            Dataset::from_csv(b"a,y\n\xEF\xBB\xBF1,0\n", "y"),
            Err(DatasetError::NotNumeric {
                location: Location::Line(2),
                ..
            })
        ));
    }

    #[test]
    fn a_ragged_row_names_its_line() {
        let err = csv("a,b,y\n1,2,0\n\n3,4\n").unwrap_err();
        assert_eq!(
            err,
            DatasetError::Ragged {
                location: Location::Line(4),
                expected: 3,
                found: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "line 4: expected 3 fields (as in the header), found 2"
        );
    }

    #[test]
    fn an_empty_csv_is_refused_for_its_missing_header() {
        for empty in ["", "\n\r\n", "  \n\t\n", "\u{feff}"] {
            assert_eq!(csv(empty), Err(DatasetError::NoHeader), "{empty:?}");
            assert_eq!(
                read_header(empty.as_bytes()),
                Err(DatasetError::NoHeader),
                "{empty:?}"
            );
        }
        assert_eq!(
            DatasetError::NoHeader.to_string(),
            "dataset is empty: a header row is required"
        );
    }

    #[test]
    fn an_unclosed_quote_is_named_at_its_line() {
        let err = csv("a,y\n1,0\n\"2,1\n3,0\n").unwrap_err();
        assert_eq!(
            err,
            DatasetError::Malformed {
                location: Location::Line(3),
                message: "a quoted field is not closed (it runs to the end of the file)".into()
            }
        );
    }

    #[test]
    fn invalid_utf8_is_found_on_its_line_inside_a_record() {
        assert_eq!(
            Dataset::from_csv(b"a,y\n\"1\n\xff\",0\n", "y"),
            Err(DatasetError::NotUtf8 { line: 3 })
        );
    }

    #[test]
    fn a_record_is_refused_at_the_cap_before_it_is_split() {
        // Four million empty fields on one line: refused as too long, not
        // read into fields first (the reader is never handed the rest).
        let commas = format!("a,y\n{}\n", ",".repeat(4 << 20));
        let err = csv(&commas).unwrap_err();
        assert_eq!(
            err,
            DatasetError::LineTooLong {
                location: Location::Line(2)
            }
        );
        // Exactly at the cap is fine, with either line end.
        let at_cap = format!("{},y\r\n", "a".repeat(MAX_LINE_BYTES - 2));
        assert_eq!(read_header(at_cap.as_bytes()).unwrap().len(), 2);
        let over = format!("{},y\r\n", "a".repeat(MAX_LINE_BYTES - 1));
        assert!(matches!(
            read_header(over.as_bytes()),
            Err(DatasetError::LineTooLong { .. })
        ));
        // Blank lines before a record do not count against it.
        let blank_then = format!("{}a,y\n1,0\n", "\n".repeat(MAX_LINE_BYTES + 10));
        assert_eq!(csv(&blank_then).unwrap().n_rows(), 1);
    }

    #[test]
    fn the_header_alone_is_read_trimmed_and_capped() {
        // The rows after it are not read: a bad one does not matter.
        assert_eq!(read_header(b"a,y\n\xff,\"1\n").unwrap(), ["a", "y"]);
        assert_eq!(
            read_header(b"\n\"a, b\", c ,y\nnot,a,number\n").unwrap(),
            ["a, b", "c", "y"]
        );
        let wide: Vec<String> = (0..MAX_COLUMNS + 1).map(|i| format!("c{i}")).collect();
        assert_eq!(
            read_header(wide.join(",").as_bytes()),
            Err(DatasetError::TooManyColumns {
                found: MAX_COLUMNS + 1
            })
        );
    }

    #[test]
    fn to_csv_round_trips() {
        let cols: Vec<String> = ["a \"q\", b", "y", "c"].map(String::from).to_vec();
        let rows = vec![
            vec![0.1, 1.0, 1e300],
            vec![-2.5e-9, 0.0, 17.99],
            vec![3.0, 2.0, -0.0],
        ];
        let ds = Dataset::from_rows(&cols, &rows, "y").unwrap();
        let text = ds.to_csv(&[2, 0]);
        let back = Dataset::from_csv(&text, "y").unwrap();
        assert_eq!(back.feature_names(), ds.feature_names());
        assert_eq!(
            back.features(),
            ndarray::array![[3.0, -0.0], [0.1, 1e300]].view()
        );
        assert_eq!(back.target(), ndarray::array![2.0, 1.0].view());
        let bad: Vec<String> = ["a\nb", "y"].map(String::from).to_vec();
        assert!(matches!(
            Dataset::from_rows(&bad, &[vec![1.0, 0.0]], "y"),
            Err(DatasetError::BadColumnName { index: 0, .. })
        ));
    }

    #[test]
    fn long_bad_values_are_truncated_in_errors() {
        let long = "x".repeat(500);
        let err = csv(&format!("a,y\n{long},1\n")).unwrap_err();
        assert!(err.to_string().len() < 100, "{err}");
    }

    #[test]
    fn inline_rows() {
        let json = r#"{"columns": ["x1", "y", "x2"], "rows": [[0.5, 1, 2], [1.5, 0, -2]]}"#;
        let rows: InlineRows = serde_json::from_str(json).unwrap();
        let ds = rows.into_dataset("y").unwrap();
        assert_eq!(ds.feature_names(), ["x1", "x2"]);
        assert_eq!(
            ds.features(),
            ndarray::array![[0.5, 2.0], [1.5, -2.0]].view()
        );
        assert_eq!(ds.target(), ndarray::array![1.0, 0.0].view());

        let cols: Vec<String> = ["a", "y"].map(String::from).to_vec();
        assert_eq!(
            Dataset::from_rows(&cols, &[vec![1.0, 0.0], vec![2.0]], "y"),
            Err(DatasetError::Ragged {
                location: Location::Row(1),
                expected: 2,
                found: 1
            })
        );
        assert_eq!(
            Dataset::from_rows(&cols, &[vec![f64::NAN, 0.0]], "y"),
            Err(DatasetError::NonFinite {
                location: Location::Row(0),
                column: "a".into(),
                value: "NaN".into()
            })
        );
        assert_eq!(
            Dataset::from_rows(&cols, &[], "y"),
            Err(DatasetError::NoRows)
        );
        assert!(matches!(
            Dataset::from_rows(&cols, &[vec![1.0, 0.0]], "label"),
            Err(DatasetError::MissingTarget { .. })
        ));
    }
}
